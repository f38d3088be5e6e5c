"""``make demo`` / ``paradec demo``: ar against the drafters on a few built-in prompts."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

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


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_demo(model: str, dtype: str, device: str, max_new_tokens: int, methods: list[str] | None = None) -> dict:
    from .engine import load

    console = Console()
    if dtype == "auto":
        dtype = "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"
    t = time.perf_counter()
    engine = load(model, dtype=dtype, device=device)
    console.print(f"loaded [bold]{engine.name}[/] ({dtype}, {device}) in {time.perf_counter() - t:.1f}s")
    methods = methods or [m for m in engine.methods if m != "draft"]
    for m in methods:  # warm-up: one-time set-up (llama.cpp's first evaluation, caches) stays out of the timing
        engine.generate(DEMO_PROMPTS[0], method=m, max_new_tokens=8)

    totals = {m: {"tokens": 0, "time": 0.0, "forwards": 0, "committed": 0, "same": 0} for m in methods}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=len(DEMO_PROMPTS) * len(methods))
        for prompt in DEMO_PROMPTS:
            ref = None
            for m in methods:  # interleaved per prompt, ar first
                g = engine.generate(prompt, method=m, max_new_tokens=max_new_tokens)
                s = g.stats
                tot = totals[m]
                tot["tokens"] += s.new_tokens
                tot["time"] += s.total_s
                tot["forwards"] += s.forwards
                tot["committed"] += s.committed
                ref = g.token_ids if ref is None else ref
                tot["same"] += int(g.token_ids == ref)
                progress.advance(task)

    base = totals[methods[0]]
    base_tps = base["tokens"] / base["time"]
    table = Table(title=f"{engine.name} · {dtype} · {device} · {len(DEMO_PROMPTS)} prompts × {max_new_tokens} new tokens")
    for col in ("method", "tokens/s", "speedup vs ar", "mean accepted / forward", "forwards", "identical to ar"):
        table.add_column(col, justify="right" if col != "method" else "left")
    results = {}
    for m in methods:
        tot = totals[m]
        label = f"qdraft ({engine.models.self_drafter_backend()})" if m == "qdraft" else m
        tps = tot["tokens"] / tot["time"]
        mean_acc = tot["committed"] / tot["forwards"]
        results[m] = {"tokens_per_s": tps, "speedup": tps / base_tps, "mean_accepted": mean_acc}
        table.add_row(
            label, f"{tps:.1f}", f"{tps / base_tps:.2f}x", f"{mean_acc:.2f}", str(tot["forwards"]), f"{tot['same']}/{len(DEMO_PROMPTS)}"
        )
    console.print(table)
    if dtype != "float32":
        console.print(
            f"[dim]In {dtype}, a forward over k tokens rounds differently from k one-token forwards, so a near-tie can "
            "flip a token; identity is proven in float32 (make test).[/]"
        )
    return results
