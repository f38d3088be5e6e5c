"""Training a draft head on the target's hidden states (data.py's Features).

Each example is a window of the target's own continuation starting at row r. The head steps
from the true feature f_r and the true next token, then from its *own* prediction at every
further depth, as it will when drafting (unrolled ``unroll`` times, so it learns to correct its
own drift). At depth d it is scored against the target at row r + d:

- soft cross-entropy between its next-token distribution and the target's, both over the kept
  tokens (the target's distribution is lm_head(f_{r+d}) cut to them);
- smooth L1 between its feature and f_{r+d} (EAGLE's feature regression), weighted by ``reg``.

Depth d's loss is weighted ``decay ** (d - 1)``. Quality is measured on held-out continuations:
per depth, how often the head's top token is the target's (the token the greedy target chose),
with the head running on its own predictions as in drafting, and the mean accepted run of a
chain draft (leading depths all right) plus the bonus token.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import Features
from .model import DraftHead
from ..options import option


@dataclass(frozen=True)
class TrainConfig:
    steps: int = option(1000, "--steps")
    batch: int = option(512, "--batch", help="Windows per step.")
    lr: float = option(1e-3, "--lr")
    weight_decay: float = 0.0
    warmup: int = 50
    unroll: int = option(3, "--unroll", help="Depths trained per window (the head steps on its own predictions).")
    decay: float = 0.8  # depth weight ratio
    reg: float = option(1.0, "--reg", help="Weight of the feature regression.")
    seed: int = option(0, "--seed")
    minutes: float = option(0.0, "--minutes", help="Training time budget (0 = no limit); the schedule follows it.")
    bf16: bool = option(False, "--bf16/--no-bf16", help="Autocast the products to bfloat16 while training.")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.unroll < 1:
            raise ValueError("steps, batch and unroll must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be positive")


def _losses(head: DraftHead, data: Features, rows: torch.Tensor, unroll: int, reg: float):
    """Per-depth mean losses and top-1 agreement for windows starting at ``rows``."""
    dev = head.lm_trim.device
    dtype = head.lm_trim.dtype
    g = data.feats[rows].to(dev, dtype)  # [b, H]
    left = data.left[rows]  # [b]
    out = []
    for d in range(1, unroll + 1):
        valid = (left >= d).to(dev)  # [b] the window reaches row r + d
        at = (rows + d).clamp(max=len(data) - 1)
        g = head.step(g, data.tokens[at].to(dev))  # [b, H] ~ f_{r+d}
        target = data.feats[at].to(dev, dtype)  # [b, H]
        s_logits = head.logits(g).float()  # [b, K]
        with torch.no_grad():
            t_prob = head.logits(target).float().softmax(-1)  # [b, K]
        ce = -(t_prob * s_logits.log_softmax(-1)).sum(-1)  # [b]
        l1 = F.smooth_l1_loss(g.float(), target.float(), reduction="none").mean(-1)  # [b]
        n = valid.sum().clamp(min=1)
        loss = ((ce + reg * l1) * valid).sum() / n
        agree = ((s_logits.argmax(-1) == t_prob.argmax(-1)) & valid).sum() / n
        out.append((loss, agree))
    return out


def train(head: DraftHead, data: Features, cfg: TrainConfig, log=print, progress=None) -> list[dict]:
    """Train ``head`` in place on ``data``; returns the logged history (one dict per log line)."""
    g = torch.Generator().manual_seed(cfg.seed)
    starts = (data.left >= 1).nonzero()[:, 0]  # windows with at least one depth
    if not len(starts):
        raise ValueError("no training windows (continuations of one token only)")
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0, history = time.time(), []
    total = cfg.steps
    dev_type = head.lm_trim.device.type
    for step in range(cfg.steps):
        elapsed = time.time() - t0
        if cfg.minutes and step > 0:
            if elapsed >= 60 * cfg.minutes:
                log(f"train: time budget of {cfg.minutes} min reached after {step} steps")
                break
            # the schedule follows the time budget: the steps it allows at the speed so far
            total = min(cfg.steps, max(step + 1, int(step * 60 * cfg.minutes / elapsed)))
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr
        rows = starts[torch.randint(len(starts), (cfg.batch,), generator=g)]
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=cfg.bf16):
            parts = _losses(head, data, rows, cfg.unroll, cfg.reg)
            loss = sum(cfg.decay ** i * p[0] for i, p in enumerate(parts))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if progress is not None:
            progress(step + 1, total)
        if step % 50 == 0 or step == cfg.steps - 1:
            rec = {"step": step, "loss": float(loss.detach()), "lr": lr, "agree": [round(float(p[1].detach()), 4) for p in parts],
                   "seconds": round(time.time() - t0, 1)}
            history.append(rec)
            log(f"train: step {step} loss {rec['loss']:.4f} top-1 by depth {rec['agree']} ({rec['seconds']}s)")
    return history


@torch.no_grad()
def evaluate(head: DraftHead, data: Features, depth: int = 6, batch: int = 2048) -> dict:
    """Held-out quality of chain drafting from each row: per depth, how often the head's top token
    is the token the target produced (the head running on its own features and on the tokens of
    the continuation), and the mean accepted tokens per forward of a ``depth``-long chain draft
    (its right leading depths plus the bonus), over windows with ``depth`` rows ahead."""
    dev, dtype = head.lm_trim.device, head.lm_trim.dtype
    ids = head.vocab_ids.to(dev)
    rows_all = (data.left >= depth + 1).nonzero()[:, 0]
    right = torch.zeros(depth)
    runs = torch.zeros(0)
    for lo in range(0, len(rows_all), batch):
        rows = rows_all[lo : lo + batch]
        g = data.feats[rows].to(dev, dtype)
        ok = torch.ones(len(rows), dtype=torch.bool)
        run = torch.zeros(len(rows))
        for d in range(1, depth + 1):
            g = head.step(g, data.tokens[rows + d].to(dev))  # ~ f_{r+d}: predicts token r + d + 1
            guess = ids[head.logits(g).float().argmax(-1)].cpu()
            hit = guess == data.tokens[rows + d + 1]
            right[d - 1] += hit.sum()
            ok &= hit
            run += ok
        runs = torch.cat([runs, run])
    n = max(len(rows_all), 1)
    return {
        "windows": int(len(rows_all)),
        "top1_by_depth": [round(float(x) / n, 4) for x in right],
        "chain_accepted_per_forward": round(float(runs.mean()) + 1.0, 3) if len(runs) else 1.0,
    }


def coverage(vocab_ids: torch.Tensor, data: Features) -> float:
    """Share of the continuation tokens that the kept vocabulary can draft."""
    return float(torch.isin(data.tokens, vocab_ids).float().mean()) if len(data) else 0.0
