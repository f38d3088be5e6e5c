"""One request's grammar state, as the decode loop uses it: shape the draft before the forward,
mask the logits rows before verification, advance by the committed tokens after it."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..tree import DraftTree
from ..verify import argmax_rows
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
        self._other_eos = frozenset(self.other_eos)
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

    def forced(self) -> tuple[int, ...]:
        """The tokens the grammar forces next (its fast-forward tokens; () when none)."""
        t0 = time.perf_counter()
        ff = tuple(int(t) for t in self.matcher.compute_ff_tokens())
        self.mask_s += time.perf_counter() - t0
        return ff

    def shape(self, draft: DraftTree, max_nodes: int, max_depth: int) -> DraftTree:
        """The draft to verify: ``draft`` pruned to what the grammar allows, plus forced tokens."""
        t0 = time.perf_counter()
        self.shaped = shape_draft(self.matcher, draft, max_nodes, max_depth, self.vocab, self.constraint.tokenizer.tokenize_bytes)
        self.mask_s += time.perf_counter() - t0
        return self.shaped.tree

    def mask(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """logits [n+1, V] of the shaped draft -> the same with every token the grammar rules
        out at that node set to -inf (the constrained target, before sampling parameters).
        ``rows``: the bitmask rows of ``logits``' rows (default all the shaped draft's)."""
        t0 = time.perf_counter()
        bits = (self.shaped.rows if rows is None else rows).numpy()
        out = masks.apply(logits, torch.from_numpy(self._allow(bits, logits.shape[-1])))
        self.mask_s += time.perf_counter() - t0
        return out

    def _allow(self, bits: np.ndarray, vocab: int) -> np.ndarray:
        """Bitmask rows [r, words] -> bool [r, vocab]: the tokens the grammar allows at each node,
        the model's other EOS tokens following the grammar's EOS; a row that allows nothing (an
        error state, never expected) allows EOS, so that the request ends there."""
        allow = masks.unpack_numpy(bits, vocab)
        if self.other_eos and self.eos < allow.shape[1]:
            allow[:, self.other_eos] = allow[:, self.eos : self.eos + 1]
        allow[~allow.any(-1), self.eos] = True
        return allow

    def greedy_best(self, logits: torch.Tensor) -> list[int]:
        """The argmax of every row of ``mask(logits)`` (greedy verification's input), without
        masking a whole row where it is not needed: where a row's own argmax is a token the
        grammar allows there, it is also the argmax of the masked row (the first maximum among
        the allowed tokens: every token before it is smaller), so only the other rows are
        masked. Same tokens as ``mask(logits).argmax(-1)``, ties included."""
        t0 = time.perf_counter()
        x = logits.detach()
        on_numpy = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.float16)
        best = argmax_rows(x)
        bits = self.shaped.rows.numpy()  # [n+1, words] int32
        width = 32 * bits.shape[1]
        need = []
        for i, t in enumerate(best):
            u = self.eos if t in self._other_eos else t  # the other EOS tokens follow the grammar's
            if not (u < width and (int(bits[i, u >> 5]) >> (u & 31)) & 1):
                need.append(i)
        if need and on_numpy:  # these rows masked in full, as mask() does, in numpy
            vals = np.where(self._allow(bits[need], x.shape[-1]), x.numpy()[need], -np.inf)
            for i, t in zip(need, vals.argmax(-1).tolist()):
                best[i] = t
            need = []
        self.mask_s += time.perf_counter() - t0
        if need:  # masked in full (and timed) by mask()
            fixed = self.mask(logits[need], self.shaped.rows[need]).argmax(-1).tolist()
            for i, t in zip(need, fixed):
                best[i] = t
        return best

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
        forced = self.shaped.forced_nodes
        return sum(1 for i in accepted if i in forced)

    def likely_accepted(self, accepted: tuple[int, ...]) -> int:
        """How many of the accepted draft nodes were likely tokens (the forced bytes' spelling)."""
        forced, first = self.shaped.forced_nodes, self.shaped.kept
        return sum(1 for i in accepted if i >= first and i not in forced)
