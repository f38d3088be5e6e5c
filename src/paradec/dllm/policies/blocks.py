"""Block schedules: where the current block of each sequence ends.

The loop starts a new block at the first still-masked answer position whenever the previous
block has no masks left; the schedule says where that block ends (exclusive, relative to the
start of the answer region).
"""

from __future__ import annotations

import torch

from ...errors import ParadecError


class BlockSchedule:
    name = "blocks"
    size: int | None = None  # the block size, where the schedule has one

    def check(self, max_new_tokens: int) -> None:
        pass

    def end(self, lo: int, pred: torch.Tensor, conf: torch.Tensor, max_new_tokens: int) -> int:
        raise NotImplementedError


class FixedBlocks(BlockSchedule):
    """Semi-autoregressive decoding with fixed blocks of ``size`` (None: one block)."""

    name = "fixed"

    def __init__(self, size: int | None = None) -> None:
        if size is not None and int(size) < 1:
            raise ParadecError(f"block size must be >= 1, got {size}")
        self.size = int(size) if size else None

    def check(self, max_new_tokens: int) -> None:
        if self.size and max_new_tokens % self.size:
            raise ParadecError(f"block size {self.size} does not divide the generation length {max_new_tokens}")

    def end(self, lo, pred, conf, max_new_tokens):
        if not self.size:
            return max_new_tokens
        return min(max_new_tokens, (lo // self.size + 1) * self.size)


class AdaBlock(BlockSchedule):
    """AdaBlock: the block ends just after the first delimiter (default: EOS) the model predicts
    with confidence >= ``tau`` inside [lo + min_size, lo + max_size); otherwise ``size`` tokens."""

    name = "adablock"

    def __init__(self, size: int = 6, min_size: int = 2, max_size: int | None = None, tau: float = 0.5, delimiters=(3,)) -> None:
        if not 0 < float(tau) <= 1:
            raise ParadecError(f"adablock: threshold must be in (0, 1], got {tau}")
        self.size, self.min_size, self.max_size, self.tau = int(size), int(min_size), max_size, float(tau)
        self.delimiters = tuple(int(d) for d in delimiters)

    def end(self, lo, pred, conf, max_new_tokens):
        hi_max = min(max_new_tokens, lo + (self.max_size or max_new_tokens))
        for j in range(lo + self.min_size - 1, hi_max):
            if int(pred[j]) in self.delimiters and float(conf[j]) >= self.tau:
                return j + 1
        return min(max_new_tokens, lo + self.size)
