"""Convert an AR model into a block-diffusion model with a short LoRA fine-tune (``paradec convert``).

Recipe (see dllm/converted.py for the model):
1. data: the AR model's own continuations of the training split of the offline prompts
   (distill/data.py), so the drafter learns what its target would write;
2. each training sequence is prompt + continuation. The continuation is cut into consecutive
   blocks of random size in [min_block, max_block]; each block is either fully masked (with
   probability ``full_mask``: how a one-pass draft sees it) or masked at random with a ratio
   r ~ U(0.1, 1). ``views`` different cuts of the same sequence share one clean forward;
3. the clean sequence runs once through the frozen base (no gradient: its keys and values are
   exactly the base model's); every block then runs in one batched forward with the adapter on,
   attending to the clean tokens before its start and to its own block;
4. loss: cross-entropy of the masked tokens, token j of a block predicted at block position
   j - 1 (the block's first token is the base model's own prediction and is not trained).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..dllm.converted import AdapterConfig, BlockDiffusionAR
from ..options import option


@dataclass(frozen=True)
class ConvertConfig:
    base: str = option("smollm2-135m", "--base", "-m", help="The AR model to convert (a name paradec loads).")
    seed: int = option(0, "--seed")
    steps: int = option(600, "--steps", help="Fine-tuning steps.")
    batch: int = option(4, "--batch", help="Sequences per step.")
    views: int = option(2, "--views", help="Block cuts per sequence per step (they share one clean pass).")
    lr: float = option(6e-4, "--lr")
    warmup: int = 30
    rank: int = option(32, "--rank", help="LoRA rank.")
    alpha: float = 64.0
    block_size: int = option(8, "--block-size", help="Default block for dLLM decoding and deer drafts.")
    min_block: int = option(4, "--min-block")
    max_block: int = option(16, "--max-block")
    full_mask: float = 0.5  # probability that a block is fully masked
    max_len: int = option(384, "--max-len", help="Longest training sequence (the prompt is cut from the left).")
    threads: int = option(2, "--threads", help="torch threads (CPU).")

    def adapter(self) -> AdapterConfig:
        return AdapterConfig(base=self.base, rank=self.rank, alpha=self.alpha, block_size=self.block_size,
                             min_block=self.min_block, max_block=self.max_block)


@dataclass
class Batch:
    clean: torch.Tensor  # [B, L] long, right-padded
    noisy: torch.Tensor  # [B, R] long: the true tokens of every block position
    is_mask: torch.Tensor  # [B, R] bool
    pos: torch.Tensor  # [B, R] long: absolute positions
    start: torch.Tensor  # [B, R] long: absolute position where each token's block starts
    block: torch.Tensor  # [B, R] long: block id (unique within a row)
    valid: torch.Tensor  # [B, R] bool


def _trim(prompt: list[int], response: list[int], max_len: int) -> tuple[list[int], list[int]]:
    response = response[: max(8, max_len - 16)]
    keep = max(1, max_len - len(response))
    return prompt[-keep:], response


def make_batch(rows: list[dict], cfg: ConvertConfig, rng: random.Random, blocks: list[int] | None = None,
               all_masked: bool = False) -> Batch:
    """Cut each row's continuation into blocks and mask them. ``blocks``: fixed block size(s)
    (evaluation); ``all_masked``: every block position masked."""
    seqs, items = [], []
    for row in rows:
        p, r = _trim(row["prompt_ids"], row["response_ids"], cfg.max_len)
        seq = p + r
        seqs.append(seq)
        P, L = len(p), len(seq)
        toks = []
        bid = 0
        for view in range(1 if blocks else cfg.views):
            s = P
            while s < L:
                b = blocks[0] if blocks else rng.randint(cfg.min_block, cfg.max_block)
                e = min(s + b, L)
                full = all_masked or rng.random() < cfg.full_mask
                ratio = 1.0 if full else rng.uniform(0.1, 1.0)
                for q in range(s, e):
                    toks.append((seq[q], full or rng.random() < ratio, q, s, bid))
                s, bid = e, bid + 1
        items.append(toks)
    B, L, R = len(rows), max(len(s) for s in seqs), max(len(t) for t in items)
    clean = torch.zeros(B, L, dtype=torch.long)
    noisy, pos, start, block = (torch.zeros(B, R, dtype=torch.long) for _ in range(4))
    is_mask, valid = torch.zeros(B, R, dtype=torch.bool), torch.zeros(B, R, dtype=torch.bool)
    for b, (seq, toks) in enumerate(zip(seqs, items)):
        clean[b, : len(seq)] = torch.tensor(seq)
        if toks:
            t = torch.tensor([[x[0], int(x[1]), x[2], x[3], x[4]] for x in toks])
            n = len(toks)
            noisy[b, :n], is_mask[b, :n], pos[b, :n], start[b, :n], block[b, :n] = t[:, 0], t[:, 1].bool(), t[:, 2], t[:, 3], t[:, 4]
            valid[b, :n] = True
    return Batch(clean, noisy, is_mask, pos, start, block, valid)


def block_hidden(model: BlockDiffusionAR, batch: Batch):
    """Clean pass (no gradient) then every block in one pass. Returns (block hidden states
    [B, R, D], clean hidden states [B, L, D])."""
    from transformers import DynamicCache

    B, L = batch.clean.shape
    R = batch.noisy.shape[1]
    cache = DynamicCache()
    with torch.no_grad():
        causal = torch.ones(L, L, dtype=torch.bool).tril_()[None].expand(B, -1, -1)  # [B, L, L]
        pos = torch.arange(L)[None].expand(B, -1)
        off = torch.zeros(B, L, dtype=torch.bool)
        clean_h = model.run(batch.clean, off, pos, causal, off, cache, hidden_only=True)  # [B, L, D]
    kv_clean = torch.arange(L)[None, None, :] < batch.start[:, :, None]  # [B, R, L]
    same = (batch.block[:, :, None] == batch.block[:, None, :]) & batch.valid[:, None, :]  # [B, R, R]
    attn = torch.cat([kv_clean, same], dim=2)  # [B, R, L + R]
    attn[~batch.valid] = False
    attn[~batch.valid, 0] = True  # padding rows look at one key (no empty softmax)
    h = model.run(batch.noisy, batch.is_mask & batch.valid, batch.pos, attn, batch.valid, cache, hidden_only=True)
    return h, clean_h


def targets(batch: Batch):
    """Which block positions are trained: position r predicts r + 1 when r + 1 is in the same
    block and masked. Returns (sel [B, R] bool, target tokens [N], offset in block [N])."""
    nxt_same = torch.zeros_like(batch.valid)
    nxt_same[:, :-1] = batch.valid[:, 1:] & (batch.block[:, 1:] == batch.block[:, :-1]) & batch.is_mask[:, 1:]
    sel = nxt_same & batch.valid
    tgt = batch.noisy[:, 1:][sel[:, :-1]]
    offset = (batch.pos[:, 1:] - batch.start[:, 1:])[sel[:, :-1]]
    return sel, tgt, offset


def loss_fn(model: BlockDiffusionAR, batch: Batch):
    h, _ = block_hidden(model, batch)
    sel, tgt, offset = targets(batch)
    logits = model.hf.lm_head(h[sel])  # [N, V]
    loss = F.cross_entropy(logits.float(), tgt.to(logits.device))
    acc = (logits.argmax(-1).cpu() == tgt).float().mean().item()
    return loss, acc


def train(model: BlockDiffusionAR, rows: list[dict], cfg: ConvertConfig, log=print, save_every: int = 0, save=None,
          minutes: float = 0.0) -> dict:
    """LoRA fine-tune on ``rows`` (prompt_ids / response_ids). ``minutes`` > 0: stop after that
    long (the summary records the steps done). Returns a summary."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    params = model.trainable()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    # cosine decay over whichever runs out first: the steps or the time budget
    progress = [0.0]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress[0]))))
    )
    order: list[int] = []
    t0, run_loss, run_acc = time.time(), 0.0, 0.0
    model.hf.train()
    done = 0
    for step in range(1, cfg.steps + 1):
        if minutes and time.time() - t0 > 60 * minutes:
            log(f"time budget of {minutes} min reached after {done} steps")
            break
        if len(order) < cfg.batch:
            more = list(range(len(rows)))
            rng.shuffle(more)
            order += more
        picked = [rows[i] for i in order[: cfg.batch]]
        del order[: cfg.batch]
        batch = make_batch(picked, cfg, rng)
        loss, acc = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        progress[0] = max(step / cfg.steps, (time.time() - t0) / (60 * minutes) if minutes else 0.0)
        sched.step()
        a = 0.05 if step > 1 else 1.0
        run_loss, run_acc = (1 - a) * run_loss + a * loss.item(), (1 - a) * run_acc + a * acc
        if step % 10 == 0 or step == cfg.steps:
            log(f"step {step:4d}  loss {run_loss:.3f}  masked acc {100 * run_acc:.1f}%  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:.0f}s")
        done = step
        if save is not None and save_every and step % save_every == 0 and step < cfg.steps:
            save(step)
    model.hf.eval()
    for p in params:
        p.requires_grad_(False)
    return {"steps_done": done, "seconds": round(time.time() - t0), "final_loss": round(run_loss, 4),
            "final_masked_acc": round(run_acc, 4)}


