"""``pld``: prompt lookup decoding.

Find earlier occurrences of the sequence's last n tokens (longest n first) in prompt + output and
propose what followed them. With ``branches > 1`` the distinct continuations of several matches
(most recent first) are merged into a small tree, so a wrong guess at one match does not waste
the step.

Bounded state: only the most recent ``max_window`` tokens are searched. They live in a numpy
buffer of at most ``2 * max_window`` ids; when it is full, the newest ``max_window`` are moved to
its front (one copy per ``max_window`` appended tokens: O(1) amortized per token), so memory and
the per-step search cost stay fixed however long the request. Requests shorter than the window
are searched whole, as before.
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
    max_window: int = 1 << 16  # most recent tokens searched (the buffer holds at most twice that)

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError("pld needs 1 <= min_ngram <= max_ngram")
        if self.draft_len < 1 or self.branches < 1 or self.max_nodes < 1:
            raise ValueError("pld draft_len, branches and max_nodes must be >= 1")
        if self.max_window < 2:
            raise ValueError("pld max_window must be >= 2")


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
        self._len = 0  # ids held in the buffer (the newest last)
        self._n = 0  # tokens of the request seen

    @property
    def size(self) -> int:
        """Token ids held (at most ``2 * max_window``)."""
        return self._len

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        self._buf = np.zeros(min(max(256, 2 * len(prompt)), 2 * self.config.max_window), dtype=np.int64)
        self._len = self._n = 0

    def _sync(self, tokens: list[int]) -> np.ndarray:
        """Append the request's new tokens (they only grow between steps); the window to search."""
        w = self.config.max_window
        n = len(tokens)
        if n < self._n:  # a new request without begin(): start over
            self._len = self._n = 0
        new = tokens[max(self._n, n - w) :]
        if self._len + len(new) > 2 * w:  # full: keep the newest ids that still fit the window
            keep = max(0, w - len(new))
            self._buf[:keep] = self._buf[self._len - keep : self._len]
            self._len = keep
        end = self._len + len(new)
        if end > len(self._buf):
            self._buf = np.resize(self._buf, min(2 * w, max(2 * end, 256)))
        if new:
            self._buf[self._len : end] = new
        self._len, self._n = end, n
        return self._buf[max(0, end - w) : end]

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
