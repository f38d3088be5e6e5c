"""``recycle``: Token Recycling (Luo et al., "Turning Trash into Treasure").

Every verification forward yields the target's distribution at the root and at every draft
node, accepted or not; the top-k tokens of each are candidates that tend to recur later. They
are kept in an adjacency matrix ``M[vocab, k]`` (int32, -1 = empty): row t holds the k most
likely next tokens the target gave, the last time it saw token t, in rank order.

Update (``observe``). Logits row 0 follows the step's root (the last token committed before the
step's new tokens) and row i + 1 follows draft node i's token; each row's top-k overwrites
``M[that token]``. When a token appears at several rows, the row on the accepted path wins (it
is the context decoding actually went through), then the later row.

Draft (``propose``). A static tree template, a list of (parent, child rank) in priority order
(parents before children), is laid over M starting from the last committed token: a template
node of rank r under a node holding token t gets token ``M[t, r]``. Nodes whose row is empty
(never written) are skipped with their subtree; the walk stops after ``ctx.max_nodes`` nodes, so
a small budget keeps the template's best nodes. Siblings are distinct (a row of top-k ids), and
candidates are deterministic, so verification is exact under sampling too.

The default template (``default_template``) is grown best-first from an assumed acceptance rate
per rank, so it is wide at depth 1 and narrows with depth: 64 nodes, per depth 8, 16, 16, 9,
6, 7, 1, 1. A custom template is a string of ``parent:rank`` pairs (``-1`` = the root), e.g.
``"-1:0 -1:1 0:0 0:1 2:0"``.

Memory: ``vocab * k * 4`` bytes, allocated from the logits' vocabulary size on the first
observation (before any, drafts are empty): 1.5 MiB for a 49152-token vocabulary with k = 8
(under the paper's 2 MB). ``begin`` clears M unless ``keep_state`` (the paper keeps the matrix
across queries, a "hot start"). The matrix is the drafter's whole state, so it is bounded by
construction: its size never changes however long the stream.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..sampling import SamplingParams
from ..tree import DraftTree
from ..interrupt import checkpoint
from .base import ProposeContext, StepResult

Template = tuple[tuple[int, int], ...]  # (parent template index or -1, child rank)

# Assumed acceptance probability of the rank-r candidate, used only to shape the default template.
RANK_ACCEPT = (0.6, 0.15, 0.07, 0.05, 0.04, 0.03, 0.02, 0.02)


@dataclass(frozen=True)
class RecycleConfig:
    k: int = 8  # candidates kept per token (columns of M)
    nodes: int = 64  # size of the default template
    max_depth: int = 8  # deepest node of the default template
    template: str = ""  # custom template "parent:rank ..." (empty = the default)
    keep_state: bool = False  # keep M across requests

    def __post_init__(self) -> None:
        if self.k < 1 or self.nodes < 1 or self.max_depth < 1:
            raise ValueError("recycle k, nodes and max_depth must be >= 1")
        if self.template:
            check_template(parse_template(self.template), self.k)


def default_template(nodes: int = 64, k: int = 8, max_depth: int = 8, accept: Sequence[float] = RANK_ACCEPT) -> Template:
    """The ``nodes`` most probable nodes when the rank-r child is accepted with probability
    ``accept[r]`` (independently per depth), best first; parents always precede children."""
    accept = [accept[min(r, len(accept) - 1)] for r in range(k)]
    out: list[tuple[int, int]] = []
    heap = [(-accept[r], r, -1, r, 1) for r in range(k)]  # (-prob, tiebreak, parent, rank, depth)
    order = k
    while heap and len(out) < nodes:
        if not len(out) & 1023:
            checkpoint()  # a large template takes a while: stoppable (see paradec.interrupt)
        neg, _, parent, rank, depth = heapq.heappop(heap)
        idx = len(out)
        out.append((parent, rank))
        if depth < max_depth:
            for r in range(k):
                heapq.heappush(heap, (neg * accept[r], order, idx, r, depth + 1))
                order += 1
    return tuple(out)


def parse_template(text: str) -> Template:
    """``"-1:0 -1:1 0:0"`` (spaces or commas between pairs) -> ((-1, 0), (-1, 1), (0, 0))."""
    pairs = []
    for item in text.replace(",", " ").split():
        p, _, r = item.partition(":")
        try:
            pairs.append((int(p), int(r)))
        except ValueError:
            raise ValueError(f"recycle template entry {item!r} is not parent:rank") from None
    return tuple(pairs)


def check_template(template: Template, k: int) -> None:
    for i, (p, r) in enumerate(template):
        if not -1 <= p < i:
            raise ValueError(f"recycle template node {i} has parent {p}; parents must precede children")
        if not 0 <= r < k:
            raise ValueError(f"recycle template node {i} has rank {r}; ranks must be in [0, k={k})")


def template_depths(template: Template) -> list[int]:
    d: list[int] = []
    for p, _ in template:
        d.append(1 if p < 0 else d[p] + 1)
    return d


class TokenRecycling:
    name = "recycle"

    def __init__(self, config: RecycleConfig | None = None, template: Sequence[tuple[int, int]] | None = None) -> None:
        self.config = c = config or RecycleConfig()
        if template is not None:
            self.template: Template = tuple((int(p), int(r)) for p, r in template)
        elif c.template:
            self.template = parse_template(c.template)
        else:
            self.template = default_template(c.nodes, c.k, c.max_depth)
        check_template(self.template, c.k)
        self._depths = template_depths(self.template)
        self.M: np.ndarray | None = None  # [V, k] int32, -1 = empty

    @property
    def nbytes(self) -> int:
        return 0 if self.M is None else self.M.nbytes

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        if not self.config.keep_state:
            self.M = None

    # ---- the matrix -----------------------------------------------------------------------
    def update(self, prev_tokens: Sequence[int], logits: torch.Tensor, order: Sequence[int] | None = None) -> None:
        """Row i of ``logits`` [n, V] is the target's next-token logits after token
        ``prev_tokens[i]``; write each row's top-k into M. ``order`` lists the rows from lowest
        to highest precedence (default: row order); for a repeated token the highest wins."""
        vocab = logits.shape[-1]
        k = self.config.k
        if self.M is None or self.M.shape[0] != vocab:
            self.M = np.full((vocab, k), -1, dtype=np.int32)
        kk = min(k, vocab)
        top = torch.topk(logits, kk, dim=-1).indices.cpu().numpy().astype(np.int32)  # [n, kk]
        src = np.asarray(prev_tokens, dtype=np.int64)  # [n]
        rows = np.arange(len(src)) if order is None else np.asarray(order, dtype=np.int64)
        rows = rows[::-1]  # highest precedence first; np.unique keeps the first index per token
        ok = (src[rows] >= 0) & (src[rows] < vocab)
        rows = rows[ok]
        _, first = np.unique(src[rows], return_index=True)
        rows = rows[first]
        self.M[src[rows], :kk] = top[rows]

    def draft(self, root_token: int, max_nodes: int, max_depth: int) -> DraftTree:
        """Lay the template over M from ``root_token`` (template order, skipping empty rows)."""
        M = self.M
        tokens: list[int] = []
        parents: list[int] = []
        if M is None or max_nodes < 1 or not 0 <= root_token < M.shape[0]:
            return DraftTree()
        rows: dict[int, list[int]] = {}  # token -> its row of M as a list (cached per draft)

        def row(t: int) -> list[int]:
            r = rows.get(t)
            if r is None:
                r = rows[t] = M[t].tolist()
            return r

        node_of = [-1] * len(self.template)  # template index -> draft node (-1 = skipped)
        for j, (p, r) in enumerate(self.template):
            if not j & 1023:
                checkpoint()
            if self._depths[j] > max_depth:
                continue
            parent = -1 if p < 0 else node_of[p]
            if p >= 0 and parent < 0:
                continue  # the parent was skipped, so is its subtree
            t = row(root_token if parent < 0 else tokens[parent])[r]
            if t < 0:
                continue
            node_of[j] = len(tokens)
            tokens.append(t)
            parents.append(parent)
            if len(tokens) >= max_nodes:
                break
        return DraftTree(tuple(tokens), tuple(parents))

    # ---- the proposer protocol ------------------------------------------------------------
    def propose(self, ctx: ProposeContext) -> DraftTree:
        return self.draft(ctx.tokens[-1], ctx.max_nodes, ctx.max_depth)

    def observe(self, result: StepResult) -> None:
        if result.logits is None:
            return
        draft, verdict = result.draft, result.verdict
        root = result.tokens[-len(verdict.tokens) - 1]  # the last token committed before this step
        prev = [root, *draft.tokens]  # the token each logits row follows
        on_path = [0] + [i + 1 for i in verdict.accepted]  # root row, then the accepted rows
        path = set(on_path)
        order = [i for i in range(len(prev)) if i not in path] + on_path
        self.update(prev, result.logits, order)
