"""``lookahead``: Jacobi / lookahead decoding in one tree forward.

The drafter keeps ``window`` Jacobi guess chains, each a guess of the ``ngram - 1`` tokens after
the step's root, and a pool of n-grams (first token -> recent ``ngram - 1``-token
continuations, bounded and LRU-evicted). Each step proposes one tree with

1. verification candidates: up to ``guesses`` pool continuations of the last committed token
   (most recent first), and
2. the Jacobi chains, each a branch under the root.

Both are merged into a trie (candidates first, so a node cap cuts chains before candidates).
The tree mask gives every chain causal attention along itself, so the one target forward
yields, at each chain position, the target's greedy prediction given the root and that chain's
own earlier guesses: one Jacobi iteration for all chains at once. Chains (and candidates) are
also checked by the verifier like any draft, which is lossless whatever the tree holds.

In ``observe`` each chain takes the predictions as its new guesses (Jacobi update) shifted by the
number of committed tokens; positions past the predictions get filler tokens drawn from the
context. Each guess carries its *trail*, the diagonal of earlier guesses it was predicted from
(the same position minus one, one iteration earlier, and so on); once a trail holds
``ngram - 1`` tokens, trail + prediction is a complete n-gram and goes into the pool. That is
lookahead decoding's 2-D window, laid out as tree branches. With ``pool_from_context`` the
pool also learns the n-grams of the prompt and of the committed text (an extension beyond the
paper; drafts of the generated text itself are often what repeats).

Bounded state: the pool holds at most ``max_grams`` continuations in all, at most
``pool_per_key`` per first token and ``max_keys`` first tokens. Past any of these the oldest go
first: the least recently added continuation of a key, the least recently updated key (and, for
the total, the oldest continuation of the least recently updated key). Every eviction is O(1).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from ..interrupt import checkpoint
from ..sampling import SamplingParams
from ..tree import DraftTree
from ..verify import argmax_rows
from .base import ProposeContext, StepResult


@dataclass(frozen=True)
class LookaheadConfig:
    ngram: int = 4  # N: pool n-grams have N tokens; Jacobi chains hold N - 1 guesses
    window: int = 5  # W: parallel Jacobi chains
    guesses: int = 5  # G: pool continuations verified per step
    pool_per_key: int = 8  # continuations kept per first token (least recently added dropped)
    max_keys: int = 65536  # first tokens kept in the pool (least recently updated dropped)
    max_grams: int = 65536  # continuations kept in all (the oldest of the least recently updated key dropped)
    pool_from_context: bool = True  # also pool the n-grams of the prompt and committed text
    max_nodes: int = 64  # tree size (candidates first, then chains)
    seed: int = 0  # RNG for chain initialisation and filler tokens
    keep_state: bool = False  # keep the n-gram pool across requests

    def __post_init__(self) -> None:
        if self.ngram < 2:
            raise ValueError("lookahead ngram must be >= 2")
        if self.window < 0 or self.guesses < 0:
            raise ValueError("lookahead window and guesses must be >= 0")
        if min(self.pool_per_key, self.max_keys, self.max_grams, self.max_nodes) < 1:
            raise ValueError("lookahead pool_per_key, max_keys, max_grams and max_nodes must be >= 1")


class NGramPool:
    """first token -> continuations (tuples of ``n - 1`` tokens), most recently added last.
    Bounded per key (``per_key``), in keys (``max_keys``) and in all (``max_grams``), the oldest
    evicted first (see the module docstring)."""

    def __init__(self, n: int, per_key: int = 8, max_keys: int = 65536, max_grams: int = 65536) -> None:
        self.n, self.per_key, self.max_keys, self.max_grams = n, per_key, max_keys, max_grams
        self._pool: OrderedDict[int, OrderedDict[tuple[int, ...], None]] = OrderedDict()
        self._size = 0  # continuations in all

    def __len__(self) -> int:
        return self._size

    @property
    def keys(self) -> int:
        return len(self._pool)

    def add(self, gram: Sequence[int]) -> None:
        """Add an n-gram (exactly ``n`` tokens); re-adding one makes it most recent."""
        if len(gram) != self.n:
            raise ValueError(f"expected a {self.n}-gram, got {len(gram)} tokens")
        key, cont = int(gram[0]), tuple(int(t) for t in gram[1:])
        pool = self._pool
        conts = pool.get(key)
        if conts is None:
            conts = pool[key] = OrderedDict()
            if len(pool) > self.max_keys:
                self._size -= len(pool.popitem(last=False)[1])
        else:
            pool.move_to_end(key)
            if conts.pop(cont, 0) is None:  # already there: it only moves to the newest place
                self._size -= 1
        conts[cont] = None
        self._size += 1
        if len(conts) > self.per_key:
            conts.popitem(last=False)
            self._size -= 1
        if self._size > self.max_grams:  # the oldest continuation of the least recently updated key
            old_key, old = next(iter(pool.items()))
            old.popitem(last=False)
            self._size -= 1
            if not old:
                del pool[old_key]

    def add_text(self, tokens: Sequence[int], start: int = 0) -> None:
        """Add every n-gram of ``tokens`` that ends at index >= ``start``."""
        for end in range(max(start, self.n - 1), len(tokens)):
            self.add(tokens[end - self.n + 1 : end + 1])

    def lookup(self, token: int, k: int) -> list[tuple[int, ...]]:
        """Up to ``k`` continuations of ``token``, most recent first."""
        conts = self._pool.get(int(token))
        return [] if not conts else list(reversed(conts))[:k]


def build_trie(seqs: Sequence[Sequence[int]], max_nodes: int) -> tuple[DraftTree, list[list[int]]]:
    """Merge ``seqs`` into a trie of at most ``max_nodes`` nodes (earlier sequences first). Also
    returns, per sequence, the nodes of its longest prefix that made it into the tree."""
    tokens: list[int] = []
    parents: list[int] = []
    index: dict[tuple[int, int], int] = {}
    paths: list[list[int]] = []
    for seq in seqs:
        parent, path = -1, []
        for t in seq:
            key = (parent, int(t))
            node = index.get(key)
            if node is None:
                if len(tokens) >= max_nodes:
                    break
                node = index[key] = len(tokens)
                tokens.append(int(t))
                parents.append(parent)
            path.append(node)
            parent = node
        paths.append(path)
    return DraftTree(tuple(tokens), tuple(parents)), paths


@dataclass
class _Chain:
    guess: list[int]  # guesses for positions root+1 .. root+N-1
    trail: list[tuple[int, ...]]  # per guess: the diagonal of guesses it descends from, itself last


class Lookahead:
    """Lookahead decoding: Jacobi chains and pool candidates verified in one tree forward."""

    name = "lookahead"

    def __init__(self, config: LookaheadConfig | None = None) -> None:
        self.config = config or LookaheadConfig()
        c = self.config
        self.pool = NGramPool(c.ngram, c.pool_per_key, c.max_keys, c.max_grams)
        self.chains: list[_Chain] = []
        self.rng = random.Random(c.seed)
        self._tree = DraftTree()
        self._paths: list[list[int]] = []  # per chain: its nodes in self._tree
        self._seen = 0  # committed tokens already pooled

    # ---- per request ------------------------------------------------------------------------
    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        c = self.config
        if not c.keep_state:
            self.pool = NGramPool(c.ngram, c.pool_per_key, c.max_keys, c.max_grams)
        self.rng = random.Random(c.seed)
        self.chains = [self._fresh_chain(prompt) for _ in range(c.window)]
        self._tree, self._paths = DraftTree(), []
        self._seen = 0
        self._pool_text(prompt)

    def _filler(self, context: Sequence[int]) -> int:
        return int(self.rng.choice(context)) if context else 0

    def _fresh_chain(self, context: Sequence[int]) -> _Chain:
        guess = [self._filler(context) for _ in range(self.config.ngram - 1)]
        return _Chain(guess, [(g,) for g in guess])

    def _pool_text(self, tokens: Sequence[int]) -> None:
        if self.config.pool_from_context and len(tokens) > self._seen:
            self.pool.add_text(tokens, start=self._seen)
        self._seen = len(tokens)

    # ---- one step ---------------------------------------------------------------------------
    def propose(self, ctx: ProposeContext) -> DraftTree:
        c = self.config
        self._pool_text(ctx.tokens)
        depth = min(c.ngram - 1, ctx.max_depth)
        max_nodes = min(c.max_nodes, ctx.max_nodes)
        if depth <= 0 or max_nodes <= 0:
            self._tree, self._paths = DraftTree(), [[] for _ in self.chains]
            return self._tree
        cands = [list(g[:depth]) for g in self.pool.lookup(ctx.tokens[-1], c.guesses)]
        seqs = cands + [ch.guess[:depth] for ch in self.chains]
        tree, paths = build_trie(seqs, max_nodes)
        self._tree, self._paths = tree, paths[len(cands) :]
        return tree

    def observe(self, result: StepResult) -> None:
        c = self.config
        n_new = len(result.verdict.tokens)
        root = len(result.tokens) - n_new - 1  # index of the step's root token
        evaluated = self._evaluated(result.draft)
        best: list[int] = [] if result.logits is None else argmax_rows(result.logits)
        context = result.tokens
        # the node-cap may leave chains out; their guesses are carried over unchanged
        for chain, path in zip(self.chains, self._paths or [[] for _ in self.chains]):
            checkpoint()  # a wide window takes a while: stoppable (see paradec.interrupt)
            path = [i for i in path if i < evaluated] if best else []
            # predictions by absolute position, with the trail that produced them
            # (the root's own prediction is for root + 1, which is always committed: unused)
            pred: dict[int, tuple[int, tuple[int, ...]]] = {}
            for j, node in enumerate(path):
                p = best[node + 1]
                trail = chain.trail[j]
                if len(trail) == c.ngram - 1:
                    self.pool.add(trail + (p,))
                pred[root + 2 + j] = (p, (trail + (p,))[-(c.ngram - 1) :])
            new_root = root + n_new
            guess, trail = [], []
            for pos in range(new_root + 1, new_root + c.ngram):
                if pos in pred:
                    g, tr = pred[pos]
                elif pos <= root + len(chain.guess):  # old guess, not evaluated this step
                    g, tr = chain.guess[pos - root - 1], chain.trail[pos - root - 1]
                else:
                    g = self._filler(context)
                    tr = (g,)
                guess.append(g)
                trail.append(tr)
            chain.guess, chain.trail = guess, trail
        # identical chains waste the window: restart duplicates from fresh guesses
        seen: set[tuple[int, ...]] = set()
        for i, chain in enumerate(self.chains):
            key = tuple(chain.guess)
            if key in seen:
                self.chains[i] = self._fresh_chain(context)
            seen.add(tuple(self.chains[i].guess))
        self._pool_text(result.tokens)

    def _evaluated(self, draft: DraftTree) -> int:
        """How many of the proposed nodes the target scored (the loop may only have cut the
        tree's tail; any other change and none of the chain nodes are trusted)."""
        mine = self._tree
        n = len(draft)
        if n <= len(mine) and draft.tokens == mine.tokens[:n] and draft.parents == mine.parents[:n]:
            return n
        return 0
