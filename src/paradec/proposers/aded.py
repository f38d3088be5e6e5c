"""``aded``: adaptive draft-verification (ADED) with an online n-gram model of the target.

Two parts:

* :class:`NGramTable`, a tri-gram (by default) approximation of the target's next-token
  distribution: weighted counts of next tokens given the previous ``n - 1`` tokens (plus shorter
  contexts for back-off). It learns online from every committed token and, optionally, from the
  target's top-1 prediction at every draft node the verifier scored (rows of the step's logits
  for rejected nodes are still exact target predictions, so they come for free). The number of
  contexts is bounded (``max_contexts``, least recently updated evicted first) and so is the
  number of next tokens per context (``max_next``, the smallest count evicted first): at most
  ``max_contexts * max_next`` counts however long the stream, each eviction O(1) (an LRU pop) or
  O(max_next) (the smallest of one context's counts).
* :func:`search_tree`, an exploration/exploitation tree search (MCTS with UCB1 selection)
  that grows the draft from the last committed tokens one node per iteration: starting at the
  root, each iteration descends by picking the candidate child with the highest
  ``p(x | context) + c * sqrt(ln(1 + N_parent) / (1 + N_child))`` and adds the first
  not-yet-expanded child it selects (visit counts are backed up along the path). ``c = 0`` is
  pure exploitation (follow the most likely continuations); larger ``c`` spreads nodes over
  less-visited alternatives, which keeps drafts diverse.

After each step the drafter adapts: rejections at the first token raise the exploration
constant, accepted drafts lower it, and the depth cap grows after fully accepted paths and
shrinks after short ones. Drafts are deterministic candidates (no draft distribution), so
verification is exact under greedy decoding and sampling alike.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from ..interrupt import checkpoint
from ..sampling import SamplingParams
from ..tree import DraftTree
from ..verify import argmax_rows
from .base import ProposeContext, StepResult


@dataclass(frozen=True)
class ADEDConfig:
    n: int = 3  # n-gram order: next token given the previous n - 1
    max_contexts: int = 65536  # table bound: contexts kept (least recently updated evicted)
    max_next: int = 16  # next-token entries kept per context (smallest count evicted)
    backoff: bool = True  # fall back to shorter contexts when the full one is unseen
    seed_prompt: bool = True  # learn the prompt's n-grams at begin()
    learn_from_logits: bool = True  # learn the target's top-1 at every scored, unaccepted node
    logit_weight: float = 0.5  # count weight of such a top-1 prediction (committed tokens weigh 1)
    max_nodes: int = 24  # draft-tree size
    max_depth: int = 8  # upper bound of the adaptive depth cap
    min_depth: int = 2  # lower bound of the adaptive depth cap
    branch: int = 4  # candidate children considered per node (top counts)
    explore: float = 0.5  # initial UCB exploration constant
    explore_min: float = 0.05
    explore_max: float = 2.0
    adapt: bool = True  # adapt the exploration constant and depth cap from acceptance
    keep_state: bool = False  # keep the table (and adapted settings) across requests

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError("aded n must be >= 2")
        if self.max_contexts < 1 or self.max_next < 1 or self.branch < 1 or self.max_nodes < 1:
            raise ValueError("aded max_contexts, max_next, branch and max_nodes must be >= 1")
        if not 1 <= self.min_depth <= self.max_depth:
            raise ValueError("aded needs 1 <= min_depth <= max_depth")
        if not 0.0 <= self.explore_min <= self.explore <= self.explore_max:
            raise ValueError("aded needs 0 <= explore_min <= explore <= explore_max")
        if self.logit_weight < 0:
            raise ValueError("aded logit_weight must be >= 0")


class NGramTable:
    """Bounded next-token counts keyed by context tuples (length ``n - 1``, and 1..n-2 with
    back-off). Contexts live in an LRU order: updating one makes it most recent; beyond
    ``max_contexts`` the least recently updated is dropped."""

    def __init__(self, n: int = 3, max_contexts: int = 65536, max_next: int = 16, backoff: bool = True) -> None:
        self.n, self.max_contexts, self.max_next, self.backoff = n, max_contexts, max_next, backoff
        self._counts: OrderedDict[tuple[int, ...], dict[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counts)

    def _keys(self, context: Sequence[int]) -> list[tuple[int, ...]]:
        """Context keys for ``context``'s tail, longest first."""
        tail = tuple(int(t) for t in context[max(0, len(context) - (self.n - 1)) :])
        if not self.backoff:
            return [tail] if len(tail) == self.n - 1 else []
        return [tail[i:] for i in range(len(tail))]

    def add(self, context: Sequence[int], token: int, weight: float = 1.0) -> None:
        """Count ``token`` after ``context`` (only its last n - 1 tokens matter)."""
        token = int(token)
        for key in self._keys(context):
            nxt = self._counts.get(key)
            if nxt is None:
                nxt = self._counts[key] = {}
                if len(self._counts) > self.max_contexts:
                    self._counts.popitem(last=False)
            else:
                self._counts.move_to_end(key)
            nxt[token] = nxt.get(token, 0.0) + weight
            if len(nxt) > self.max_next:
                victim = min((t for t in nxt if t != token), key=nxt.__getitem__)
                del nxt[victim]

    def add_sequence(self, tokens: Sequence[int], start: int = 1) -> None:
        """Count every token of ``tokens[start:]`` after the tokens before it."""
        for i in range(max(1, start), len(tokens)):
            self.add(tokens[max(0, i - self.n + 1) : i], tokens[i])

    def counts(self, context: Sequence[int]) -> dict[int, float]:
        """Next-token counts for the longest known suffix of ``context`` (empty if none)."""
        for key in self._keys(context):
            nxt = self._counts.get(key)
            if nxt:
                return nxt
        return {}

    def top(self, context: Sequence[int], k: int) -> list[tuple[int, float]]:
        """Up to ``k`` (token, probability) pairs, most likely first (ties: smaller token)."""
        nxt = self.counts(context)
        total = sum(nxt.values())
        if total <= 0:
            return []
        best = sorted(nxt.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [(t, c / total) for t, c in best]


def search_tree(
    table: NGramTable, context: Sequence[int], max_nodes: int, max_depth: int, explore: float, branch: int
) -> DraftTree:
    """Grow a draft tree after ``context`` by UCB tree search over ``table``'s predictions.

    One node is added per iteration: descend from the root choosing, among a node's top
    ``branch`` candidate tokens whose subtree can still grow, the one maximising
    ``p + explore * sqrt(ln(1 + N_node) / (1 + N_child))``; the first unexpanded choice becomes a
    new node and every node on the path gets a visit. Nodes are appended in creation order, so
    the tree is topologically ordered and siblings come in the order they were found.
    """
    keep = table.n - 1
    root_tail = tuple(int(t) for t in context[max(0, len(context) - keep) :])
    tokens: list[int] = []
    parents: list[int] = []
    # per search node (0 = root, k = draft node k - 1)
    tails: list[tuple[int, ...]] = [root_tail]
    depth: list[int] = [0]
    visits: list[int] = [0]
    kids: list[dict[int, int]] = [{}]
    dead: list[bool] = [False]
    cands: list[list[tuple[int, float]] | None] = [None]

    def candidates(v: int) -> list[tuple[int, float]]:
        c = cands[v]
        if c is None:
            c = cands[v] = table.top(tails[v], branch) if depth[v] < max_depth else []
        return c

    while len(tokens) < max_nodes and not dead[0]:
        checkpoint()  # one per draft node: a large search is stoppable (see paradec.interrupt)
        v, path = 0, [0]
        while True:
            best, best_score = None, -math.inf
            for x, p in candidates(v):
                child = kids[v].get(x)
                if child is not None and dead[child]:
                    continue
                n_child = 0 if child is None else visits[child]
                score = p + explore * math.sqrt(math.log1p(visits[v]) / (1 + n_child))
                if score > best_score:
                    best, best_score = x, score
            if best is None:  # nothing left to grow below v
                dead[v] = True
                break
            child = kids[v].get(best)
            if child is not None:
                v = child
                path.append(v)
                continue
            node = len(tails)
            tokens.append(best)
            parents.append(v - 1)
            tails.append((tails[v] + (best,))[-keep:])
            depth.append(depth[v] + 1)
            visits.append(1)
            kids.append({})
            dead.append(False)
            cands.append(None)
            kids[v][best] = node
            for u in path:
                visits[u] += 1
            break
    return DraftTree(tuple(tokens), tuple(parents))


class ADED:
    """Adaptive draft-verification: n-gram model of the target + UCB tree search."""

    name = "aded"

    def __init__(self, config: ADEDConfig | None = None) -> None:
        self.config = config or ADEDConfig()
        self.table = self._new_table()
        self.explore = self.config.explore
        self.depth_cap = self.config.max_depth
        self._seen = 0  # committed tokens already counted

    def _new_table(self) -> NGramTable:
        c = self.config
        return NGramTable(c.n, c.max_contexts, c.max_next, c.backoff)

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        c = self.config
        if not c.keep_state:
            self.table = self._new_table()
            self.explore = c.explore
            self.depth_cap = c.max_depth
        if c.seed_prompt:
            self.table.add_sequence(prompt)
        self._seen = len(prompt)

    def propose(self, ctx: ProposeContext) -> DraftTree:
        c = self.config
        self._learn_committed(ctx.tokens)
        max_depth = min(self.depth_cap, ctx.max_depth)
        max_nodes = min(c.max_nodes, ctx.max_nodes)
        if max_depth <= 0 or max_nodes <= 0:
            return DraftTree()
        return search_tree(self.table, ctx.tokens, max_nodes, max_depth, self.explore, c.branch)

    def _learn_committed(self, tokens: list[int]) -> None:
        if len(tokens) > self._seen:
            self.table.add_sequence(tokens, start=self._seen)
            self._seen = len(tokens)

    def observe(self, result: StepResult) -> None:
        c = self.config
        draft, verdict = result.draft, result.verdict
        root = len(result.tokens) - len(verdict.tokens) - 1  # index of the step's root token
        if c.learn_from_logits and result.logits is not None and len(draft) and c.logit_weight > 0:
            best = argmax_rows(result.logits[1 : len(draft) + 1])
            accepted = set(verdict.accepted)
            prefix = result.tokens[max(0, root + 1 - (c.n - 1)) : root + 1]
            for i in range(len(draft)):
                if i in accepted:  # its prediction is committed (and counted) anyway
                    continue
                path = [draft.tokens[j] for j in draft.path_to(i)]
                self.table.add(prefix + path, best[i], c.logit_weight)
        self._learn_committed(result.tokens)
        if c.adapt and len(draft):
            n_acc = len(verdict.accepted)
            if n_acc == 0:
                self.explore = min(c.explore_max, self.explore * 1.25)
            else:
                self.explore = max(c.explore_min, self.explore * 0.9)
            if n_acc >= self.depth_cap:
                self.depth_cap = min(c.max_depth, self.depth_cap + 1)
            elif 2 * n_acc < self.depth_cap:
                self.depth_cap = max(c.min_depth, self.depth_cap - 1)
