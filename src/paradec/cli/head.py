"""``paradec head train``: a draft head for ``--method head`` (data, training, held-out quality, files)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import typer

from ..errors import ParadecError
from ..heads.train import TrainConfig
from ..options import like, make, option
from .common import command, command_line

head_app = typer.Typer(help="Trained draft heads for --method head (EAGLE-style, on the target's hidden states).",
                       no_args_is_help=True)


@dataclass(frozen=True)
class HeadTrainCommand:
    """``paradec head train``'s options; ``train_config`` makes the heads' ``TrainConfig``."""

    base: str = option("smollm2-135m", "--base", "-m", help="The target model (a name paradec loads).")
    out: str = option("draft-head", "--out", "-o", help="Output folder: config.json + head.safetensors (+ data).")
    seed: int = like(TrainConfig, "seed")
    prompts: int = option(1200, "--prompts", help="Training prompts to generate continuations for.")
    max_new: int = option(128, "--max-new", help="Tokens per continuation.")
    samples: int = option(0, "--samples", help="Sampled continuations per prompt (besides the greedy one).")
    gen_batch: int = option(32, "--gen-batch")
    data: Optional[str] = option(None, "--data", help="Reuse continuations written by earlier runs (data.jsonl; several: "
                                 "comma-separated).")
    data_only: bool = option(False, "--data-only", help="Stop after writing the continuations (OUT/data.jsonl).")
    data_minutes: float = option(0.0, "--data-minutes", help="Stop generating after this long (0 = no limit).")
    keep: int = option(4096, "--keep", help="Tokens the head can draft (the target's most generated).")
    intermediate: int = option(1152, "--intermediate", help="Width of the head's SwiGLU block.")
    steps: int = like(TrainConfig, "steps")
    batch: int = like(TrainConfig, "batch")
    lr: float = like(TrainConfig, "lr")
    unroll: int = like(TrainConfig, "unroll")
    reg: float = like(TrainConfig, "reg")
    minutes: float = like(TrainConfig, "minutes")
    max_len: int = option(512, "--max-len", help="Longest sequence for the feature pass (prompts cut from the left).")
    holdout: float = option(0.1, "--holdout", help="Share of continuations held out for the quality measurement.")
    bf16: bool = like(TrainConfig, "bf16")
    threads: int = option(0, "--threads", help="torch threads (0 = torch's default).")
    dtype: str = option("float32", "--dtype", help="The target's dtype for data and features.")
    device: str = option("cpu", "--device", help="cpu, cuda or auto.")

    def check(self) -> None:
        for name, value in (("--prompts", self.prompts), ("--max-new", self.max_new), ("--keep", self.keep),
                            ("--intermediate", self.intermediate)):
            if value < 1:
                raise ParadecError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= self.holdout < 1.0:
            raise ParadecError(f"--holdout must be in [0, 1), got {self.holdout}")

    def train_config(self) -> TrainConfig:
        """The training loop's config (a warm-up of a tenth of the steps, at most 50)."""
        try:
            return make(TrainConfig, asdict(self), warmup=min(50, max(1, self.steps // 10)))
        except ValueError as e:
            raise ParadecError(str(e)) from None

    def command_line(self) -> str:
        """The command recorded with the head (what it was trained with; not where or how fast)."""
        return command_line("paradec head train", self, skip=("out", "gen_batch", "data_only", "threads", "device"),
                            always=("base", "seed", "prompts", "max_new", "samples", "keep", "intermediate", "steps",
                                    "batch", "lr", "unroll", "reg", "max_len", "holdout", "dtype"))


@head_app.command("train")
@command(HeadTrainCommand)
def train_cmd(cmd: HeadTrainCommand) -> None:
    """Train a draft head for a target: generate the target's own continuations of prompts kept
    apart from the benchmark, take its hidden states along them, train the head, measure its
    held-out top-1 agreement per depth and chain acceptance, save it."""
    import torch

    from ..heads.data import keep_vocab
    from ..heads.model import new_head
    from ..heads.train import coverage, evaluate, train
    from ..models.loader import load_hf
    from ..outpath import writable_dir

    cmd.check()
    writable_dir(cmd.out)  # before the work, not after it
    cfg = cmd.train_config()
    if cmd.threads:
        torch.set_num_threads(cmd.threads)
    torch.manual_seed(cmd.seed)
    d = Path(cmd.out)
    d.mkdir(parents=True, exist_ok=True)
    loaded = load_hf(cmd.base, dtype=cmd.dtype, device=cmd.device)
    t0 = time.time()
    paths = _data_files(cmd, loaded, d)
    if paths is None:
        return
    train_rows, test_rows, n_rows = _split_rows(paths, cmd.holdout)
    t_data = time.time() - t0
    vocab_ids = keep_vocab(train_rows, cmd.keep)
    _log(f"{len(train_rows)} continuations to train on, {len(test_rows)} held out; {len(vocab_ids)} tokens kept")
    t1 = time.time()
    train_f, test_f = _cached_features(loaded.model, paths, train_rows, test_rows, cmd.max_len, cmd.holdout, _log)
    t_feat = time.time() - t1
    head = new_head(loaded.model, vocab_ids, cmd.intermediate, base=cmd.base)
    head.train()
    t2 = time.time()
    history = train(head, train_f, cfg, log=_log)
    t_train = time.time() - t2
    head.eval()
    quality = {"train_coverage": round(coverage(vocab_ids, train_f), 4)}
    if test_f is not None:
        quality.update(evaluate(head, test_f), heldout_coverage=round(coverage(vocab_ids, test_f), 4))
    trained = {"command": cmd.command_line(), "config": asdict(cfg), "quality": quality,
               "data": {"files": [p.name for p in paths], "continuations": n_rows, "train_tokens": len(train_f),
                        "heldout": len(test_rows),
                        "recipe": "greedy continuations of paradec.heads.data.head_prompts (Python's own docs, "
                                  "templates; no benchmark prompt)"},
               "seconds": {"data": round(t_data), "features": round(t_feat), "train": round(t_train)},
               "history": history[-3:]}
    head.spec = type(head.spec)(**{**asdict(head.spec), "trained": trained})
    head.save(d)
    _log(json.dumps(quality))
    _log(f"saved {d}")


def _log(line: str) -> None:
    print(line, flush=True)


def _data_files(cmd: HeadTrainCommand, loaded, d: Path) -> list[Path] | None:
    """The continuation files to train on: generated by the target into OUT/data.jsonl, or the
    ``--data`` files. None: ``--data-only`` wrote the data and the run stops."""
    from ..distill.data import DataConfig, generate_data
    from ..heads.data import head_prompts

    paths = [Path(p.strip()) for p in cmd.data.split(",") if p.strip()] if cmd.data else [d / "data.jsonl"]
    if cmd.data is None:
        chosen = head_prompts(cmd.prompts, cmd.seed)
        _log(f"generating continuations of {len(chosen)} prompts with {cmd.base}")
        generate_data(loaded.model, loaded.tokenizer, paths[0], chosen,
                      DataConfig(cmd.max_new, cmd.samples, cmd.gen_batch, cmd.seed, cmd.data_minutes), log=_log)
        if cmd.data_only:
            _log(f"saved {paths[0]}")
            return None
    for p in paths:
        if not p.is_file():
            raise ParadecError(f"--data: no file '{p}'")
    return paths


def _split_rows(paths: list[Path], holdout: float) -> tuple[list[dict], list[dict], int]:
    """(training rows, held-out rows, all rows): every n-th continuation of two tokens or more is
    held out, n = 1 / ``holdout``."""
    from ..distill.data import read_data

    rows = [r for p in paths for r in read_data(p) if len(r["response_ids"]) >= 2]
    if len(rows) < 2:
        raise ParadecError("not enough training data (need at least two continuations of two tokens or more)")
    every = max(2, round(1 / holdout)) if holdout else 0
    test_rows = [r for i, r in enumerate(rows) if every and i % every == 0]
    train_rows = [r for i, r in enumerate(rows) if not (every and i % every == 0)]
    return train_rows, test_rows, len(rows)


def _cached_features(model, paths: list[Path], train_rows, test_rows, max_len: int, holdout: float, log):
    """The target's features for the training and held-out continuations, cached next to the
    data (the pass over every continuation takes minutes on a CPU; reruns on the same data reuse it)."""
    import torch

    from ..heads.data import Features, features

    key = {"data": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime] for p in paths], "max_len": max_len,
           "holdout": holdout, "dtype": str(next(model.parameters()).dtype)}
    cache = paths[0].with_name(f"features-{max_len}-{len(paths)}.pt")
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            if saved.get("key") == key:
                log(f"features: reusing {cache}")
                test = Features(*saved["test"]) if saved["test"] else None
                return Features(*saved["train"]), test
        except Exception:  # noqa: BLE001 - a stale or broken cache is simply recomputed
            pass
    train_f = features(model, train_rows, max_len=max_len, log=log)
    test_f = features(model, test_rows, max_len=max_len) if test_rows else None
    pack = lambda f: None if f is None else [f.feats, f.tokens, f.left]  # noqa: E731
    torch.save({"key": key, "train": pack(train_f), "test": pack(test_f)}, cache)
    return train_f, test_f
