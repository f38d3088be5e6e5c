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

    def check(self, gen_length: int) -> None:
        pass

    def end(self, lo: int, pred: torch.Tensor, conf: torch.Tensor, gen_length: int) -> int:
        raise NotImplementedError


class FixedBlocks(BlockSchedule):
    """Semi-autoregressive decoding with fixed blocks of ``size`` (None: one block)."""

    name = "fixed"

    def __init__(self, size: int | None = None) -> None:
        if size is not None and int(size) < 1:
            raise ParadecError(f"block size must be >= 1, got {size}")
        self.size = int(size) if size else None

    def check(self, gen_length: int) -> None:
        if self.size and gen_length % self.size:
            raise ParadecError(f"block size {self.size} does not divide the generation length {gen_length}")

    def end(self, lo, pred, conf, gen_length):
        if not self.size:
            return gen_length
        return min(gen_length, (lo // self.size + 1) * self.size)


class AdaBlock(BlockSchedule):
    """AdaBlock: the block ends just after the first delimiter (default: EOS) the model predicts
    with confidence >= ``tau`` inside [lo + min_size, lo + max_size); otherwise ``size`` tokens."""

    name = "adablock"

    def __init__(self, size: int = 6, min_size: int = 2, max_size: int | None = None, tau: float = 0.5, delimiters=(3,)) -> None:
        if not 0 < float(tau) <= 1:
            raise ParadecError(f"adablock: threshold must be in (0, 1], got {tau}")
        self.size, self.min_size, self.max_size, self.tau = int(size), int(min_size), max_size, float(tau)
        self.delimiters = tuple(int(d) for d in delimiters)

    def end(self, lo, pred, conf, gen_length):
        hi_max = min(gen_length, lo + (self.max_size or gen_length))
        for j in range(lo + self.min_size - 1, hi_max):
            if int(pred[j]) in self.delimiters and float(conf[j]) >= self.tau:
                return j + 1
        return min(gen_length, lo + self.size)
