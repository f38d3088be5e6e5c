"""Which JSON Schemas llama.cpp can run, checked in a child process.

llama-cpp-python turns a JSON Schema into a GBNF grammar in Python, and llama.cpp parses that
grammar when a completion starts. Some schemas give a grammar its own parser rejects (seen: a
``pattern`` with an escaped dot, ``\\.``), and the completion then crashes the whole process;
others make the converter raise (``$defs`` references). The structured benchmark asks this
module, in a child process, before it gives llama.cpp any schema:

    python -m paradec.bench.llama_grammar_check MODEL.gguf < [[id, schema], ...]

prints one JSON line per schema, ``[id, "ok" | "convert" | "parse"]``, loading only the model's
vocabulary.
"""

from __future__ import annotations

import json
import subprocess
import sys

REASONS = {
    "convert": "llama-cpp-python's JSON Schema converter fails on this schema",
    "parse": "llama.cpp's grammar parser rejects the grammar its converter made from this schema (running it crashes the process)",
}


def check(gguf_path: str, schemas: list[tuple[str, object]], timeout: float = 300.0) -> dict[str, str]:
    """{id: reason} for every schema llama.cpp cannot run (a schema the child did not get to,
    because it died or hung, counts as unchecked)."""
    try:
        r = subprocess.run([sys.executable, "-m", __name__, gguf_path], input=json.dumps([[i, s] for i, s in schemas]),
                           capture_output=True, text=True, timeout=timeout)
        out = r.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    seen: dict[str, str] = {}
    for line in out.splitlines():
        try:
            sid, status = json.loads(line)
        except (ValueError, TypeError):
            continue
        seen[str(sid)] = str(status)
    bad = {}
    for sid, _ in schemas:
        status = seen.get(sid)
        if status != "ok":
            bad[sid] = REASONS.get(status or "", "the llama.cpp grammar check did not get to this schema (its process died)")
    return bad


def main() -> int:
    import llama_cpp
    from llama_cpp import Llama, LlamaGrammar

    schemas = json.load(sys.stdin)
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    for sid, schema in schemas:
        try:
            g = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception:  # noqa: BLE001 - any converter failure is the answer
            print(json.dumps([sid, "convert"]), flush=True)
            continue
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, g._grammar.encode(), g._root.encode())
        print(json.dumps([sid, "ok" if sampler else "parse"]), flush=True)
        if sampler:
            llama_cpp.llama_sampler_free(sampler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
