"""One request's grammar state, as the decode loop uses it: shape the draft before the forward,
mask the logits rows before verification, advance by the committed tokens after it."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
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

    def shape(self, draft: DraftTree, max_nodes: int, max_depth: int, with_masks: bool = True) -> DraftTree:
        """The draft to verify: ``draft`` pruned to what the grammar allows, plus forced tokens.
        ``with_masks=False`` (greedy verification): no mask rows yet, ``greedy_best`` computes the
        ones it reads."""
        t0 = time.perf_counter()
        self.shaped = shape_draft(self.matcher, draft, max_nodes, max_depth, self.vocab,
                                  self.constraint.tokenizer.tokenize_bytes, with_masks)
        self.mask_s += time.perf_counter() - t0
        return self.shaped.tree

    def rows(self) -> torch.Tensor:
        """The shaped draft's mask rows [n+1, words] (computed now if it was shaped without)."""
        if self.shaped.rows is None:
            tree, m = self.shaped.tree, self.matcher.deep_copy()
            rows = masks.new_rows(len(tree) + 1, self.vocab)
            kids = tree.children()

            def visit(r: int) -> None:  # m at the state of row r (0: the root, i + 1: node i)
                masks.fill(m, rows, r)
                for c in kids[r]:
                    if m.try_consume_tokens([tree.tokens[c]]) == 1:  # (always: it was taken when shaped)
                        visit(c + 1)
                        m.rollback(1)

            visit(0)
            self.shaped = dataclasses.replace(self.shaped, rows=rows)
        return self.shaped.rows

    def mask(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """logits [n+1, V] of the shaped draft -> the same with every token the grammar rules
        out at that node set to -inf (the constrained target, before sampling parameters).
        ``rows``: the bitmask rows of ``logits``' rows (default all the shaped draft's)."""
        if rows is None:
            rows = self.rows()
        t0 = time.perf_counter()
        out = masks.apply(logits, torch.from_numpy(self._allow(rows.numpy(), logits.shape[-1])))
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
        """What greedy verification reads of ``mask(logits).argmax(-1)``: the argmax of every
        masked row on the path it takes (root, then the child spelling that row's argmax, while
        there is one); the other rows hold -1, which it never reads. So
        ``verify_greedy_best(tree, greedy_best(logits))`` is greedy verification against the
        constrained target, ties included. Each path row's mask is computed here with the
        matcher walked down the path (none were computed when shaping, see ``shape``):
        - a mask that allows one token decides the row (its masked argmax is that token,
          whatever the logits): its logits are not read;
        - else the row's own argmax, if the grammar allows it, is also the masked row's (the
          first maximum among the allowed tokens: every token before it is smaller); a row is
          masked in full only where its argmax is a token the grammar rules out.
        Only the path rows' argmaxes are taken (one row at a time)."""
        t0 = time.perf_counter()
        x = logits.detach()
        on_numpy = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.float16)
        tree, given = self.shaped.tree, self.shaped.rows
        best = [-1] * (len(tree) + 1)
        kids = tree.children()
        words = masks.words(self.vocab)
        bits = np.zeros(words, np.int32)
        m, depth, node = self.matcher, 0, -1
        try:
            while True:
                r = node + 1
                row = given[r].numpy() if given is not None else bits
                if given is None:
                    masks.fill_numpy(m, row)
                t = masks.only_numpy(row)
                if t is None or t == self.eos or t in self._other_eos:  # the logits decide
                    xr = x[r]  # [V]
                    t = int(xr.numpy().argmax()) if on_numpy else int(xr.argmax())
                    u = self.eos if t in self._other_eos else t  # the other EOS tokens follow the grammar's
                    if not (u < 32 * words and (int(row[u >> 5]) >> (u & 31)) & 1):  # masked in full, as mask() does
                        allow = self._allow(row[None], x.shape[-1])
                        if on_numpy:
                            t = int(np.where(allow[0], xr.numpy(), -np.inf).argmax())
                        else:  # a dtype numpy lacks
                            t = int(masks.apply(xr[None], torch.from_numpy(allow)).argmax(-1))
                best[r] = t
                nxt = next((c for c in kids[r] if tree.tokens[c] == t), None)
                if nxt is None:
                    break
                m.consume_token(t)  # the parser took it when the node was kept, in this state
                depth += 1
                node = nxt
        finally:
            if depth:
                m.rollback(depth)  # back at the root
        self.mask_s += time.perf_counter() - t0
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
