"""Commit rules: which masked positions of the current block get their predicted token this step.

Every rule sees a StepContext (tensors over the active sequences' answer regions) and returns a
Commit: a bool tensor [B, G] of positions to commit, and optionally the tokens to commit there
(default: the predictions). The loop always commits at least one token per sequence (the most
confident candidate) so decoding progresses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import ParadecError


@dataclass(frozen=True)
class Commit:
    """A commit rule's choice for one step."""

    mask: torch.Tensor  # [B, G] bool: positions to commit
    tokens: torch.Tensor | None = None  # [B, G] tokens to commit there (None: ctx.pred)


@dataclass
class StepContext:
    pred: torch.Tensor  # [B, G] predicted token (argmax, or sampled)
    conf: torch.Tensor  # [B, G] its probability (after EOS early rejection)
    probs: torch.Tensor  # [B, G, V]
    cand: torch.Tensor  # [B, G] bool: masked and inside the current block
    masked: torch.Tensor  # [B, G] bool: masked anywhere in the answer region
    block_lo: torch.Tensor  # [B]
    block_hi: torch.Tensor  # [B]
    block_step: torch.Tensor  # [B] steps taken so far in the current block
    progress: torch.Tensor  # [B] fraction of the answer region decoded
    rows: torch.Tensor  # [B] row index within this decode call (for per-row state)
    gens: list  # per-row torch.Generator
    eos_id: int = 3
    extra: dict = field(default_factory=dict)

    @property
    def top2(self) -> torch.Tensor:
        if "top2" not in self.extra:
            self.extra["top2"] = self.probs.topk(2, dim=-1).values
        return self.extra["top2"]

    @property
    def margin(self) -> torch.Tensor:
        t = self.top2
        return t[..., 0] - t[..., 1]

    @property
    def entropy(self) -> torch.Tensor:
        p = self.probs
        return -(p * p.clamp_min(1e-30).log()).sum(-1)


def _check_tau(name: str, tau: float) -> float:
    tau = float(tau)
    if not 0.0 < tau <= 1.0:
        raise ParadecError(f"{name}: threshold must be in (0, 1], got {tau}")
    return tau


