"""``paradec`` command line: generate, models, demo."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from ..errors import ParadecError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="paradec: lossless speculative decoding. Many tokens per model call, exactly the model's output.",
)


def _options(pairs: list[str] | None) -> dict:
    out = {}
    for kv in pairs or []:
        if "=" not in kv:
            raise ParadecError(f"--opt expects key=value, got '{kv}'")
        k, v = kv.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt (chat-formatted when the model has a chat template)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Packaged name, model dir, .gguf file or cached hub id."),
    method: str = typer.Option("pld", "--method", help="Decoding method (see `paradec methods`)."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="Draft model (same tokenizer) for --method draft."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16, float16 or float64."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    backend: str = typer.Option("auto", "--backend", help="auto (native for a GGUF on a CPU in float32, else torch), native (the GGUF's quantized weights) or torch."),
    max_new_tokens: Optional[int] = typer.Option(
        None, "--max-new-tokens", "-n", help="Default 128; for a diffusion LM, its trained answer length."
    ),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    top_k: int = typer.Option(0, "--top-k"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="Method option key=value (repeatable), e.g. draft_len=10."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: text, token_ids, stats."),
    json_schema: Optional[str] = typer.Option(None, "--json-schema", help="Constrain the output to the JSON Schema in FILE."),
    json_object: bool = typer.Option(False, "--json-object", help="Constrain the output to a JSON object."),
    regex: Optional[str] = typer.Option(None, "--regex", help="Constrain the output to match the regex R."),
    grammar: Optional[str] = typer.Option(None, "--grammar", help="Constrain the output to the grammar in FILE (llguidance Lark syntax)."),
) -> None:
    """Generate text for PROMPT and print it (streamed), then the decoding stats."""
    from .. import params
    from ..engine import load
    from ..models.loader import parse_device, parse_dtype
    from ..structured.formats import from_options

    parse_dtype(dtype), parse_device(device)  # fail fast, before loading anything
    params.prompt(prompt)
    params.sampling(temperature, top_p, top_k, seed)
    params.stops(stop)
    if max_new_tokens is not None:
        params.max_new_tokens(max_new_tokens)
    options = _options(opt)
    response_format = from_options(json_schema, json_object, regex, grammar)
    from ..dllm.loaders import is_diffusion

    if is_diffusion(model):  # a diffusion LM (e.g. tiny-dllm): its own decoding loop and methods
        if response_format is not None:
            raise ParadecError("structured output (--json-schema, --json-object, --regex, --grammar) needs an AR model")
        from .dllm import generate_dllm

        return generate_dllm(prompt, model, method, options, dtype, device, temperature, seed, as_json, max_new_tokens)
    from ..proposers import text_options

    options = text_options(method, options)
    engine = load(model, draft=draft_model, dtype=dtype, device=device, backend=backend)
    stream = engine.stream(
        prompt,
        method=method,
        max_new_tokens=128 if max_new_tokens is None else max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop,
        chat=False if raw else None,
        options=options,
        response_format=response_format,
    )
    if as_json:
        for _ in stream:
            pass
        s = stream.stats
        out = {
            "text": stream.text,
            "token_ids": stream.token_ids,
            "model": engine.name,
            "method": method,
            "backend": s.backend,
            "stats": {
                **s.to_dict(),
                "forwards": s.forwards,
                "mean_accepted": s.mean_accepted,
                "tokens_per_s": s.tokens_per_s,
            },
        }
        print(json.dumps(out))
        return
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    s = stream.stats
    print(
        f"[{method}] {s.new_tokens} tokens in {s.total_s:.2f}s = {s.tokens_per_s:.1f} tok/s | "
        f"{s.forwards} forwards, {s.mean_accepted:.2f} tokens/forward | stop: {s.stop_reason} | {s.backend}"
        + (f" | forced {s.forced_tokens}, pruned {s.pruned_nodes}" + (" | INCOMPLETE (not a full match)" if s.incomplete else "")
           if s.constrained else ""),
        file=sys.stderr,
    )


@app.command()
def models() -> None:
    """List every model paradec ships or loads by name, and how to install the missing ones."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import torch

    from .catalog import catalog
    from ..models.native.select import native_unavailable, packaged_backend
    from ..models.registry import REGISTRY

    why = native_unavailable("gguf", torch.device("cpu"), torch.float32)  # every packaged AR model is a GGUF
    table = Table(title="models")
    for col in ("name", "kind", "installed", "backend", "what", "install"):
        table.add_column(col)
    for e in catalog():  # escaped: rich would take "[gemma]" in a pip command for markup
        name = e.name + (" (default)" if e.default else "")
        backend = packaged_backend(e.name, why) if e.name in REGISTRY else "torch"
        table.add_row(*(escape(v) for v in (name, e.kind, "yes" if e.installed else "no", backend, e.what, e.install)))
    Console().print(table)
    print("backend: what --backend auto runs the model on, on a CPU in float32"
          + (f" (native backend unavailable: {why})" if why is not None else ""))
    print("Also accepted by --model: a local Hugging Face model directory, a .gguf file, or a hub id already in your HF cache.")


@app.command()
def methods() -> None:
    """List the decoding methods."""
    from ..proposers import METHODS

    for name, (desc, needs_draft) in METHODS.items():
        print(f"{name:10s} {desc}{' [needs --draft-model]' if needs_draft else ''}")


@app.command()
def demo(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    dtype: str = typer.Option("auto", "--dtype", help="auto = float32 where the native backend runs the model (the fastest CPU path), else bfloat16 where the CPU supports it natively, else float32."),
    device: str = typer.Option("cpu", "--device"),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", "-n", min=1, max=4096),
    all_methods: bool = typer.Option(False, "--all", help="Every method instead of ar, the fastest drafters and llama.cpp."),
) -> None:
    """ar, the fastest drafters and llama.cpp greedy on a few built-in prompts, in one table:
    tokens/s, speedup, tokens per forward, identity with ar."""
    from ..demo import DemoConfig, run_demo

    run_demo(DemoConfig(model=model, dtype=dtype, device=device, max_new_tokens=max_new_tokens, all_methods=all_methods))


from .bench import bench as _bench  # noqa: E402 - cheap: loads models only when run

app.command("bench")(_bench)

from .serve import serve as _serve  # noqa: E402 - cheap: FastAPI loads only when run
from .dllm import dllm_app as _dllm_app  # noqa: E402 - cheap: torch loads only when run

from .convert import convert as _convert  # noqa: E402 - cheap: torch loads only when run

from .head import head_app as _head_app  # noqa: E402 - cheap: torch loads only when run

app.add_typer(_dllm_app, name="dllm")
app.add_typer(_head_app, name="head")
app.command("convert")(_convert)

app.command("serve")(_serve)


def main() -> None:
    try:
        rv = app(standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except ParadecError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        code = 130
    except typer.TyperException as e:  # usage errors: bad option values, missing arguments
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        code = getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

