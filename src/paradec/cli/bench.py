"""The ``paradec bench`` command (registered by ``paradec.cli``). Importing this module is
cheap: models, torch-heavy code and matplotlib load only when the command runs."""

from __future__ import annotations

from ..bench.config import BenchConfig
from ..errors import ParadecError
from .common import command, given


@command(BenchConfig)
def bench(cfg: BenchConfig) -> None:
    """Spec-Bench-style speed benchmark: paradec's methods and their peers (transformers,
    llama.cpp) on the same prompts, model and machine, in one run."""
    from rich.console import Console

    from ..bench.report import print_tables

    if "structured" in [x.strip() for x in cfg.suite.split(",")]:
        return _structured(cfg)
    if cfg.from_path is not None:
        bad = given(cfg, skip=("json_path", "report_dir", "from_path"))  # --from takes only the outputs
        if bad:
            raise ParadecError(f"--from only rebuilds results from records: {', '.join(bad)} cannot be used with it")
        result = _from_records(cfg.from_path, cfg.json_path, cfg.report_dir)
    else:
        from ..bench.run import run_bench

        result = run_bench(cfg, console=Console(stderr=True))
    print_tables(result, Console())
    if cfg.json_path:
        print(f"raw figures: {cfg.json_path}")
    if cfg.report_dir:
        print(f"report: {cfg.report_dir}/report.md")
    if cfg.resume:
        print(f"records: {cfg.resume}" + ("" if result.get("complete") else " (incomplete: run the same command again to continue)"))


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


def _structured(cfg: BenchConfig) -> None:
    """``--suite structured``: constrained generation on the suite's JSON Schemas (see structured.py)."""
    import sys

    from ..bench.structured import DEFAULT_METHODS, PEERS, StructuredConfig, run_structured, table, write_report

    if cfg.suite.strip() != "structured":
        raise ParadecError("suite structured runs alone: give --suite structured without other suites")
    unsupported = {"--draft-model": cfg.draft_model, "--temperature": cfg.temperature != 0.0, "--repeats": cfg.repeats != 1,
                   "--resume": cfg.resume, "--from": cfg.from_path}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ParadecError(f"suite structured does not take {', '.join(bad)} (it benchmarks greedy constrained decoding)")
    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = lambda spec, default: default if spec == "all" else (() if spec == "none" else  # noqa: E731
                                                                   tuple(x.strip() for x in spec.split(",") if x.strip()))
    limit = cfg.prompts_per_category or (8 if cfg.quick else None)
    from ..bench.config import check_writable_dir, check_writable_file

    if cfg.report_dir:  # the outputs are checked before minutes of work (the report folder first: it may hold the JSON)
        check_writable_dir(cfg.report_dir, "--report")
    if cfg.json_path:
        check_writable_file(cfg.json_path, "--json")
    scfg = StructuredConfig(model=cfg.model, methods=names(cfg.methods, DEFAULT_METHODS), peers=names(cfg.peers, PEERS),
                            max_new_tokens=cfg.max_new_tokens or (96 if cfg.quick else 256), limit=limit, dtype=cfg.dtype,
                            device=device, threads=cfg.threads, json_path=cfg.json_path)
    result = run_structured(scfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"suite structured: {result['schemas']} schemas, model {result['model']}, max_new_tokens {result['max_new_tokens']}, "
          f"{result['threads']} threads")
    print(table(result))
    if cfg.json_path:
        print(f"raw figures: {cfg.json_path}")
    if cfg.report_dir:
        write_report(result, cfg.report_dir, command="paradec " + " ".join(sys.argv[1:]))
        print(f"report: {cfg.report_dir}/report.md")
