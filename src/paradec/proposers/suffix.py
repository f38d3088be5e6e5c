"""``suffix``: drafting from a suffix automaton over everything seen so far.

Index. An online suffix automaton (SAM, Blumer et al.) over the token stream: the prompt and the
generated tokens of the current request, optionally earlier requests (``keep_state``) and a
pinned corpus. Appending a token costs O(1) amortized. Every state stands for a class of
substrings with the same set of end positions (endpos); ``link`` points to the class of the
longest shorter suffix, ``next`` holds the transitions.

Match. ``link[last]`` is the class of the longest suffix of the stream that occurred before
(its endpos holds an earlier position, which is followed by some token), so the match needs no
search at all.

Counts. ``count[v]`` is |endpos(v)|, the number of occurrences of v's strings, maintained
online rather than by the usual counting pass after construction: appending a token adds 1 to
every state on the new last state's suffix-link chain (exactly the classes whose endpos gains
the new position), but walks at most ``count_walk`` states. Counts are therefore exact unless a
position has more than ``count_walk`` repeated-suffix classes (long, highly repetitive
stretches); then the shortest contexts miss that occurrence and are undercounted. The cost per
token stays O(count_walk) = O(1). ``last_end[v]`` (the latest end position, same walk) breaks
ties in favour of recent continuations.

Draft. From the matched state, continuations are ranked by occurrence count: following token
c leads to state u = next[v][c] and count[u] is the number of times "match + c" occurred. The
tree grows best-first by estimated path probability (the product of count[child] / sum of the
counts of its siblings), up to ``max_width`` children per node, dropping paths below
``min_prob``. Its size adapts to the match: a budget of ``ceil(match_alpha * match_len)``
nodes and a depth cap of ``ceil(depth_alpha * match_len)``. So a long match with a dominant
continuation gives a deep, narrow chain; a short match gives a small, shallow, wider tree.

Bounded state. At most ``max_tokens`` tokens are indexed. When the stream would exceed it, the
automaton is rebuilt from the corpus plus the most recent half of the live window (so a rebuild
of O(max_tokens) work happens at most once per max_tokens/2 appended tokens: still O(1)
amortized). Python-side memory is about 0.4-0.5 KB per indexed token (at most two states per
token, each with a small dict): 25-30 MiB at the default cap of 65536 tokens (measured).

Requests. ``begin`` resets the automaton (back to the corpus) unless ``keep_state``; with
``keep_state`` the automaton keeps indexing across requests and a separator is appended between
them. Separators (and corpus line ends) are unique negative ids, so no repeated substring spans
them and they are never proposed.

Corpus. ``SuffixConfig.corpus_path`` names a text file with one token-id sequence per line
(whitespace-separated ids); ``SuffixDrafter(corpus=...)`` takes sequences directly. Both are
indexed once, pinned across resets and evictions, and must fit in ``max_tokens // 2`` tokens.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ParadecError
from ..sampling import SamplingParams
from ..tree import DraftTree
from .base import ProposeContext, StepResult


@dataclass(frozen=True)
class SuffixConfig:
    max_nodes: int = 24  # draft-tree cap (the step's ctx.max_nodes caps it too)
    max_depth: int = 12  # deepest draft node
    max_width: int = 4  # children considered per node
    min_match: int = 1  # shortest suffix match worth drafting from
    min_prob: float = 0.05  # paths with a lower estimated probability are not drafted
    match_alpha: float = 4.0  # node budget = ceil(match_alpha * match length)
    depth_alpha: float = 2.0  # depth cap = ceil(depth_alpha * match length)
    max_tokens: int = 1 << 16  # tokens indexed at most (corpus included); older ones are evicted
    count_walk: int = 64  # suffix-link states updated per token (see "Counts" above)
    keep_state: bool = False  # keep indexing across requests (separated) instead of resetting
    corpus_path: str = ""  # optional file: one whitespace-separated token-id sequence per line

    def __post_init__(self) -> None:
        if min(self.max_nodes, self.max_depth, self.max_width, self.min_match, self.count_walk) < 1:
            raise ValueError("suffix max_nodes, max_depth, max_width, min_match and count_walk must be >= 1")
        if not 0.0 <= self.min_prob < 1.0:
            raise ValueError("suffix min_prob must be in [0, 1)")
        if self.match_alpha <= 0 or self.depth_alpha <= 0:
            raise ValueError("suffix match_alpha and depth_alpha must be > 0")
        if self.max_tokens < 16:
            raise ValueError("suffix max_tokens must be >= 16")


class SuffixAutomaton:
    """Online suffix automaton over a token stream. State 0 is the root (the empty string)."""

    def __init__(self, count_walk: int = 64) -> None:
        self.count_walk = count_walk
        self.length: list[int] = [0]  # longest string of each state
        self.link: list[int] = [-1]  # suffix link
        self.next: list[dict[int, int]] = [{}]  # transitions: token -> state
        self.count: list[int] = [0]  # |endpos| (see the module docstring)
        self.last_end: list[int] = [-1]  # latest end position
        self.last = 0  # the state of the whole stream
        self.n = 0  # tokens appended

    def __len__(self) -> int:
        return self.n

    @property
    def n_states(self) -> int:
        return len(self.length)

    def copy(self) -> "SuffixAutomaton":
        c = SuffixAutomaton(self.count_walk)
        c.length, c.link, c.count, c.last_end = list(self.length), list(self.link), list(self.count), list(self.last_end)
        c.next = [dict(d) for d in self.next]
        c.last, c.n = self.last, self.n
        return c

    def extend(self, token: int) -> None:
        """Append one token (the standard online construction, then the count walk)."""
        length, link, nxt, count, last_end = self.length, self.link, self.next, self.count, self.last_end
        pos = self.n
        cur = len(length)
        length.append(length[self.last] + 1)
        link.append(0)
        nxt.append({})
        count.append(0)
        last_end.append(pos)
        p = self.last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:  # split q: the clone takes the shorter strings (whose endpos gains `pos`)
                clone = len(length)
                length.append(length[p] + 1)
                link.append(link[q])
                nxt.append(dict(nxt[q]))
                count.append(count[q])
                last_end.append(last_end[q])
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = clone
                    p = link[p]
                link[q] = clone
                link[cur] = clone
        self.last = cur
        self.n += 1
        v, steps = cur, 0
        while v > 0 and steps < self.count_walk:  # every suffix of the stream ends at `pos`
            count[v] += 1
            last_end[v] = pos
            v = link[v]
            steps += 1

    def extend_all(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.extend(int(t))

    # ---- queries --------------------------------------------------------------------------
    def match(self) -> tuple[int, int]:
        """(state, length) of the longest suffix of the stream that occurred earlier."""
        v = self.link[self.last] if self.last > 0 else 0
        return v, self.length[v]

    def find(self, pattern: Sequence[int]) -> int:
        """The state of ``pattern``, or -1 when it never occurred."""
        v = 0
        for t in pattern:
            v = self.next[v].get(int(t), -1)
            if v < 0:
                return -1
        return v

    def occurrences(self, pattern: Sequence[int]) -> int:
        v = self.find(pattern)
        return 0 if v < 0 else (self.n + 1 if v == 0 else self.count[v])

    def continuations(self, state: int, width: int | None = None) -> tuple[list[tuple[int, int, int]], int]:
        """The ``width`` most frequent continuations of ``state`` as (token, count, next state),
        most frequent first (ties: most recent first), and the total count over all of them.
        Separators (negative ids) are left out."""
        count, last_end = self.count, self.last_end
        items = [(count[u], last_end[u], t, u) for t, u in self.next[state].items() if t >= 0]
        total = sum(c for c, _, _, _ in items)
        best = heapq.nlargest(width, items) if width is not None else sorted(items, reverse=True)
        return [(t, c, u) for c, _, t, u in best], total


def build_tree(
    sam: SuffixAutomaton, state: int, max_nodes: int, max_depth: int, max_width: int, min_prob: float
) -> DraftTree:
    """Best-first draft tree from ``state``: expand the most probable path prefix next, where a
    path's probability is the product of each step's continuation frequency."""
    tokens: list[int] = []
    parents: list[int] = []
    heap: list[tuple[float, int, int, int, int, int]] = []  # (-prob, tiebreak, token, state, parent, depth)
    order = 0

    def push(v: int, prob: float, parent: int, depth: int) -> None:
        nonlocal order
        kids, total = sam.continuations(v, max_width)
        for t, c, u in kids:
            p = prob * c / total
            if p >= min_prob:
                heapq.heappush(heap, (-p, order, t, u, parent, depth))
                order += 1

    push(state, 1.0, -1, 1)
    while heap and len(tokens) < max_nodes:
        neg, _, t, u, parent, depth = heapq.heappop(heap)
        node = len(tokens)
        tokens.append(t)
        parents.append(parent)
        if depth < max_depth:
            push(u, -neg, node, depth + 1)
    return DraftTree(tuple(tokens), tuple(parents))


def read_corpus(path: str) -> list[list[int]]:
    """One sequence per non-empty line, non-negative token ids separated by whitespace. Errors
    name the file and the line, never its content."""
    what = f"suffix corpus_path '{path}'"
    p = Path(path).expanduser()
    if p.is_dir():
        raise ParadecError(f"{what} is a folder, not a corpus file")
    seqs = []
    try:
        with open(p, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                try:
                    seq = [int(x) for x in line.split()]
                except ValueError:
                    seq = [-1]
                if any(t < 0 for t in seq):
                    raise ParadecError(f"{what} is not a corpus: line {no} is not whitespace-separated token ids (integers >= 0)")
                if seq:
                    seqs.append(seq)
    except FileNotFoundError:
        raise ParadecError(f"{what}: no such file") from None
    except UnicodeDecodeError:
        raise ParadecError(f"{what} is not a corpus: it is not UTF-8 text") from None
    except OSError as e:
        raise ParadecError(f"{what} cannot be read ({e.strerror or type(e).__name__})") from None
    return seqs


class SuffixDrafter:
    name = "suffix"

    def __init__(self, config: SuffixConfig | None = None, corpus: Sequence[Sequence[int]] | None = None) -> None:
        self.config = c = config or SuffixConfig()
        seqs = [list(s) for s in corpus or ()]
        if c.corpus_path:
            seqs += read_corpus(c.corpus_path)
        self._sep = -1  # next separator id (unique, negative)
        base = SuffixAutomaton(c.count_walk)
        for s in seqs:
            if any(int(t) < 0 for t in s):
                raise ParadecError("suffix corpus token ids must be >= 0")
            base.extend_all(s)
            base.extend(self._new_sep())
        if base.n > c.max_tokens // 2:
            raise ParadecError(f"suffix corpus has {base.n} tokens; at most max_tokens // 2 = {c.max_tokens // 2} fit")
        self._base = base  # the pinned corpus
        self.sam = base.copy()
        self._window: list[int] = []  # live tokens indexed after the corpus (separators included)
        self._n = 0  # tokens of the current request indexed
        self.last_match = 0  # suffix match length at the last proposal

    def _new_sep(self) -> int:
        s = self._sep
        self._sep -= 1
        return s

    # ---- indexing -------------------------------------------------------------------------
    def _reset(self) -> None:
        self.sam = self._base.copy()
        self._window = []

    def _push(self, token: int) -> None:
        if self.sam.n >= self.config.max_tokens:
            self._evict()
        self.sam.extend(token)
        self._window.append(token)

    def _evict(self) -> None:
        """Rebuild from the corpus and the most recent half of the live room."""
        keep = max(1, (self.config.max_tokens - self._base.n) // 2)
        self._window = self._window[-keep:]
        self.sam = self._base.copy()
        self.sam.extend_all(self._window)

    def _start_request(self) -> None:
        if not self.config.keep_state:
            self._reset()
        elif self._window:
            self._push(self._new_sep())
        self._n = 0

    def _sync(self, tokens: list[int]) -> None:
        # tokens only grow within a request; a shorter list means a new request began
        if len(tokens) < self._n:
            self._start_request()
        for t in tokens[self._n :]:
            self._push(int(t))
        self._n = len(tokens)

    # ---- the proposer protocol ------------------------------------------------------------
    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        self._start_request()
        self._sync(prompt)

    def propose(self, ctx: ProposeContext, size: SuffixConfig | None = None) -> DraftTree:
        """The draft from the longest suffix match; ``size``: another configuration's tree
        budget and depth (its max_nodes, max_depth, match_alpha, depth_alpha) for this one."""
        c = self.config
        s = size or c
        self._sync(ctx.tokens)
        state, match_len = self.sam.match()
        self.last_match = match_len
        if match_len < c.min_match:
            return DraftTree()
        budget = min(s.max_nodes, ctx.max_nodes, math.ceil(s.match_alpha * match_len))
        depth = min(s.max_depth, ctx.max_depth, math.ceil(s.depth_alpha * match_len))
        if budget < 1 or depth < 1:
            return DraftTree()
        return build_tree(self.sam, state, budget, depth, c.max_width, c.min_prob)

    def observe(self, result: StepResult) -> None:
        self._sync(result.tokens)
