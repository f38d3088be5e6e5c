"""``pld``: prompt lookup decoding.

Find earlier occurrences of the sequence's last n tokens (longest n first) in prompt + output and
propose what followed them. With ``branches > 1`` the distinct continuations of several matches
(most recent first) are merged into a small tree, so a wrong guess at one match does not waste
the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..sampling import SamplingParams
from ..tree import DraftTree
from .base import ProposeContext, StepResult


@dataclass(frozen=True)
class PLDConfig:
    max_ngram: int = 4
    min_ngram: int = 1
    draft_len: int = 10  # tokens per continuation
    branches: int = 3  # continuations merged into one tree (1 = chain)
    max_nodes: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError("pld needs 1 <= min_ngram <= max_ngram")
        if self.draft_len < 1 or self.branches < 1 or self.max_nodes < 1:
            raise ValueError("pld draft_len, branches and max_nodes must be >= 1")


def find_continuations(
    seq: np.ndarray, max_ngram: int, min_ngram: int, length: int, branches: int
) -> list[list[int]]:
    """Continuations (most recent match first, distinct) of the longest suffix n-gram of ``seq``
    that occurs earlier in ``seq``. Matches must be followed by at least one token."""
    n_tok = len(seq)
    for n in range(min(max_ngram, n_tok - 1), min_ngram - 1, -1):
        pattern = seq[n_tok - n :]
        # candidate starts i with seq[i:i+n] == pattern and i + n < n_tok (something follows)
        starts = np.flatnonzero(seq[: n_tok - n] == pattern[0])
        for k in range(1, n):
            if starts.size == 0:
                break
            starts = starts[seq[starts + k] == pattern[k]]
        if starts.size == 0:
            continue
        out: list[list[int]] = []
        seen: set[tuple[int, ...]] = set()
        for i in starts[::-1]:  # most recent first
            cont = tuple(seq[i + n : i + n + length].tolist())
            if cont and cont not in seen:
                seen.add(cont)
                out.append(list(cont))
                if len(out) >= branches:
                    break
        return out
    return []


class PromptLookup:
    name = "pld"

    def __init__(self, config: PLDConfig | None = None) -> None:
        self.config = config or PLDConfig()
        self._buf = np.zeros(0, dtype=np.int64)
        self._n = 0

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        self._buf = np.zeros(max(256, 2 * len(prompt)), dtype=np.int64)
        self._n = 0

    def _sync(self, tokens: list[int]) -> np.ndarray:
        # tokens only grow between steps of one request: append the new tail to a numpy buffer
        if len(tokens) > len(self._buf):
            self._buf = np.resize(self._buf, 2 * len(tokens))
        if len(tokens) > self._n:
            self._buf[self._n : len(tokens)] = tokens[self._n :]
        self._n = len(tokens)
        return self._buf[: self._n]

    def propose(self, ctx: ProposeContext) -> DraftTree:
        c = self.config
        seq = self._sync(ctx.tokens)
        length = min(c.draft_len, ctx.max_depth)
        conts = find_continuations(seq, c.max_ngram, c.min_ngram, length, c.branches)
        if not conts:
            return DraftTree()
        return DraftTree.from_sequences(conts, max_nodes=min(c.max_nodes, ctx.max_nodes))

    def observe(self, result: StepResult) -> None:
        pass
