"""Draft trees. A chain is a degenerate tree.

A step of speculative decoding feeds the target one *root* token (the last committed token,
whose KV is not cached yet) followed by the draft nodes. Node ``i`` of a tree has a token and a
parent: ``-1`` means the root, otherwise an earlier node (nodes are topologically ordered, so
``parents[i] < i``). Tree positions are ``root_pos + depth``; every node attends to the cached
prefix, the root and its own ancestors.

Trees are small (tens of nodes), so the structure is kept in Python tuples; tensors are built
once per step for the forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass(frozen=True)
class DraftTree:
    tokens: tuple[int, ...] = ()
    parents: tuple[int, ...] = ()
    # Optional draft distributions: q[i] is the distribution node i's token was *sampled* from
    # (given its parent). A row of zeros, or q=None, marks a deterministic candidate (a point
    # mass), which verification treats exactly too.
    q: torch.Tensor | None = field(default=None, compare=False)  # [n, V] float

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("tokens and parents must have the same length")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i} has parent {p}; parents must precede their children")
        if self.q is not None and self.q.shape[0] != len(self.tokens):
            raise ValueError("q must have one row per node")

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def chain(cls, tokens: Sequence[int], q: torch.Tensor | None = None) -> "DraftTree":
        tokens = tuple(int(t) for t in tokens)
        return cls(tokens, tuple(range(-1, len(tokens) - 1)), q)

    @classmethod
    def from_sequences(cls, seqs: Sequence[Sequence[int]], max_nodes: int | None = None) -> "DraftTree":
        """Merge token sequences into a trie (shared prefixes become shared nodes).
        Earlier sequences take precedence: their nodes come first among siblings."""
        tokens: list[int] = []
        parents: list[int] = []
        index: dict[tuple[int, int], int] = {}  # (parent, token) -> node
        for seq in seqs:
            parent = -1
            for t in seq:
                key = (parent, int(t))
                node = index.get(key)
                if node is None:
                    if max_nodes is not None and len(tokens) >= max_nodes:
                        break
                    node = len(tokens)
                    index[key] = node
                    tokens.append(int(t))
                    parents.append(parent)
                parent = node
        return cls(tuple(tokens), tuple(parents))

    # ---- structure ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    def depths(self) -> list[int]:
        """Depth of each node; children of the root have depth 1."""
        d: list[int] = []
        for p in self.parents:
            d.append(1 if p < 0 else d[p] + 1)
        return d

    @property
    def depth(self) -> int:
        return max(self.depths(), default=0)

    def children(self) -> list[list[int]]:
        """children()[0] are the root's children; children()[i + 1] are node i's."""
        ch: list[list[int]] = [[] for _ in range(len(self.tokens) + 1)]
        for i, p in enumerate(self.parents):
            ch[p + 1].append(i)
        return ch

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to ``node`` (inclusive)."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def paths(self) -> list[list[int]]:
        """Every root-to-leaf path, as node indices."""
        ch = self.children()
        return [self.path_to(i) for i in range(len(self.tokens)) if not ch[i + 1]]

    def first_path(self, limit: int | None = None) -> list[int]:
        """Tokens along first children from the root (the most probable path of a best-first
        tree), at most ``limit`` of them."""
        kids = self.children()
        here, out = -1, []
        while kids[here + 1] and (limit is None or len(out) < limit):
            here = kids[here + 1][0]
            out.append(self.tokens[here])
        return out

    def match_length(self, seq: Sequence[int]) -> int:
        """How many leading tokens of ``seq`` a root-to-node path of this tree spells."""
        ch = self.children()
        here, n = -1, 0
        for t in seq:
            nxt = next((c for c in ch[here + 1] if self.tokens[c] == t), None)
            if nxt is None:
                break
            here, n = nxt, n + 1
        return n

    def truncated(self, max_nodes: int) -> "DraftTree":
        """The first ``max_nodes`` nodes (still a valid tree thanks to topological order)."""
        if len(self.tokens) <= max_nodes:
            return self
        q = None if self.q is None else self.q[:max_nodes]
        return DraftTree(self.tokens[:max_nodes], self.parents[:max_nodes], q)

    def limit_depth(self, max_depth: int) -> "DraftTree":
        """Drop nodes deeper than ``max_depth`` (keeps topological order)."""
        if max_depth <= 0:
            return DraftTree()
        d = self.depths()
        if max(d, default=0) <= max_depth:
            return self
        keep = [i for i in range(len(self.tokens)) if d[i] <= max_depth]
        remap = {old: new for new, old in enumerate(keep)}
        parents = tuple(-1 if self.parents[i] < 0 else remap[self.parents[i]] for i in keep)
        q = None if self.q is None else self.q[keep]
        return DraftTree(tuple(self.tokens[i] for i in keep), parents, q)

    # ---- tensors for the target forward ---------------------------------------------------
    def input_ids(self, root_token: int) -> list[int]:
        return [root_token, *self.tokens]

    def position_offsets(self) -> list[int]:
        """Offset of each input (root first) from the root's position."""
        return [0, *self.depths()]

    def ancestor_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Bool [n+1, n+1]: entry (i, j) is True when input j is input i or one of its ancestors
        (input 0 is the root)."""
        n = len(self.tokens) + 1
        if self.is_chain:  # lower triangle; not tril_(), which opens a parallel region (ms on a busy CPU)
            idx = torch.arange(n, device=device)
            return idx[:, None] >= idx[None, :]
        rows = [[False] * n for _ in range(n)]
        rows[0][0] = True
        for i, p in enumerate(self.parents):
            r = list(rows[p + 1])
            r[i + 1] = True
            rows[i + 1] = r
        return torch.tensor(rows, dtype=torch.bool, device=device)


def attention_mask(tree: DraftTree, prefix_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool [n+1, prefix_len + n + 1] mask for one step: all of the cached prefix, plus the
    tree's ancestor structure over the new inputs."""
    anc = tree.ancestor_mask(device)  # [n+1, n+1]
    prefix = torch.ones(anc.shape[0], prefix_len, dtype=torch.bool, device=device)
    return torch.cat([prefix, anc], dim=1)