@torch.no_grad()
def masked_accuracy(model: BlockDiffusionAR, rows: list[dict], block: int, cfg: ConvertConfig, batch: int = 4) -> dict:
    """Fully masked blocks of ``block`` tokens over each held-out continuation: how often the
    argmax at block position j equals the true token j (j = 0 is the clean token's AR
    prediction). Returns {"per_position": [...], "n": [...], "mean": float}."""
    hits, counts = torch.zeros(block), torch.zeros(block)
    rng = random.Random(0)
    for i in range(0, len(rows), batch):
        b = make_batch(rows[i : i + batch], cfg, rng, blocks=[block], all_masked=True)
        h, clean_h = block_hidden(model, b)
        sel, tgt, offset = targets(b)
        pred = model.hf.lm_head(h[sel]).argmax(-1).cpu()
        for j in range(1, block):
            m = offset == j
            hits[j] += (pred[m] == tgt[m]).sum()
            counts[j] += m.sum()
        # position 0: the clean token before each block start predicts it
        first = b.valid & (b.pos == b.start)  # [B, R]
        rows_b, cols = first.nonzero(as_tuple=True)
        prev = b.pos[rows_b, cols] - 1
        pred0 = model.hf.lm_head(clean_h[rows_b, prev]).argmax(-1).cpu()
        hits[0] += (pred0 == b.noisy[rows_b, cols]).sum()
        counts[0] += len(rows_b)
    per = (hits / counts.clamp(min=1)).tolist()
    return {"block": block, "per_position": [round(x, 4) for x in per], "n": [int(x) for x in counts],
            "mean": round(float(hits.sum() / counts.sum().clamp(min=1)), 4)}


def config_dict(cfg: ConvertConfig) -> dict:
    return asdict(cfg)
