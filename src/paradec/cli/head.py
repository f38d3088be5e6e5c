"""``paradec head train``: a draft head for ``--method head`` (data, training, held-out quality, files)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from ..errors import ParadecError

head_app = typer.Typer(help="Trained draft heads for --method head (EAGLE-style, on the target's hidden states).",
                       no_args_is_help=True)


@head_app.command("train")
def train_cmd(
    base: str = typer.Option("smollm2-135m", "--base", "-m", help="The target model (a name paradec loads)."),
    out: str = typer.Option("draft-head", "--out", "-o", help="Output folder: config.json + head.safetensors (+ data)."),
    seed: int = typer.Option(0, "--seed"),
    prompts: int = typer.Option(1200, "--prompts", help="Training prompts to generate continuations for."),
    max_new: int = typer.Option(128, "--max-new", help="Tokens per continuation."),
    samples: int = typer.Option(0, "--samples", help="Sampled continuations per prompt (besides the greedy one)."),
    gen_batch: int = typer.Option(32, "--gen-batch"),
    data: Optional[str] = typer.Option(None, "--data", help="Reuse continuations written by earlier runs (data.jsonl; several: comma-separated)."),
    data_only: bool = typer.Option(False, "--data-only", help="Stop after writing the continuations (OUT/data.jsonl)."),
    data_minutes: float = typer.Option(0.0, "--data-minutes", help="Stop generating after this long (0 = no limit)."),
    keep: int = typer.Option(4096, "--keep", help="Tokens the head can draft (the target's most generated)."),
    intermediate: int = typer.Option(1152, "--intermediate", help="Width of the head's SwiGLU block."),
    steps: int = typer.Option(1000, "--steps"),
    batch: int = typer.Option(512, "--batch", help="Windows per step."),
    lr: float = typer.Option(1e-3, "--lr"),
    unroll: int = typer.Option(3, "--unroll", help="Depths trained per window (the head steps on its own predictions)."),
    reg: float = typer.Option(1.0, "--reg", help="Weight of the feature regression."),
    minutes: float = typer.Option(0.0, "--minutes", help="Training time budget (0 = no limit); the schedule follows it."),
    max_len: int = typer.Option(512, "--max-len", help="Longest sequence for the feature pass (prompts cut from the left)."),
    holdout: float = typer.Option(0.1, "--holdout", help="Share of continuations held out for the quality measurement."),
    bf16: bool = typer.Option(False, "--bf16/--no-bf16", help="Autocast the products to bfloat16 while training."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0 = torch's default)."),
    dtype: str = typer.Option("float32", "--dtype", help="The target's dtype for data and features."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
) -> None:
    """Train a draft head for a target: generate the target's own continuations of prompts kept
    apart from the benchmark, take its hidden states along them, train the head, measure its
    held-out top-1 agreement per depth and chain acceptance, save it."""
    import torch

    from ..distill.data import generate_data, read_data
    from ..models.loader import load_hf
    from ..heads.data import head_prompts, keep_vocab
    from ..heads.model import new_head
    from ..heads.train import TrainConfig, coverage, evaluate, train

    for name, value in (("--prompts", prompts), ("--max-new", max_new), ("--keep", keep), ("--intermediate", intermediate)):
        if value < 1:
            raise ParadecError(f"{name} must be >= 1, got {value}")
    if not 0.0 <= holdout < 1.0:
        raise ParadecError(f"--holdout must be in [0, 1), got {holdout}")
    from ..outpath import writable_dir

    writable_dir(out)  # before the work, not after it
    try:
        cfg = TrainConfig(steps=steps, batch=batch, lr=lr, unroll=unroll, reg=reg, seed=seed, minutes=minutes, bf16=bf16,
                          warmup=min(50, max(1, steps // 10)))
    except ValueError as e:
        raise ParadecError(str(e)) from None
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    log = lambda s: print(s, flush=True)  # noqa: E731
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    loaded = load_hf(base, dtype=dtype, device=device)
    paths = [Path(p.strip()) for p in data.split(",") if p.strip()] if data else [d / "data.jsonl"]
    t0 = time.time()
    if data is None:
        chosen = head_prompts(prompts, seed)
        log(f"generating continuations of {len(chosen)} prompts with {base}")
        generate_data(loaded.model, loaded.tokenizer, paths[0], chosen, max_new=max_new, samples=samples,
                      batch=gen_batch, seed=seed, log=log, minutes=data_minutes)
        if data_only:
            log(f"saved {paths[0]}")
            return
    for p in paths:
        if not p.is_file():
            raise ParadecError(f"--data: no file '{p}'")
    rows = [r for p in paths for r in read_data(p) if len(r["response_ids"]) >= 2]
    if len(rows) < 2:
        raise ParadecError("not enough training data (need at least two continuations of two tokens or more)")
    t_data = time.time() - t0
    every = max(2, round(1 / holdout)) if holdout else 0  # every n-th continuation is held out
    test_rows = [r for i, r in enumerate(rows) if every and i % every == 0]
    train_rows = [r for i, r in enumerate(rows) if not (every and i % every == 0)]
    vocab_ids = keep_vocab(train_rows, keep)
    log(f"{len(train_rows)} continuations to train on, {len(test_rows)} held out; {len(vocab_ids)} tokens kept")
    t1 = time.time()
    train_f, test_f = _cached_features(loaded.model, paths, train_rows, test_rows, max_len, holdout, log)
    t_feat = time.time() - t1
    head = new_head(loaded.model, vocab_ids, intermediate, base=base)
    head.train()
    t2 = time.time()
    history = train(head, train_f, cfg, log=log)
    t_train = time.time() - t2
    head.eval()
    quality = {"train_coverage": round(coverage(vocab_ids, train_f), 4)}
    if test_f is not None:
        quality.update(evaluate(head, test_f), heldout_coverage=round(coverage(vocab_ids, test_f), 4))
    command = (f"paradec head train --base {base} --seed {seed} --prompts {prompts} --max-new {max_new} --samples {samples}"
               f" --keep {keep} --intermediate {intermediate} --steps {steps} --batch {batch} --lr {lr} --unroll {unroll}"
               f" --reg {reg} --max-len {max_len} --holdout {holdout} --dtype {dtype}"
               + (f" --minutes {minutes}" if minutes else "") + (" --bf16" if bf16 else "")
               + (f" --data-minutes {data_minutes}" if data_minutes else "") + (f" --data {data}" if data else ""))
    trained = {"command": command, "config": asdict(cfg), "quality": quality,
               "data": {"files": [p.name for p in paths], "continuations": len(rows), "train_tokens": len(train_f),
                        "heldout": len(test_rows),
                        "recipe": "greedy continuations of paradec.heads.data.head_prompts (Python's own docs, "
                                  "templates; no benchmark prompt)"},
               "seconds": {"data": round(t_data), "features": round(t_feat), "train": round(t_train)},
               "history": history[-3:]}
    head.spec = type(head.spec)(**{**asdict(head.spec), "trained": trained})
    head.save(d)
    log(json.dumps(quality))
    log(f"saved {d}")


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
