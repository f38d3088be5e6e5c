"""``make demo`` / ``paradec demo``: ``ar``, the fastest drafters on a CPU and llama.cpp greedy on
the same GGUF, on a few built-in prompts, in one table. ``--all`` runs every method instead.

Every row runs through the benchmark's runners (``paradec.bench.runners``), so the demo and
``paradec bench`` time generations the same way: prompt ids to the last token, prefill included,
after one warm-up generation per row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .errors import ParadecError
from .options import option

DEMO_PROMPTS = [
    "Rewrite the following text so that every sentence is in the past tense:\n\n"
    "The team meets every Monday. Maria opens the meeting and reads the agenda. Tom presents the "
    "sales figures, and everyone asks questions about the new product. After the meeting, the team "
    "eats lunch together in the small cafe next to the office.",
    "Here is a Python function:\n\n```python\ndef total_price(items):\n    total = 0\n    for item in items:\n"
    "        total = total + item['price'] * item['quantity']\n    return total\n```\n\n"
    "Add a docstring and type hints to this function and show the full updated code.",
    "Summarize this paragraph in two sentences:\n\nThe city council voted on Tuesday to expand the bike lane "
    "network by forty kilometres over the next three years. Supporters said the plan would reduce traffic "
    "and make the streets safer for children. Opponents argued that the money should be spent on repairing "
    "roads first. The mayor said the first new lanes would open next spring near the central station.",
    "What are three tips for staying focused while studying?",
]

# The fastest methods on a 2-core CPU (docs/benchmarks.md): in bfloat16, auto, suffix and the
# trained head; in float32 (the native backend), auto and suffix: prompt lookup's long chains
# cost more than they save there (0.87x ar in the demo of 2026-12-06, 0.70x on the AVX2 path).
FAST_METHODS = {"bfloat16": ("auto", "suffix", "head"), "float32": ("auto", "suffix")}
PEER = "llama.cpp"
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class DemoConfig:
    model: str = option("smollm2-135m", "--model", "-m")
    dtype: str = option("auto", "--dtype", help="auto = float32 where the native backend runs the model (the fastest CPU "
                        "path), else bfloat16 where the CPU supports it natively, else float32.")
    device: str = option("cpu", "--device")
    max_new_tokens: int = option(96, "--max-new-tokens", "-n", min=1, max=4096)
    all_methods: bool = option(False, "--all", help="Every method instead of ar, the fastest drafters and llama.cpp.")
    peer: bool = True  # llama.cpp greedy on the same GGUF, when it can run


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def demo_dtype(model: str, device: str) -> str:
    """float32 where the native backend runs the model (a GGUF on a CPU: the fastest path, about
    3x torch's bfloat16 plain decoding on a CPU with AMX, docs/benchmarks.md), else bfloat16 where
    the CPU has native bf16, else float32."""
    if device == "cpu":
        import torch

        from .models.loader import resolve
        from .models.native.select import native_unavailable

        try:
            if native_unavailable(resolve(model).kind, torch.device("cpu"), torch.float32) is None:
                return "float32"
        except ParadecError:  # an unknown model: load reports it, not here
            pass
    return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"


def _methods(engine, dtype: str, all_methods: bool) -> list[str]:
    available = [m for m in engine.methods if m != "draft"]
    if all_methods:
        return available
    return ["ar"] + [m for m in FAST_METHODS.get(dtype, FAST_METHODS["float32"]) if m in available]


@dataclass
class _Row:
    runner: object
    label: str
    tokens: int = 0
    seconds: float = 0.0
    forwards: int = 0
    committed: int = 0
    same: int = 0
    error: str = ""


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict:
    from .bench.runners import LlamaCppRunner, ParadecRunner
    from .engine import load

    console = console or Console()
    t_start = time.perf_counter()
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = demo_dtype(cfg.model, cfg.device)
    t = time.perf_counter()
    engine = load(cfg.model, dtype=dtype, device=cfg.device)
    console.print(f"loaded [bold]{escape(engine.name)}[/] ({dtype}, {cfg.device}) in {time.perf_counter() - t:.1f}s")
    prompts = [engine.encode(p) for p in DEMO_PROMPTS]
    n = cfg.max_new_tokens

    rows = [_Row(ParadecRunner(engine, m), m) for m in _methods(engine, dtype, cfg.all_methods)]
    if cfg.peer and engine.models.gguf_path:
        n_ctx = max(len(p) for p in prompts) + n + 64
        rows.append(_Row(LlamaCppRunner(engine, PEER, n_ctx=n_ctx), PEER))

    live = console.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True, disable=not live) as bar:
        # warm-up: one-time set-up (llama.cpp's first evaluation, the head's packing) stays out of the timing
        task = bar.add_task("warm-up", total=len(rows))
        for row in rows:
            bar.update(task, description=f"warm-up {row.label}")
            try:
                row.runner.prepare()
                row.runner.run(prompts[0], WARMUP_TOKENS, 0.0, 0)
            except (RuntimeError, ImportError, OSError, ValueError) as e:
                row.error = (str(e).strip().splitlines() or [type(e).__name__])[0]
            bar.advance(task)
        bar.remove_task(task)
        active = [r for r in rows if not r.error]
        task = bar.add_task("generating", total=len(prompts) * len(active))
        for i, ids in enumerate(prompts):
            ref = None
            for row in active:  # interleaved per prompt, ar first
                bar.update(task, description=f"prompt {i + 1}/{len(prompts)} · {row.label}")
                out = row.runner.run(ids, n, 0.0, 0)
                row.tokens += len(out.token_ids)
                row.seconds += out.seconds
                row.forwards += out.forwards or 0
                row.committed += out.committed or len(out.token_ids)
                ref = out.token_ids if ref is None else ref
                row.same += int(out.token_ids == ref)
                bar.advance(task)
            if not live:
                console.print(f"prompt {i + 1}/{len(prompts)} done ({time.perf_counter() - t_start:.0f}s)")
    for row in rows:
        row.runner.close()
        if row.label == "qdraft":
            row.label = f"qdraft ({engine.models.self_drafter_backend()})"

    results = _table(console, engine.name, dtype, cfg.device, rows, len(prompts), n)
    if dtype != "float32":
        console.print(
            f"[dim]In {dtype}, a forward over k tokens rounds differently from k one-token forwards, so a near-tie can "
            "flip a token; identity is proven in float32 (make test).[/]"
        )
    if not cfg.all_methods:
        console.print("[dim]paradec demo --all: every method.[/]")
    console.print(f"[dim]demo took {time.perf_counter() - t_start:.0f}s[/]")
    return results


def _table(console: Console, name: str, dtype: str, device: str, rows: list[_Row], n_prompts: int, n: int) -> dict:
    base = rows[0]  # ar
    base_tps = base.tokens / base.seconds
    table = Table(title=escape(f"{name} · {dtype} · {device} · {n_prompts} prompts × {n} new tokens"))
    for col in ("method", "tokens/s", "speedup vs ar", "tokens / forward", "identical to ar"):
        table.add_column(col, justify="left" if col == "method" else "right")
    results = {}
    for row in rows:
        if row.error:
            table.add_row(escape(row.label), "—", "—", "—", escape(f"not run: {row.error}"[:60]))
            results[row.label] = {"error": row.error}
            continue
        tps = row.tokens / row.seconds
        peer = row.label == PEER
        per_forward = f"{row.committed / row.forwards:.2f}" if row.forwards and not peer else "—"
        same = "— (its 4-bit weights)" if peer else f"{row.same}/{n_prompts}"
        table.add_row(escape(row.label), f"{tps:.1f}", f"{tps / base_tps:.2f}x", per_forward, same)
        results[row.label] = {"tokens_per_s": tps, "speedup": tps / base_tps, "identical": row.same}
    console.print(table)
    return results
