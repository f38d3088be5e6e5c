"""Sampling parameters and the one function that turns logits into the distribution we sample.

Plain decoding and every verifier go through ``target_probs``, so "lossless" means exactly:
tokens follow the distribution this function returns from the target's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ParadecError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ParadecError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ParadecError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ParadecError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self, device: torch.device | str = "cpu", stream: int = 0) -> torch.Generator:
        """A generator for this request. Different ``stream``s give independent random streams
        from one seed (the drafter's samples must be independent of the verifier's coins)."""
        g = torch.Generator(device=device)
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed((int(self.seed) + stream * 0x9E3779B97F4A7C15) % (1 << 63))
        return g


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [..., V] -> probabilities [..., V] (float32) after temperature, top-k, top-p.

    Greedy (temperature 0) gives the one-hot of the argmax, so greedy is the limit of sampling
    and the sampling verifier reproduces greedy decoding exactly.
    """
    logits = logits.float()
    if params.greedy:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = before >= params.top_p
        drop_sorted[..., 0] = False  # the most likely token always stays (a top_p that rounds to 0 in float32)
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)
