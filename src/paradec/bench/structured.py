"""``paradec bench --suite structured``: constrained generation on the suite's JSON Schemas.

Rows: paradec methods under each schema (the grammar masks every verified row); peers on the
same model and schemas: transformers ``generate`` with the same grammar engine as a logits
processor (``hf``), and llama.cpp with the same JSON Schema (``llama.cpp``: llama-cpp-python's
``response_format``, its own schema-to-grammar converter, on the GGUF the target came from).
Per row: validity (``jsonschema``), tokens/s, tokens committed per target forward, forced draft
tokens (and likely ones: the forced bytes' spelling past the forced tokens), mask time per token,
and identity of the token ids with constrained ``ar``.

Prompt prefixes: each paradec row keeps its own (``prefix.PrefixCache``), as its own server
would, so a request reuses what the row's previous request left (the chat template's system
prompt) and never another row's run of the same prompt; llama-cpp-python's row does the same on
its own (it keeps the longest prefix shared with its previous prompt). Tokens/s include the
prefill of the rest of the prompt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParadecError
from ..prefix import PrefixCache
from ..suites import DATA_DIR, _read_jsonl, spread

PEERS = ("hf", "llama.cpp")
DEFAULT_METHODS = ("ar", "suffix", "pld", "auto")


@dataclass(frozen=True)
class StructuredConfig:
    model: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    peers: tuple[str, ...] = PEERS
    max_new_tokens: int = 256
    limit: int | None = None  # N schemas evenly spaced over the suite (default all)
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    json_path: str | None = None


@dataclass
class Row:
    name: str
    kind: str  # paradec | peer
    items: list[dict] = field(default_factory=list)
    error: str = ""
    prefixes: PrefixCache | bool = False  # a paradec row's own kept prompt prefixes (see the module docstring)

    def summary(self) -> dict[str, Any]:
        it = [i for i in self.items if "error" not in i]
        tokens = sum(i["tokens"] for i in it)
        secs = sum(i["seconds"] for i in it)
        fwd = sum(i.get("forwards") or 0 for i in it)
        committed = sum(i.get("committed") or 0 for i in it)
        mask = [i["mask_s"] for i in it if i.get("mask_s") is not None]
        same = [i["same_as_ar"] for i in it if i.get("same_as_ar") is not None]
        return {
            "row": self.name, "kind": self.kind, "schemas": len(self.items), "failed": len(self.items) - len(it),
            "valid": sum(1 for i in it if i["valid"]), "complete": sum(1 for i in it if i["complete"]),
            "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs if secs else 0.0,
            "tokens_per_forward": committed / fwd if fwd else None,
            "forced_tokens": sum(i.get("forced_tokens") or 0 for i in it) if self.kind == "paradec" else None,
            "forced_accepted": sum(i.get("forced_accepted") or 0 for i in it) if self.kind == "paradec" else None,
            "likely_tokens": sum(i.get("likely_tokens") or 0 for i in it) if self.kind == "paradec" else None,
            "likely_accepted": sum(i.get("likely_accepted") or 0 for i in it) if self.kind == "paradec" else None,
            "pruned_nodes": sum(i.get("pruned_nodes") or 0 for i in it) if self.kind == "paradec" else None,
            "mask_us_per_token": 1e6 * sum(mask) / tokens if mask and tokens else None,
            "identical_to_ar": f"{sum(same)}/{len(same)}" if same else None,
            "error": self.error,
        }


def load_structured(limit: int | None = None) -> list[dict]:
    path = DATA_DIR / "structured.jsonl"
    if not path.is_file():
        raise ParadecError("suite structured: data file structured.jsonl is missing from the paradec package")
    return spread(_read_jsonl(path), limit)


def validate(text: str, schema: Any) -> bool:
    """``text`` parses as JSON and the value validates against ``schema``."""
    import jsonschema

    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return False
    try:
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError:
        return False
    return True


def _paradec(engine, row: "Row", item: dict, ids: list[int], cfg: StructuredConfig) -> dict:
    t0 = time.perf_counter()
    g = engine.generate(list(ids), method=row.name, max_new_tokens=cfg.max_new_tokens, response_format=item["schema"],
                        prefix_cache=row.prefixes)
    s = g.stats
    body = list(g.token_ids)
    if body and body[-1] in engine.eos_ids | {engine.constraint(item["schema"]).eos}:
        body = body[:-1]  # the EOS (counted in tokens, as for every row; compared without it)
    return dict(token_ids=body, text=g.text, tokens=s.new_tokens, seconds=time.perf_counter() - t0,
                forwards=s.forwards, committed=s.committed, forced_tokens=s.forced_tokens, forced_accepted=s.forced_accepted,
                likely_tokens=s.likely_tokens, likely_accepted=s.likely_accepted,
                pruned_nodes=s.pruned_nodes, mask_s=s.mask_s, complete=not s.incomplete)


def _hf(engine, item: dict, ids: list[int], cfg: StructuredConfig) -> dict:
    import torch

    from ..structured.hf_processor import GrammarLogitsProcessor

    c = engine.constraint(item["schema"])
    proc = GrammarLogitsProcessor(c, len(ids))
    eos = sorted(engine.eos_ids | {c.eos})
    x = torch.tensor([list(ids)], device=engine.device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = engine.hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=cfg.max_new_tokens, do_sample=False,
                                       temperature=None, top_k=None, top_p=None, eos_token_id=eos, pad_token_id=eos[0],
                                       logits_processor=[proc])
        seconds = time.perf_counter() - t0
    new = out[0, x.shape[1]:].tolist()
    body = new[:-1] if new and new[-1] in eos else new
    text = engine.tokenizer.decode(body, skip_special_tokens=True)
    return dict(token_ids=body, text=text, tokens=len(body), seconds=seconds, forwards=len(new), committed=len(new),
                mask_s=proc.mask_s, complete=proc.matcher.is_accepting())


class _LlamaCpp:
    def __init__(self, engine, items: list[dict]) -> None:
        import torch

        from ..models.llamacpp import open_llama

        if not engine.models.gguf_path:
            raise RuntimeError("the target was not loaded from a GGUF file, which llama.cpp needs")
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise RuntimeError("llama-cpp-python is not installed (pip install llama-cpp-python)") from None
        from .llama_grammar_check import check

        # schemas whose grammar llama.cpp cannot build or parse (a parse failure crashes it)
        self.cannot = check(engine.models.gguf_path, [(it["id"], it["schema"]) for it in items])
        self.llm = open_llama(engine.models.gguf_path, n_ctx=4096, n_batch=512, n_threads=torch.get_num_threads(), verbose=False)

    def __call__(self, item: dict, cfg: StructuredConfig) -> dict:
        if item["id"] in self.cannot:
            raise RuntimeError(self.cannot[item["id"]])
        t0 = time.perf_counter()
        r = self.llm.create_chat_completion(
            messages=[{"role": "user", "content": item["prompt"]}], max_tokens=cfg.max_new_tokens, temperature=0.0, top_k=1,
            repeat_penalty=1.0, response_format={"type": "json_object", "schema": item["schema"]},
        )
        seconds = time.perf_counter() - t0
        text = r["choices"][0]["message"]["content"] or ""
        n = int(r["usage"]["completion_tokens"])
        return dict(text=text, tokens=n, seconds=seconds, forwards=n, committed=n, mask_s=None,
                    complete=r["choices"][0]["finish_reason"] == "stop")

    def close(self) -> None:
        self.llm.close()


def run_structured(cfg: StructuredConfig, log=print) -> dict:
    import torch

    from ..engine import load

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    items = load_structured(cfg.limit)
    engine = load(cfg.model, dtype=cfg.dtype, device=cfg.device)
    methods = list(dict.fromkeys(("ar",) + tuple(cfg.methods)))  # ar: the identity reference
    unknown = [m for m in methods if m not in engine.methods]
    if unknown:
        raise ParadecError(f"unknown or unavailable method(s) {', '.join(unknown)} (available: {', '.join(engine.methods)})")
    bad = [p for p in cfg.peers if p not in PEERS]
    if bad:
        raise ParadecError(f"unknown peer(s) {', '.join(bad)} for suite structured (choose from {', '.join(PEERS)})")
    prompts = [engine.encode([{"role": "user", "content": it["prompt"]}]) for it in items]
    for it in items:  # fail fast on a schema the engine cannot compile
        engine.constraint(it["schema"])
    # warm up (tokenizer conversion, first mask, kernels) outside the timings
    engine.generate(prompts[0], method="ar", max_new_tokens=8, response_format=items[0]["schema"])
    rows = [Row(m, "paradec", prefixes=PrefixCache()) for m in methods] + [Row(p, "peer") for p in cfg.peers]
    llama = None
    if "llama.cpp" in cfg.peers:
        try:
            llama = _LlamaCpp(engine, items)
        except Exception as e:  # noqa: BLE001 - recorded in the row
            next(r for r in rows if r.name == "llama.cpp").error = str(e)
    ref: dict[str, list[int]] = {}
    for k, (it, ids) in enumerate(zip(items, prompts)):
        for row in rows:
            if row.error:
                continue
            try:
                if row.kind == "paradec":
                    out = _paradec(engine, row, it, ids, cfg)
                elif row.name == "hf":
                    out = _hf(engine, it, ids, cfg)
                else:
                    out = llama(it, cfg)
            except Exception as e:  # noqa: BLE001 - one schema's failure is recorded, the run goes on
                row.items.append({"id": it["id"], "error": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            out["valid"] = validate(out["text"], it["schema"])
            if row.name == "ar":
                ref[it["id"]] = out["token_ids"]
            if "token_ids" in out and it["id"] in ref:
                out["same_as_ar"] = out["token_ids"] == ref[it["id"]]
            out.pop("token_ids", None)
            row.items.append({"id": it["id"], "category": it.get("category", ""), **out})
        log(f"[{k + 1}/{len(items)}] {it['id']}: " + ", ".join(
            f"{r.name} {'ok' if r.items and r.items[-1].get('valid') else 'INVALID'}" for r in rows if not r.error))
        result = _result(engine, cfg, items[: k + 1], rows)
        if cfg.json_path:  # written after every schema: a stopped run keeps what it measured
            with open(cfg.json_path, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
    if llama is not None:
        llama.close()
    return result


def _result(engine, cfg: StructuredConfig, items: list[dict], rows: list[Row]) -> dict:
    import torch

    result = {"suite": "structured", "model": engine.name, "max_new_tokens": cfg.max_new_tokens, "schemas": len(items),
              "threads": torch.get_num_threads(), "rows": [r.summary() for r in rows],
              "items": {r.name: r.items for r in rows}}
    ar = next(r for r in result["rows"] if r["row"] == "ar")
    for r in result["rows"]:
        r["speedup_vs_ar"] = r["tokens_per_s"] / ar["tokens_per_s"] if ar["tokens_per_s"] else None
    return result


def table(result: dict) -> str:
    """The summary as a markdown table."""
    head = ("row", "valid", "complete", "tok/s", "x ar", "tok/forward", "forced (acc.)", "likely (acc.)", "pruned", "mask us/tok", "= ar", "note")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        n = r["schemas"] - r["failed"]
        f = lambda v, fmt: "" if v is None else format(v, fmt)  # noqa: E731
        forced = "" if r["forced_tokens"] is None else f"{r['forced_tokens']} ({r['forced_accepted']})"
        likely = "" if r.get("likely_tokens") is None else f"{r['likely_tokens']} ({r['likely_accepted']})"
        note = r["error"] or (f"{r['failed']} failed" if r["failed"] else "")
        lines.append("| " + " | ".join([
            r["row"], f"{r['valid']}/{n}", f"{r['complete']}/{n}", f(r["tokens_per_s"], ".1f"), f(r["speedup_vs_ar"], ".2f"),
            f(r["tokens_per_forward"], ".2f"), forced, likely, f(r["pruned_nodes"], "d"), f(r["mask_us_per_token"], ".0f"),
            r["identical_to_ar"] or "", note]) + " |")
    return "\n".join(lines)


def write_report(result: dict, out_dir: str, command: str = "") -> list[str]:
    """``report.md`` (the table, per category, the command) and ``structured.png`` (tokens/s of
    every row with its speedup over constrained ``ar`` and its validity; per category, each
    paradec method's speedup over ``ar``) in ``out_dir``. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ParadecError(f"--report {out_dir}: cannot create the folder ({e.strerror})") from None
    rows = [r for r in result["rows"] if not r["error"]]
    cats = per_category(result)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
    names = [r["row"] for r in rows]
    colors = ["tab:blue" if r["kind"] == "paradec" else "tab:gray" for r in rows]
    bars = a1.bar(names, [r["tokens_per_s"] for r in rows], color=colors)
    for b, r in zip(bars, rows):
        n = r["schemas"] - r["failed"]
        x = "" if r["speedup_vs_ar"] is None else f"{r['speedup_vs_ar']:.2f}x\n"
        a1.annotate(f"{x}{r['valid']}/{n} valid", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=8)
    a1.set_ylabel("tokens/s (prefill included)")
    a1.set_title(f"{result['schemas']} schemas, greedy, constrained")
    a1.margins(y=0.22)
    a1.tick_params(axis="x", rotation=20)
    methods = [r["row"] for r in rows if r["kind"] == "paradec" and r["row"] != "ar"]
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        a2.bar([j + i * width for j in range(len(cats))], [cats[c].get(m, 0.0) for c in cats], width, label=m)
    a2.axhline(1.0, color="k", lw=0.8, ls="--")
    a2.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(cats))], list(cats), rotation=20, fontsize=8)
    a2.set_ylabel("x constrained ar")
    a2.set_title("per category")
    a2.legend(fontsize=8)
    fig.suptitle(f"structured output, {result['model']}")
    fig.tight_layout()
    png = out / "structured.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    lines = [f"# Structured output: {result['schemas']} schemas, {result['model']}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [table(result), "", "Speedup over constrained `ar` per category (tokens/s ratio):", ""]
    lines += ["| category | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines += [f"| {c} | " + " | ".join(f"{v.get(m, 0.0):.2f}" for m in methods) + " |" for c, v in cats.items()]
    lines += ["", "![structured](structured.png)", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    return [str(md), str(png)]


def per_category(result: dict) -> dict[str, dict[str, float]]:
    """{category: {method: tokens/s over constrained ar's on that category's schemas}}."""
    items = result["items"]
    rate = {}
    for name, its in items.items():
        for it in its:
            if "error" in it:
                continue
            t = rate.setdefault(name, {}).setdefault(it.get("category", ""), [0, 0.0])
            t[0] += it["tokens"]
            t[1] += it["seconds"]
    ar = rate.get("ar", {})
    out: dict[str, dict[str, float]] = {}
    for cat in sorted(ar):
        base = ar[cat][0] / ar[cat][1] if ar[cat][1] else 0.0
        for name, by in rate.items():
            if name != "ar" and cat in by and by[cat][1] and base:
                out.setdefault(cat, {})[name] = by[cat][0] / by[cat][1] / base
    return out
