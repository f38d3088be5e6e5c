"""One request's grammar state, as the decode loop uses it: shape the draft before the forward,
mask the logits rows before verification, advance by the committed tokens after it."""

from __future__ import annotations

import time

import torch

from ..tree import DraftTree
from . import masks
from .constraint import Constraint
from .draft import Shaped, shape_draft


class Guide:
    def __init__(self, constraint: Constraint, eos_ids: frozenset[int]) -> None:
        self.constraint = constraint
        self.matcher = constraint.matcher()
        self.vocab = constraint.vocab
        self.eos = constraint.eos
        # the model's other end-of-sequence tokens follow the grammar's own EOS
        self.other_eos = sorted(e for e in eos_ids if e != self.eos and 0 <= e < self.vocab)
        self.shaped: Shaped | None = None
        self.mask_s = 0.0  # time in the grammar engine and in masking

    @property
    def accepting(self) -> bool:
        """The output so far is a complete match (it may still go on)."""
        return self.matcher.is_accepting()

    @property
    def complete(self) -> bool:
        """The output is a complete match and nothing may follow it."""
        return self.matcher.is_stopped() and self.matcher.is_accepting()

    def shape(self, draft: DraftTree, max_nodes: int, max_depth: int) -> DraftTree:
        """The draft to verify: ``draft`` pruned to what the grammar allows, plus forced tokens."""
        t0 = time.perf_counter()
        self.shaped = shape_draft(self.matcher, draft, max_nodes, max_depth, self.vocab)
        self.mask_s += time.perf_counter() - t0
        return self.shaped.tree

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [n+1, V] of the shaped draft -> the same with every token the grammar rules
        out at that node set to -inf (the constrained target, before sampling parameters)."""
        t0 = time.perf_counter()
        allow = masks.unpack(self.shaped.rows, logits.shape[-1])  # [n+1, V]
        if self.other_eos and self.eos < allow.shape[1]:
            allow[:, self.other_eos] = allow[:, self.eos : self.eos + 1]
        dead = ~allow.any(-1)  # an error state (never expected): let the request end there
        if bool(dead.any()):
            allow[dead, self.eos] = True
        out = masks.apply(logits, allow)
        self.mask_s += time.perf_counter() - t0
        return out

    def advance(self, tokens: list[int]) -> list[int]:
        """Feed the committed ``tokens``; returns them, cut after the one that completes the
        grammar (what follows a complete match, an EOS, is not output)."""
        t0 = time.perf_counter()
        out = []
        for t in tokens:
            if self.complete:
                break
            out.append(t)
            if t == self.eos or t in self.other_eos:
                break
            self.matcher.consume_token(t)
        self.mask_s += time.perf_counter() - t0
        return out

    def forced_accepted(self, accepted: tuple[int, ...]) -> int:
        """How many of the accepted draft nodes were forced tokens."""
        first = self.shaped.kept
        return sum(1 for i in accepted if i >= first)