def ranked(score: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Rank [B, G] of each candidate by score, highest first, ties to the lower position."""
    s = score.masked_fill(~cand, float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
    return rank


def topk_mask(score: torch.Tensor, cand: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return cand & (ranked(score, cand) < k[:, None])


class CommitPolicy:
    name = "policy"

    def reset(self, n_rows: int, max_new_tokens: int, vocab: int, device) -> None:
        """Called once per decode call, before the first step."""

    def select(self, ctx: StepContext) -> Commit:
        raise NotImplementedError


class TopK(CommitPolicy):
    """LLaDA low-confidence remasking: commit the k most confident candidates. ``k`` fixed, or
    from ``steps`` per block (the remaining masks spread evenly over the remaining steps), or
    ``schedule="ascending"`` (1, 2, 4, ... tokens per step: the ascending step size)."""

    def __init__(self, k: int | None = None, steps: int | None = None, schedule: str = "uniform") -> None:
        if schedule not in ("uniform", "ascending"):
            raise ParadecError(f"unknown step schedule '{schedule}' (uniform or ascending)")
        if k is not None and int(k) < 1:
            raise ParadecError(f"k must be >= 1, got {k}")
        if steps is not None and int(steps) < 1:
            raise ParadecError(f"steps must be >= 1, got {steps}")
        self.k, self.steps, self.schedule = (int(k) if k else None), (int(steps) if steps else None), schedule
        self.name = "one" if self.k == 1 else ("ascending" if schedule == "ascending" else "topk")

    def count(self, ctx: StepContext) -> torch.Tensor:
        remaining = ctx.cand.sum(1)
        if self.schedule == "ascending":
            return torch.minimum(remaining, 2 ** ctx.block_step.clamp(max=30))
        if self.k:
            return torch.full_like(remaining, self.k)
        left = (self.steps - ctx.block_step).clamp(min=1)
        return (remaining + left - 1) // left

    def select(self, ctx):
        return Commit(topk_mask(ctx.conf, ctx.cand, self.count(ctx)))


class RandomK(TopK):
    """Random remasking: commit k random candidates (per-sequence generator, so batch-invariant)."""

    def __init__(self, k: int | None = None, steps: int | None = None, schedule: str = "uniform") -> None:
        super().__init__(k, steps, schedule)
        self.name = "random"

    def select(self, ctx):
        score = torch.stack([torch.rand(ctx.cand.shape[1], generator=g) for g in ctx.gens]).to(ctx.conf)
        return Commit(topk_mask(score, ctx.cand, self.count(ctx)))


class Threshold(CommitPolicy):
    """Fast-dLLM confidence threshold: commit every candidate whose probability >= tau."""

    name = "threshold"

    def __init__(self, tau: float = 0.9) -> None:
        self.tau = _check_tau("threshold", tau)

    def select(self, ctx):
        return Commit(ctx.cand & (ctx.conf >= self.tau))


class Factor(CommitPolicy):
    """Fast-dLLM factor rule: with candidate confidences sorted c_1 >= c_2 >= ..., commit the
    largest n with (n + 1) * (1 - c_n) < f."""

    name = "factor"

    def __init__(self, f: float = 1.0) -> None:
        if not float(f) > 0:
            raise ParadecError(f"factor must be > 0, got {f}")
        self.f = float(f)

    def select(self, ctx):
        rank = ranked(ctx.conf, ctx.cand)  # 0-based
        ok = ctx.cand & ((rank + 2).to(ctx.conf.dtype) * (1 - ctx.conf) < self.f)
        # the largest n whose n-th confidence passes; all higher-ranked ones are committed too
        n = torch.where(ok, rank + 1, torch.zeros_like(rank)).max(1).values
        return Commit(ctx.cand & (rank < n[:, None]))


class Margin(CommitPolicy):
    """Commit candidates whose top-1 minus top-2 probability >= tau."""

    name = "margin"

    def __init__(self, tau: float = 0.8) -> None:
        self.tau = _check_tau("margin", tau)

    def select(self, ctx):
        return Commit(ctx.cand & (ctx.margin >= self.tau))


class Entropy(CommitPolicy):
    """Commit candidates whose predictive entropy (nats) <= tau."""

    name = "entropy"

    def __init__(self, tau: float = 0.3) -> None:
        if not float(tau) > 0:
            raise ParadecError(f"entropy threshold must be > 0, got {tau}")
        self.tau = float(tau)

    def select(self, ctx):
        return Commit(ctx.cand & (ctx.entropy <= self.tau))


class Prophet(CommitPolicy):
    """Prophet early commit: decode with ``base`` until the mean top-1/top-2 log-probability gap
    over the still-masked answer positions clears a threshold that falls as decoding progresses;
    then go all-in and commit every remaining position at once."""

    name = "prophet"

    def __init__(self, base: CommitPolicy | None = None, gaps=((0.33, 7.5), (0.67, 5.0), (1.01, 2.5))) -> None:
        self.base = base or TopK(k=1)
        self.gaps = tuple((float(p), float(g)) for p, g in gaps)

    def reset(self, *a):
        self.base.reset(*a)

    def select(self, ctx):
        t = ctx.top2.clamp_min(1e-30).log()
        gap = (t[..., 0] - t[..., 1]).masked_fill(~ctx.masked, 0.0)
        mean_gap = gap.sum(1) / ctx.masked.sum(1).clamp(min=1)
        need = torch.full_like(mean_gap, self.gaps[-1][1])
        for p, g in reversed(self.gaps):
            need = torch.where(ctx.progress < p, torch.full_like(need, g), need)
        all_in = mean_gap >= need
        return Commit(torch.where(all_in[:, None], ctx.masked, self.base.select(ctx).mask))


class LocalLeap(CommitPolicy):
    """LocalLeap: candidates with probability >= ``anchor`` are anchors; within ``radius``
    positions of an anchor a candidate commits at a relaxed threshold that rises linearly from
    ``local`` (adjacent) towards ``anchor`` (farthest): determinism spreads locally and decays."""

    name = "localleap"

    def __init__(self, anchor: float = 0.9, local: float = 0.6, radius: int = 3) -> None:
        self.anchor, self.local, self.radius = _check_tau("anchor", anchor), _check_tau("local", local), int(radius)

    def select(self, ctx):
        anchors = ctx.cand & (ctx.conf >= self.anchor)
        G = ctx.cand.shape[1]
        pos = torch.arange(G, device=ctx.conf.device)
        d = (pos[None, :, None] - pos[None, None, :]).abs()  # [1, G, G]
        big = torch.full_like(d, G + 1)
        dist = torch.where(anchors[:, None, :], d, big).min(2).values  # [B, G] distance to nearest anchor
        need = self.local + (self.anchor - self.local) * (dist - 1).clamp(min=0).to(ctx.conf.dtype) / max(self.radius, 1)
        near = (dist >= 1) & (dist <= self.radius)
        return Commit(anchors | (ctx.cand & near & (ctx.conf >= need)))


class Credit(CommitPolicy):
    """CreditDecoding: each position accumulates credit for the tokens it kept predicting
    (decayed by ``gamma``); the current log-probabilities are fused with ``alpha * log(1 + credit)``
    and a threshold on the fused probability decides the commit (with the fused argmax)."""

    name = "credit"

    def __init__(self, tau: float = 0.9, gamma: float = 0.7, alpha: float = 1.0, beta: float = 0.5) -> None:
        self.tau = _check_tau("credit", tau)
        self.gamma, self.alpha, self.beta = float(gamma), float(alpha), float(beta)
        self.credit = None

    def reset(self, n_rows, max_new_tokens, vocab, device):
        self.credit = None
        self._shape = (n_rows, max_new_tokens, vocab, device)

    def select(self, ctx):
        if self.credit is None:
            n, G, V, dev = self._shape
            self.credit = torch.zeros(n, G, V, dtype=ctx.probs.dtype, device=dev)
        c = self.credit[ctx.rows] * self.gamma
        c.scatter_add_(2, ctx.pred[..., None], (ctx.conf ** self.beta)[..., None] * ctx.masked[..., None])
        self.credit[ctx.rows] = c
        fused = torch.log_softmax(ctx.probs.clamp_min(1e-30).log() + self.alpha * torch.log1p(c), dim=-1)
        fconf, fpred = fused.max(-1)
        return Commit(ctx.cand & (fconf.exp() >= self.tau), fpred)
