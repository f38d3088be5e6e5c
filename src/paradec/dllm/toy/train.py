"""Train the shipped tiny masked diffusion LM and its AR reference on the synthetic tasks, on CPU,
from a seed (``paradec dllm train``).

Masked diffusion (LLaDA-style SFT): the prompt is never masked; each answer position (answer,
then EOS up to the generation length) is masked with probability t ~ U(0, 1) drawn per sequence,
and the loss is cross-entropy on the masked positions. The AR reference has the same size and
code with causal attention, trained on next-token prediction over the same answers.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import TinyConfig, TinyTransformer
from ...options import option
from .tasks import EOS, GEN_LENGTH, MASK, PAD, SEP, TASKS, VOCAB_SIZE, make


@dataclass
class TrainConfig:
    kind: str = "dllm"  # dllm | ar
    seed: int = option(0, "--seed")
    steps: int = option(1500, "--steps", min=1)
    batch: int = 128
    lr: float = 2e-3
    warmup: int = 100
    d_model: int = 128
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 512
    threads: int = option(1, "--threads", min=1, help="torch threads (CPU).")
    seg_positions: int = 24
    tasks: tuple[str, ...] = tuple(TASKS)
    checkpoint_every: int = 0  # also save every n steps (for long runs); 0 = only at the end


def batch_tensors(insts, max_new_tokens: int = GEN_LENGTH):
    """Left-padded prompts followed by the answer region (answer + EOS padding).
    Returns ids [B, L], key_mask [B, L], gen_start (int: the answer region is ids[:, gen_start:])."""
    P = max(len(i.prompt_ids) for i in insts)
    B = len(insts)
    ids = torch.full((B, P + max_new_tokens), PAD, dtype=torch.long)
    km = torch.zeros(B, P + max_new_tokens, dtype=torch.bool)
    for b, inst in enumerate(insts):
        p = inst.prompt_ids
        ids[b, P - len(p) : P] = torch.tensor(p)
        km[b, P - len(p) :] = True
        ans = inst.answer_ids[: max_new_tokens - 1] + [EOS]
        ids[b, P : P + len(ans)] = torch.tensor(ans)
        ids[b, P + len(ans) :] = EOS
    return ids, km, P


def _loss(model, kind, ids, km, P, gen: torch.Generator):
    B, L = ids.shape
    target = ids[:, P:]
    if kind == "dllm":
        t = torch.rand(B, 1, generator=gen)
        masked = torch.rand(B, L - P, generator=gen) < t
        masked[torch.arange(B), torch.randint(0, L - P, (B,), generator=gen)] = True
        x = ids.clone()
        x[:, P:][masked] = MASK
        logits, _ = model(x, km)
        return F.cross_entropy(logits[:, P:][masked], target[masked])
    # AR: position j predicts token j+1; loss on the answer and its first EOS
    logits, _ = model(ids, km)
    pred = logits[:, P - 1 : L - 1]
    first_eos = (target == EOS).float().argmax(1)
    keep = torch.arange(L - P)[None] <= first_eos[:, None]
    return F.cross_entropy(pred[keep], target[keep])


def train(cfg: TrainConfig, out_dir: str | None = None, log=print) -> TinyTransformer:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    mc = TinyConfig(
        vocab_size=VOCAB_SIZE, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_ff=cfg.d_ff,
        attention="bidirectional" if cfg.kind == "dllm" else "causal", mask_id=MASK if cfg.kind == "dllm" else None,
        sep_id=SEP, seg_positions=cfg.seg_positions,
    )
    model = TinyTransformer(mc)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    )
    log(f"training {cfg.kind}: {model.n_params() / 1e6:.2f}M params, {cfg.steps} steps x {cfg.batch}, seed {cfg.seed}")
    t0, run = time.time(), 0.0
    model.train()
    for step in range(1, cfg.steps + 1):
        insts = [make(rng.choice(cfg.tasks), rng) for _ in range(cfg.batch)]
        ids, km, P = batch_tensors(insts)
        loss = _loss(model, cfg.kind, ids, km, P, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run = loss.item() if step == 1 else 0.98 * run + 0.02 * loss.item()
        if step % 100 == 0 or step == cfg.steps:
            log(f"step {step:5d}  loss {run:.4f}  {time.time() - t0:.0f}s")
        if out_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            _save(model, cfg, out_dir, t0, step)
    model.eval()
    if out_dir:
        _save(model, cfg, out_dir, t0, cfg.steps)
    return model


def _save(model, cfg: TrainConfig, out_dir: str, t0: float, step: int) -> None:
    from dataclasses import asdict

    meta = {**asdict(cfg), "tasks": list(cfg.tasks), "seconds": round(time.time() - t0, 1), "step": step}
    model.save(out_dir, {"train": meta})
