"""``paradec dllm ...``: train, bench, text-bench, methods (``paradec generate`` on a dLLM: generate.py)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from ..convert.text_bench import TextBenchConfig
from ..dllm.toy.train import TrainConfig
from ..errors import ParadecError
from ..options import like, make, option
from ..outpath import writable_dir
from .common import command, command_line

dllm_app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Diffusion LMs: train the tiny dLLM and its AR reference, benchmark the decoding policies.",
)


def _check_only(only: tuple[str, ...], configs) -> None:
    """Every ``--only`` value names a method or a label of the benchmark's configurations."""
    known = {m for _, m, _ in configs} | {label for label, _, _ in configs}
    unknown = [o for o in only if o not in known]
    if unknown:
        raise ParadecError(f"--only {', '.join(unknown)}: not a method or label of this benchmark "
                           f"(methods: {', '.join(dict.fromkeys(m for _, m, _ in configs))})")


@dataclass(frozen=True)
class DllmTrainCommand:
    """``paradec dllm train``'s options."""

    out: str = option("dllm-model", "--out", "-o", help="Output folder: OUT/dllm and OUT/ar.")
    kind: str = option("all", "--kind", help="all, dllm (with its Learn2PD filter) or ar.")
    seed: int = like(TrainConfig, "seed")
    steps: int = like(TrainConfig, "steps")
    threads: int = like(TrainConfig, "threads")
    eval_n: int = option(100, "--eval-n", min=1, help="Held-out instances per task for the recorded accuracy.")
    filter_n: int = option(60, "--filter-n", min=1, help="Training instances per task whose trajectories train the filter.")


