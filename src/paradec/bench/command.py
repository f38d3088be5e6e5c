"""The ``paradec bench`` command (registered by ``paradec.cli``). Importing this module is
cheap: models, torch-heavy code and matplotlib load only when the command runs."""

from __future__ import annotations

from typing import Optional

import typer


def bench(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Target: packaged name, model dir, .gguf file or cached hub id (default smollm2-135m)."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="Draft model (same tokenizer): enables method draft and peer hf-assisted."),
    suite: str = typer.Option("all", "--suite", help="Comma list of mt_bench, humaneval, translation, summarization, qa, math, rag; or all."),
    methods: str = typer.Option("all", "--methods", help="Comma list of paradec methods, or all (ar always runs: it is the baseline)."),
    peers: str = typer.Option("all", "--peers", help="Comma list of hf, hf-pld, hf-assisted, llama.cpp, llama.cpp-pld; all or none."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy (identity is checked); > 0 benchmarks sampling."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, or auto (cuda when present)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", help="Token limit per answer (default 128; 24 with --quick)."),
    prompts_per_category: Optional[int] = typer.Option(None, "--prompts-per-category", help="Evenly spaced prompts per category (default all; 1 with --quick)."),
    repeats: int = typer.Option(1, "--repeats", help="Timed runs of every prompt per row."),
    quick: bool = typer.Option(False, "--quick", help="A few prompts per category and short outputs (a smoke run)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write every raw figure to this JSON file."),
    report: Optional[str] = typer.Option(None, "--report", help="Write report.md and PNG plots into this directory."),
    seed: int = typer.Option(0, "--seed", help="Base seed for sampling runs."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and llama.cpp (default: torch's choice)."),
) -> None:
    """Spec-Bench-style speed benchmark: paradec's methods and their peers (transformers,
    llama.cpp) on the same prompts, model and machine, in one run."""
    from rich.console import Console

    from .config import BenchConfig
    from .report import print_tables
    from .run import run_bench

    cfg = BenchConfig(
        model=model, draft_model=draft_model, suite=suite, methods=methods, peers=peers, temperature=temperature,
        dtype=dtype, device=device, max_new_tokens=max_new_tokens, prompts_per_category=prompts_per_category,
        repeats=repeats, quick=quick, json_path=json_path, report_dir=report, seed=seed, threads=threads,
    )
    result = run_bench(cfg, console=Console(stderr=True))
    print_tables(result, Console())
    if json_path:
        print(f"raw figures: {json_path}")
    if report:
        print(f"report: {report}/report.md")
