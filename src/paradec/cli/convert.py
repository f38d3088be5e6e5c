"""``paradec convert``: AR model -> block-diffusion adapter (data, LoRA fine-tune, quality, files)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from ..errors import ParadecError


def convert(
    base: str = typer.Option("smollm2-135m", "--base", "-m", help="The AR model to convert (a name paradec loads)."),
    out: str = typer.Option("converted-dlm", "--out", "-o", help="Output folder: config.json + adapter-*.safetensors."),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(600, "--steps", help="Fine-tuning steps."),
    batch: int = typer.Option(4, "--batch", help="Sequences per step."),
    lr: float = typer.Option(6e-4, "--lr"),
    rank: int = typer.Option(32, "--rank", help="LoRA rank."),
    block_size: int = typer.Option(8, "--block-size", help="Default block for dLLM decoding and deer drafts."),
    min_block: int = typer.Option(4, "--min-block"),
    max_block: int = typer.Option(16, "--max-block"),
    max_len: int = typer.Option(384, "--max-len", help="Longest training sequence (the prompt is cut from the left)."),
    threads: int = typer.Option(2, "--threads", help="torch threads (CPU)."),
    data: Optional[str] = typer.Option(None, "--data", help="Reuse continuations written by an earlier run (data.jsonl)."),
    max_new: int = typer.Option(160, "--max-new", help="Tokens per generated continuation."),
    samples: int = typer.Option(1, "--samples", help="Sampled continuations per prompt (besides the greedy one)."),
    gen_batch: int = typer.Option(32, "--gen-batch"),
    data_minutes: float = typer.Option(0.0, "--data-minutes", help="Stop generating data after this long (0 = no limit)."),
    max_prompts: int = typer.Option(0, "--max-prompts", help="Use only this many training prompts (0 = all)."),
    eval_prompts: int = typer.Option(24, "--eval-prompts", help="Held-out prompts for the quality measurements (0 = skip)."),
    eval_gen: int = typer.Option(64, "--eval-gen", help="Tokens generated per held-out prompt for the perplexity check."),
    save_every: int = typer.Option(50, "--save-every", help="Also save the adapter every n steps (0 = only at the end)."),
    train_minutes: float = typer.Option(0.0, "--train-minutes", help="Stop training after this long; the learning-rate decay follows the budget (0 = no limit)."),
    views: int = typer.Option(2, "--views", help="Block cuts per sequence per step (they share one clean pass)."),
    dtype: str = typer.Option("float32", "--dtype", help="Training dtype: float32 (or float64 for tests)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    filter_prompts: int = typer.Option(0, "--filter-prompts",
                                       help="Train a Learn2PD commit filter on this many training prompts' one-token-per-step runs (0 = none)."),
) -> None:
    """Convert an AR model into a block-diffusion model: generate its own continuations of the
    offline prompts (training split), LoRA fine-tune with masked blocks, measure masked-token
    accuracy per block position and one-token-per-step perplexity, save the adapter."""
    import torch

    from ..models.loader import load_hf
    from ..convert.train import ConvertConfig, train
    from ..distill.data import generate_data, offline_prompts, read_data, split
    from ..dllm.converted import BlockDiffusionAR

    if steps < 1:
        raise ParadecError(f"--steps must be >= 1, got {steps}")
    from ..outpath import writable_dir

    writable_dir(out)  # before the work, not after it
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # CUDA only: TF32 products for training
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        cfg = ConvertConfig(base=base, seed=seed, steps=steps, batch=batch, lr=lr, rank=rank, alpha=2.0 * rank,
                            block_size=block_size, min_block=min_block, max_block=max_block, max_len=max_len, threads=threads,
                            views=views, warmup=min(30, max(1, steps // 10)))
        acfg = cfg.adapter()
    except ValueError as e:
        raise ParadecError(str(e)) from None
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    loaded = load_hf(base, dtype=dtype, device=device)
    prompts = offline_prompts()
    train_prompts = split(prompts, heldout=False)
    if max_prompts:
        train_prompts = train_prompts[:max_prompts]
    if not train_prompts:
        raise ParadecError("no training prompts: install the bench prompt sets (pip install 'paradec[bench]')")
    data_path = Path(data) if data else d / "data.jsonl"
    if data is None:
        log(f"generating continuations of {len(train_prompts)} training prompts with {base}")
        generate_data(loaded.model, loaded.tokenizer, data_path, train_prompts, max_new=max_new, samples=samples,
                      batch=gen_batch, seed=seed, log=log, minutes=data_minutes)
    elif not data_path.is_file():
        raise ParadecError(f"--data: no file '{data}'")
    rows = [r for r in read_data(data_path) if r["response_ids"]]
    if not rows:
        raise ParadecError("no training data")
    n_tok = sum(len(r["response_ids"]) for r in rows)
    log(f"training on {len(rows)} continuations ({n_tok} tokens)")

    model = BlockDiffusionAR(loaded.model, acfg)  # in place: with the gate off it is still the base model
    meta = {
        "train": {**asdict(cfg), "command": _command(base, seed, steps, batch, lr, rank, block_size, min_block, max_block,
                                                     max_len, threads, max_new, samples, data_minutes, max_prompts)
                  + f" --views {views}" + (f" --train-minutes {train_minutes}" if train_minutes else "")
                  + f" --gen-batch {gen_batch} --eval-prompts {eval_prompts} --eval-gen {eval_gen}"
                  + (f" --device {device}" if device != "cpu" else "")
                  + (f" --filter-prompts {filter_prompts}" if filter_prompts else ""),
                  "data": {"continuations": len(rows), "tokens": n_tok, "by_mode": _count(rows, "mode"),
                           "by_source": _count(rows, "source"), "max_new": max_new, "samples": samples,
                           "split": "prompt i of each source held out when i % 4 == 0 (never trained on)"}},
    }
    t0 = time.time()
    summary = train(model, rows, cfg, log=log, save_every=save_every,
                    save=lambda step: (model.save(d, {**meta, "checkpoint_step": step}), log(f"saved checkpoint at step {step}")),
                    minutes=train_minutes)
    meta["train"].update(summary)
    model.save(d, meta)
    log(f"trained in {time.time() - t0:.0f}s; saved {d}")
    if eval_prompts:
        from ..convert.evaluate import quality

        meta["quality"] = quality(model, loaded.tokenizer, split(prompts, heldout=True), cfg, eval_prompts, eval_gen,
                                  data_path.with_name("heldout.jsonl"), log=log)
        model.save(d, meta)
        log(json.dumps(meta["quality"], indent=1))
    if filter_prompts:
        meta["filter"] = train_converted_filter(model, loaded.tokenizer, train_prompts, filter_prompts, eval_gen, d,
                                                seed=seed, log=log)
        model.save(d, meta)


def train_converted_filter(model, tokenizer, prompts, n: int, gen_length: int, d: Path, seed: int = 0, log=print) -> dict:
    """Learn2PD filter for a converted model: features of every step of one-token-per-step runs on
    ``n`` training prompts, labelled by whether the step's prediction is the final token there."""
    import torch

    from ..distill.data import chat_ids
    from ..convert.evaluate import pick
    from ..dllm.converted_dlm import ConvertedDLM
    from ..dllm.policies.learned import collect, save_filter, train_filter

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


def _command(base, seed, steps, batch, lr, rank, bs, mn, mx, max_len, threads, max_new, samples, minutes, max_prompts) -> str:
    parts = [f"paradec convert --base {base} --seed {seed} --steps {steps} --batch {batch} --lr {lr} --rank {rank}",
             f"--block-size {bs} --min-block {mn} --max-block {mx} --max-len {max_len} --threads {threads}",
             f"--max-new {max_new} --samples {samples}"]
    if minutes:
        parts.append(f"--data-minutes {minutes}")
    if max_prompts:
        parts.append(f"--max-prompts {max_prompts}")
    return " ".join(parts)