@dllm_app.command("train")
@command(DllmTrainCommand)
def train_cmd(cmd: DllmTrainCommand) -> None:
    """Train the shipped tiny masked diffusion LM (and/or the AR reference) on CPU from a seed,
    then measure one-token-per-step accuracy on held-out instances and record it in config.json."""
    import torch

    from ..dllm.toy.train import train

    if cmd.kind not in ("all", "dllm", "ar"):
        raise ParadecError(f"--kind must be all, dllm or ar, got '{cmd.kind}'")
    writable_dir(cmd.out)  # before the training, not after it
    torch.set_num_threads(cmd.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    for k in (["dllm", "ar"] if cmd.kind == "all" else [cmd.kind]):
        t0 = time.time()
        model = train(make(TrainConfig, dataclasses.asdict(cmd), kind=k), log=log)
        _finish(model, dataclasses.replace(cmd, kind=k), time.time() - t0, log)


def _finish(model, cmd: DllmTrainCommand, secs: float, log=print) -> dict:
    """Save a trained model of ``cmd.kind`` (float16 weights) in OUT/KIND, train the dLLM's
    Learn2PD filter on its own trajectories, measure held-out accuracy of what is saved and
    record it in config.json."""
    import torch

    from ..dllm.loaders import load_diffusion
    from ..dllm.learn2pd import collect, save_filter, train_filter
    from ..dllm.toy.evaluate import heldout, run_ar, run_method
    from ..dllm.toy.tasks import GEN_LENGTH, TASKS, dataset

    kind, d = cmd.kind, Path(cmd.out) / cmd.kind
    line = command_line("paradec dllm train", cmd, always=("kind", "seed", "steps", "threads"),
                        skip=("out", "eval_n", "filter_n"))
    meta = {"train": {"kind": kind, "seed": cmd.seed, "steps": cmd.steps, "threads": cmd.threads, "seconds": round(secs),
                      "command": line, "gen_length": GEN_LENGTH, "params": model.n_params()}}
    model.save(d, meta, dtype=torch.float16)
    m = load_diffusion(str(d))  # evaluate what is shipped (float16 weights, float32 compute)
    insts = heldout(cmd.eval_n)
    if kind == "dllm":
        sc, _ = run_method(m, "one", {}, insts)
        log("training the Learn2PD filter on the model's own one-token-per-step trajectories")
        train_prompts = [i.prompt_ids for t in TASKS for i in dataset(t, cmd.filter_n, cmd.seed + 1)]
        X, Y = collect(m, train_prompts, GEN_LENGTH)
        save_filter(train_filter(X, Y, seed=cmd.seed, epochs=300 if cmd.filter_n >= 20 else 5, log=log),
                    d / "filter.safetensors")
    else:
        sc = run_ar(m, insts)
    measured = {"method": "one token per step" if kind == "dllm" else "greedy AR", "n_per_task": cmd.eval_n,
                "accuracy": round(sc.accuracy, 4), "by_task": {t: round(v, 4) for t, v in sc.by_task.items()}}
    c = json.loads((d / "config.json").read_text())
    c["measured"] = measured
    (d / "config.json").write_text(json.dumps(c, indent=1))
    log(f"{kind}: {model.n_params() / 1e6:.2f}M params, {secs / 60:.1f} min, held-out accuracy {100 * sc.accuracy:.1f}% "
        + " ".join(f"{t} {100 * v:.0f}" for t, v in sc.by_task.items()) + f" -> {d}")
    return measured


@dataclass(frozen=True)
class DllmBenchCommand:
    """``paradec dllm bench``'s options."""

    model: str = option("tiny-dllm", "--model", "-m")
    ar: str = option("tiny-ar", "--ar", help="AR reference model ('' to skip).")
    n: int = option(100, "--n", min=1, help="Held-out instances per task.")
    batch_size: int = option(64, "--batch-size", min=1)
    out: str = option("dllm-bench", "--out", "-o", help="Folder for results.json, results.md, frontier.png.")
    only: tuple[str, ...] = option((), "--only", help="Run only these methods or labels (repeatable).")
    threads: int = option(1, "--threads", min=1)


@dllm_app.command("bench")
@command(DllmBenchCommand)
def bench_cmd(cmd: DllmBenchCommand) -> None:
    """Every decoding policy on held-out task instances: accuracy, forwards, tokens per forward,
    tokens/s, vs one-token-per-step and the AR reference; a frontier plot."""
    import torch

    from ..dllm.loaders import load_diffusion
    from ..dllm.policies.learned import filter_of
    from ..dllm.toy.bench import CONFIGS, run_bench

    _check_only(cmd.only, CONFIGS)
    writable_dir(cmd.out)
    torch.set_num_threads(cmd.threads)
    m = load_diffusion(cmd.model)
    arm = load_diffusion(cmd.ar) if cmd.ar else None
    run_bench(m, arm, n_per_task=cmd.n, batch_size=cmd.batch_size, out_dir=cmd.out, only=list(cmd.only) or None,
              filter_model=filter_of(m), log=lambda s: print(s, flush=True))
    print(f"wrote {cmd.out}/results.json, results.md, frontier.png")


@dllm_app.command("text-bench")
@command(TextBenchConfig)
def text_bench_cmd(cfg: TextBenchConfig) -> None:
    """Speed/quality frontier of a converted text dLLM: every policy on held-out MT-Bench
    prompts (AR perplexity of the output) and HumanEval problems (pass@1, sandboxed execution)."""
    import torch

    from ..convert.text_bench import CONFIGS, run

    if cfg.mt + cfg.humaneval == 0:
        raise ParadecError("--mt and --humaneval are both 0: nothing to measure")
    _check_only(cfg.only, CONFIGS)
    writable_dir(cfg.out)
    torch.set_num_threads(cfg.threads)
    run(cfg, log=lambda s: print(s, flush=True))
    print(f"wrote {cfg.out}/text_results.json, text_results.md, text_frontier.png")


@dllm_app.command("methods")
def methods_cmd() -> None:
    """List the diffusion decoding methods."""
    from ..dllm.methods import METHODS

    for k, v in METHODS.items():
        print(f"{k:10s} {v}")
