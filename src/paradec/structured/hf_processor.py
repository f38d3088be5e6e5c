"""The same grammar engine as a transformers logits processor (the ``hf`` peer of the
``structured`` benchmark): plain constrained decoding, one mask per generated token."""

from __future__ import annotations

import time

import torch

from . import masks
from .constraint import Constraint


class GrammarLogitsProcessor:
    """For ``model.generate(..., logits_processor=[...])`` with batch size 1: follows the tokens
    generated after the prompt and masks every disallowed token's score to -inf."""

    def __init__(self, constraint: Constraint, prompt_len: int) -> None:
        self.matcher = constraint.matcher()
        self.prompt_len = prompt_len
        self.rows = masks.new_rows(1, constraint.vocab)
        self.mask_s = 0.0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        n = input_ids.shape[1] - self.prompt_len  # tokens generated so far
        if n > 0:
            self.matcher.consume_token(int(input_ids[0, -1]))
        masks.fill(self.matcher, self.rows, 0)
        allow = masks.unpack(self.rows, scores.shape[-1])  # [1, V]
        out = masks.apply(scores, allow)
        self.mask_s += time.perf_counter() - t0
        return out
