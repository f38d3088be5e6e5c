"""The ``paradec bench`` command (registered by ``paradec.cli``). Importing this module is
cheap: models, torch-heavy code and matplotlib load only when the command runs."""

from __future__ import annotations

from typing import Optional

import typer

from ..errors import ParadecError


def bench(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Target: packaged name, model dir, .gguf file or cached hub id (default smollm2-135m)."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="Draft model (same tokenizer): enables method draft and peer hf-assisted."),
    suite: str = typer.Option("all", "--suite", help="Comma list of mt_bench, humaneval, translation, summarization, qa, math, rag; or all; or structured (JSON Schemas, constrained; runs alone)."),
    methods: str = typer.Option("all", "--methods", help="Comma list of paradec methods, or all (ar always runs: it is the baseline)."),
    peers: str = typer.Option("all", "--peers", help="Comma list of hf, hf-pld, hf-assisted, llama.cpp, llama.cpp-pld, torch-ar, torch-ar-bf16 (paradec ar on the torch backend beside a native target; not in all); all or none."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy (identity is checked); > 0 benchmarks sampling."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, or auto (cuda when present)."),
    backend: str = typer.Option("auto", "--backend", help="auto (native for a GGUF on a CPU in float32, else torch), native (the GGUF's quantized weights) or torch."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", help="Token limit per answer (default 128; 24 with --quick)."),
    prompts_per_category: Optional[int] = typer.Option(None, "--prompts-per-category", help="Evenly spaced prompts per category (default all; 1 with --quick)."),
    repeats: int = typer.Option(1, "--repeats", help="Timed runs of every prompt per row."),
    quick: bool = typer.Option(False, "--quick", help="A few prompts per category and short outputs (a smoke run)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write every raw figure to this JSON file."),
    report: Optional[str] = typer.Option(None, "--report", help="Write report.md and PNG plots into this directory."),
    seed: int = typer.Option(0, "--seed", help="Base seed for sampling runs."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and llama.cpp (default: torch's choice)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Records file (JSON lines): every finished measurement is appended at once; run the same command again to continue where it stopped."),
    fresh: bool = typer.Option(False, "--fresh", help="With --resume: start the records file over (the old one is kept as PATH.bak)."),
    from_path: Optional[str] = typer.Option(None, "--from", help="Rebuild the tables, --json and --report from a --resume records file; runs nothing."),
) -> None:
    """Spec-Bench-style speed benchmark: paradec's methods and their peers (transformers,
    llama.cpp) on the same prompts, model and machine, in one run."""
    from rich.console import Console

    from ..bench.config import BenchConfig
    from ..bench.report import print_tables

    if "structured" in [x.strip() for x in suite.split(",")]:
        return _structured(suite, model, draft_model, methods, peers, temperature, dtype, device, max_new_tokens,
                           prompts_per_category, repeats, quick, json_path, report, threads, resume, from_path)
    if from_path is not None:
        given = {
            "--model": model is not None, "--draft-model": draft_model is not None, "--suite": suite != "all",
            "--methods": methods != "all", "--peers": peers != "all", "--temperature": temperature != 0.0,
            "--dtype": dtype != "float32", "--device": device != "auto", "--backend": backend != "auto", "--max-new-tokens": max_new_tokens is not None,
            "--prompts-per-category": prompts_per_category is not None, "--repeats": repeats != 1, "--quick": quick,
            "--seed": seed != 0, "--threads": threads is not None, "--resume": resume is not None, "--fresh": fresh,
        }
        bad = [k for k, v in given.items() if v]
        if bad:
            raise ParadecError(f"--from only rebuilds results from records: {', '.join(bad)} cannot be used with it")
        result = _from_records(from_path, json_path, report)
    else:
        from ..bench.run import run_bench

        cfg = BenchConfig(
            model=model, draft_model=draft_model, suite=suite, methods=methods, peers=peers, temperature=temperature,
            dtype=dtype, device=device, backend=backend, max_new_tokens=max_new_tokens, prompts_per_category=prompts_per_category,
            repeats=repeats, quick=quick, json_path=json_path, report_dir=report, seed=seed, threads=threads,
            resume=resume, fresh=fresh,
        )
        result = run_bench(cfg, console=Console(stderr=True))
    print_tables(result, Console())
    if json_path:
        print(f"raw figures: {json_path}")
    if report:
        print(f"report: {report}/report.md")
    if resume:
        print(f"records: {resume}" + ("" if result.get("complete") else " (incomplete: run the same command again to continue)"))


def _from_records(path: str, json_path: str | None, report: str | None) -> dict:
    from ..bench.config import check_writable_dir, check_writable_file, same_file
    from ..bench.run import result_from_file, write_outputs

    if json_path and same_file(json_path, path):
        raise ParadecError("--json and --from name the same file: the JSON would overwrite the records")
    result = result_from_file(path)
    if json_path:
        check_writable_file(json_path, "--json")
    if report:
        check_writable_dir(report, "--report")
    write_outputs(result, json_path, report)
    return result


def _structured(suite, model, draft_model, methods, peers, temperature, dtype, device, max_new_tokens,
                prompts_per_category, repeats, quick, json_path, report, threads, resume, from_path) -> None:
    """``--suite structured``: constrained generation on the suite's JSON Schemas (see structured.py)."""
    from ..bench.structured import DEFAULT_METHODS, PEERS, StructuredConfig, run_structured, table, write_report

    if suite.strip() != "structured":
        raise ParadecError("suite structured runs alone: give --suite structured without other suites")
    unsupported = {"--draft-model": draft_model, "--temperature": temperature != 0.0, "--repeats": repeats != 1,
                   "--resume": resume, "--from": from_path}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ParadecError(f"suite structured does not take {', '.join(bad)} (it benchmarks greedy constrained decoding)")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = lambda spec, default: default if spec == "all" else (() if spec == "none" else  # noqa: E731
                                                                   tuple(x.strip() for x in spec.split(",") if x.strip()))
    limit = prompts_per_category or (8 if quick else None)
    cfg = StructuredConfig(model=model, methods=names(methods, DEFAULT_METHODS), peers=names(peers, PEERS),
                           max_new_tokens=max_new_tokens or (96 if quick else 256), limit=limit, dtype=dtype, device=device,
                           threads=threads, json_path=json_path)
    import sys

    result = run_structured(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"suite structured: {result['schemas']} schemas, model {result['model']}, max_new_tokens {result['max_new_tokens']}, "
          f"{result['threads']} threads")
    print(table(result))
    if json_path:
        print(f"raw figures: {json_path}")
    if report:
        write_report(result, report, command="paradec " + " ".join(sys.argv[1:]))
        print(f"report: {report}/report.md")
