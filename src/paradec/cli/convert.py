"""``paradec convert``: AR model -> block-diffusion adapter (data, LoRA fine-tune, quality, files)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ..convert.train import ConvertConfig
from ..errors import ParadecError
from ..options import like, make, option
from .common import command, command_line


@dataclass(frozen=True)
class ConvertCommand:
    """``paradec convert``'s options; ``train_config`` makes the ``ConvertConfig`` of the fine-tune."""

    base: str = like(ConvertConfig, "base")
    out: str = option("converted-dlm", "--out", "-o", help="Output folder: config.json + adapter-*.safetensors.")
    seed: int = like(ConvertConfig, "seed")
    steps: int = like(ConvertConfig, "steps")
    batch: int = like(ConvertConfig, "batch")
    lr: float = like(ConvertConfig, "lr")
    rank: int = like(ConvertConfig, "rank")
    block_size: int = like(ConvertConfig, "block_size")
    min_block: int = like(ConvertConfig, "min_block")
    max_block: int = like(ConvertConfig, "max_block")
    max_len: int = like(ConvertConfig, "max_len")
    threads: int = like(ConvertConfig, "threads")
    data: Optional[str] = option(None, "--data", help="Reuse continuations written by an earlier run (data.jsonl).")
    max_new: int = option(160, "--max-new", help="Tokens per generated continuation.")
    samples: int = option(1, "--samples", help="Sampled continuations per prompt (besides the greedy one).")
    gen_batch: int = option(32, "--gen-batch")
    data_minutes: float = option(0.0, "--data-minutes", help="Stop generating data after this long (0 = no limit).")
    max_prompts: int = option(0, "--max-prompts", help="Use only this many training prompts (0 = all).")
    eval_prompts: int = option(24, "--eval-prompts", help="Held-out prompts for the quality measurements (0 = skip).")
    eval_gen: int = option(64, "--eval-gen", help="Tokens generated per held-out prompt for the perplexity check.")
    save_every: int = option(50, "--save-every", help="Also save the adapter every n steps (0 = only at the end).")
    train_minutes: float = option(0.0, "--train-minutes", help="Stop training after this long; the learning-rate decay "
                                  "follows the budget (0 = no limit).")
    views: int = like(ConvertConfig, "views")
    dtype: str = option("float32", "--dtype", help="Training dtype: float32 (or float64 for tests).")
    device: str = option("cpu", "--device", help="cpu, cuda or auto.")
    filter_prompts: int = option(0, "--filter-prompts", help="Train a Learn2PD commit filter on this many training "
                                 "prompts' one-token-per-step runs (0 = none).")

    def train_config(self) -> ConvertConfig:
        """The fine-tune's config (alpha = 2 x rank, a warm-up of a tenth of the steps, at most 30)."""
        return make(ConvertConfig, asdict(self), alpha=2.0 * self.rank, warmup=min(30, max(1, self.steps // 10)))

    def command_line(self) -> str:
        """The command recorded with the adapter (what it was trained with; not where it went)."""
        return command_line("paradec convert", self, skip=("out", "data", "save_every", "dtype"),
                            always=("base", "seed", "steps", "batch", "lr", "rank", "block_size", "min_block",
                                    "max_block", "max_len", "threads", "max_new", "samples", "views", "gen_batch",
                                    "eval_prompts", "eval_gen"))


@command(ConvertCommand)
def convert(cmd: ConvertCommand) -> None:
    """Convert an AR model into a block-diffusion model: generate its own continuations of the
    offline prompts (training split), LoRA fine-tune with masked blocks, measure masked-token
    accuracy per block position and one-token-per-step perplexity, save the adapter."""
    import torch

    from ..convert.train import train
    from ..dllm.converted import BlockDiffusionAR
    from ..distill.data import offline_prompts, split
    from ..models.loader import load_hf
    from ..outpath import writable_dir

    if cmd.steps < 1:
        raise ParadecError(f"--steps must be >= 1, got {cmd.steps}")
    writable_dir(cmd.out)  # before the work, not after it
    torch.set_num_threads(cmd.threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # CUDA only: TF32 products for training
    try:
        cfg = cmd.train_config()
        acfg = cfg.adapter()
    except ValueError as e:
        raise ParadecError(str(e)) from None
    d = Path(cmd.out)
    d.mkdir(parents=True, exist_ok=True)
    loaded = load_hf(cmd.base, dtype=cmd.dtype, device=cmd.device)
    prompts = offline_prompts()
    train_prompts = split(prompts, heldout=False)[: cmd.max_prompts or None]
    if not train_prompts:
        raise ParadecError("no training prompts: install the bench prompt sets (pip install 'paradec[bench]')")
    data_path, rows = _training_rows(cmd, loaded, train_prompts, d)
    model = BlockDiffusionAR(loaded.model, acfg)  # in place: with the gate off it is still the base model
    meta = {"train": {**asdict(cfg), "command": cmd.command_line(), "data": _data_summary(cmd, rows)}}
    t0 = time.time()
    summary = train(model, rows, cfg, log=_log, save_every=cmd.save_every,
                    save=lambda step: (model.save(d, {**meta, "checkpoint_step": step}), _log(f"saved checkpoint at step {step}")),
                    minutes=cmd.train_minutes)
    meta["train"].update(summary)
    model.save(d, meta)
    _log(f"trained in {time.time() - t0:.0f}s; saved {d}")
    if cmd.eval_prompts:
        from ..convert.evaluate import QualityConfig, quality

        meta["quality"] = quality(model, loaded.tokenizer, split(prompts, heldout=True), cfg,
                                  QualityConfig(cmd.eval_prompts, cmd.eval_gen), data_path.with_name("heldout.jsonl"), log=_log)
        model.save(d, meta)
        _log(json.dumps(meta["quality"], indent=1))
    if cmd.filter_prompts:
        meta["filter"] = train_converted_filter(model, loaded.tokenizer, train_prompts, cmd.filter_prompts, cmd.eval_gen, d,
                                                seed=cmd.seed, log=_log)
        model.save(d, meta)


def _log(line: str) -> None:
    print(line, flush=True)


def _training_rows(cmd: ConvertCommand, loaded, train_prompts, d: Path) -> tuple[Path, list[dict]]:
    """The continuations to train on: generated by the base model into OUT/data.jsonl, or read
    from ``--data``."""
    from ..distill.data import DataConfig, generate_data, read_data

    data_path = Path(cmd.data) if cmd.data else d / "data.jsonl"
    if cmd.data is None:
        _log(f"generating continuations of {len(train_prompts)} training prompts with {cmd.base}")
        generate_data(loaded.model, loaded.tokenizer, data_path, train_prompts,
                      DataConfig(cmd.max_new, cmd.samples, cmd.gen_batch, cmd.seed, cmd.data_minutes), log=_log)
    elif not data_path.is_file():
        raise ParadecError(f"--data: no file '{cmd.data}'")
    rows = [r for r in read_data(data_path) if r["response_ids"]]
    if not rows:
        raise ParadecError("no training data")
    _log(f"training on {len(rows)} continuations ({sum(len(r['response_ids']) for r in rows)} tokens)")
    return data_path, rows


def _data_summary(cmd: ConvertCommand, rows: list[dict]) -> dict:
    return {"continuations": len(rows), "tokens": sum(len(r["response_ids"]) for r in rows), "by_mode": _count(rows, "mode"),
            "by_source": _count(rows, "source"), "max_new": cmd.max_new, "samples": cmd.samples,
            "split": "prompt i of each source held out when i % 4 == 0 (never trained on)"}


def train_converted_filter(model, tokenizer, prompts, n: int, gen_length: int, d: Path, seed: int = 0, log=print) -> dict:
    """Learn2PD filter for a converted model: features of every step of one-token-per-step runs on
    ``n`` training prompts, labelled by whether the step's prediction is the final token there."""
    import torch

    from ..distill.data import chat_ids
    from ..convert.evaluate import pick
    from ..dllm.converted_dlm import ConvertedDLM
    from ..dllm.learn2pd import collect, save_filter, train_filter

    dlm = ConvertedDLM(model, tokenizer)
    chosen = pick(prompts, n)
    t0 = time.time()
    X, Y = collect(dlm, [chat_ids(tokenizer, p.text) for p in chosen], gen_length, batch_size=8,
                   block_size=dlm.spec.block_size)
    log(f"filter: {len(X)} decisions from {len(chosen)} prompts in {time.time() - t0:.0f}s")
    filt = train_filter(X, Y, seed=seed, epochs=300, log=log)
    save_filter(filt, d / "filter.safetensors")
    with torch.no_grad():
        acc = float(((filt(X) > 0).float() == Y).float().mean())
    return {"prompts": len(chosen), "gen_length": gen_length, "decisions": len(X), "positives": round(float(Y.mean()), 4),
            "train_accuracy": round(acc, 4)}


def _count(rows: list[dict], key: str) -> dict:
    out: dict = {}
    for r in rows:
        out[r[key]] = out.get(r[key], 0) + 1
    return out
