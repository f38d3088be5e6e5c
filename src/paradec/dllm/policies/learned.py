"""Learn2PD-style learned commit filter: a tiny MLP that predicts, for each masked position, whether
the model's current prediction is already the token one-token-per-step decoding ends with there.
It is trained on the model's own one-token-per-step trajectories (``train_filter``); at decode time
every candidate whose predicted probability of being final is >= ``tau`` is committed. End-of-text
prediction is the loop's ``eos_stop`` (an EOS committed with everything before it decoded ends the
sequence, the rest is filled with EOS instead of being decoded)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .commit import Commit, CommitPolicy, StepContext, TopK, _check_tau

N_FEATURES = 8


def features(ctx: StepContext) -> torch.Tensor:
    """[B, G, F]: confidence, top-2 margin, entropy, offset in the block, progress, predicts EOS,
    distance to the nearest decoded position, share of the block still masked."""
    B, G = ctx.conf.shape
    pos = torch.arange(G, device=ctx.conf.device)[None].expand(B, G)
    decoded = ~ctx.masked
    d = (pos[:, :, None] - pos[:, None, :]).abs().to(ctx.conf.dtype)
    d = torch.where(decoded[:, None, :], d, torch.full_like(d, G)).min(2).values
    width = (ctx.block_hi - ctx.block_lo).clamp(min=1).to(ctx.conf.dtype)
    f = torch.stack(
        [
            ctx.conf,
            ctx.margin,
            ctx.entropy,
            (pos - ctx.block_lo[:, None]).to(ctx.conf.dtype) / G,
            ctx.progress[:, None].expand(B, G),
            (ctx.pred == ctx.eos_id).to(ctx.conf.dtype),
            d / G,
            (ctx.cand.sum(1).to(ctx.conf.dtype) / width)[:, None].expand(B, G),
        ],
        -1,
    )
    return f.to(torch.float32)


class FilterMLP(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)[..., 0]


class Learned(CommitPolicy):
    name = "learn2pd"

    def __init__(self, filt: FilterMLP, tau: float = 0.9) -> None:
        self.filt, self.tau = filt.eval(), _check_tau("learn2pd", tau)

    @torch.no_grad()
    def select(self, ctx):
        f = features(ctx)
        if next(self.filt.parameters()).device != f.device:
            self.filt.to(f.device)
        p = torch.sigmoid(self.filt(f))
        return Commit(ctx.cand & (p >= self.tau))


class Recorder(TopK):
    """One token per step, recording every step's features and predictions for training."""

    def __init__(self) -> None:
        super().__init__(k=1)
        self.log: list[tuple] = []

    def select(self, ctx):
        self.log.append((ctx.rows.clone(), features(ctx), ctx.pred.clone(), ctx.masked.clone()))
        return super().select(ctx)


def load_filter(path) -> FilterMLP:
    from safetensors.torch import load_file

    f = FilterMLP()
    f.load_state_dict(load_file(str(path)))
    return f.eval()


def filter_of(model) -> FilterMLP | None:
    """The Learn2PD filter shipped beside a model loaded from a directory (filter.safetensors), or None."""
    from ..protocol import Stored

    d = model.directory if isinstance(model, Stored) else None
    if d is not None and (Path(d) / "filter.safetensors").is_file():
        return load_filter(Path(d) / "filter.safetensors")
    return None
