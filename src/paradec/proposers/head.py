"""``head``: a trained draft head on the target's hidden states drafts a tree (EAGLE-style).

The proposer runs the verifying forward itself (``fused_forward``), asking the target for its
last hidden states as well as its logits. After verification, the hidden state of the last
accepted input (the one whose logits chose the bonus token) and the bonus token are all the
head needs: it predicts the next feature and the token after the bonus, then runs on its own
predictions, depth by depth (heads/model.py).

The tree grows like EAGLE-2's: at each depth the ``beam`` candidates with the highest path
probability (product of the head's probabilities along the path) are expanded into their
``width`` most probable next tokens, all in one batched head step; the draft is the ``nodes``
candidates with the highest path probability (a parent is always at least as probable as its
child, so that set is a tree). The first step of a request drafts nothing: its forward yields
the first feature.

Lossless like every drafter here: candidates are deterministic (verification treats them
exactly under greedy and sampling alike), and the target cache is left exactly as a plain
forward leaves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..sampling import SamplingParams
from ..tree import DraftTree
from .base import ProposeContext, StepResult
from .suffix import SuffixDrafter


@dataclass(frozen=True)
class HeadConfig:
    head: str = "auto"  # a shipped head's name or a directory; auto = the one trained on this target
    depth: int = 6  # deepest draft token
    width: int = 4  # next tokens considered per expanded candidate
    beam: int = 4  # candidates expanded per depth (highest path probability)
    nodes: int = 12  # draft tree size (highest path probability among all candidates)
    min_prob: float = 0.0  # drop candidates whose path probability is below this
    lookup: int = 8  # add the suffix lookup's most probable path (up to this many tokens) as a branch; 0 = off

    def __post_init__(self) -> None:
        if self.depth < 1 or self.width < 1 or self.beam < 1 or self.nodes < 1:
            raise ValueError("head depth, width, beam and nodes must be >= 1")
        if not 0.0 <= self.min_prob < 1.0:
            raise ValueError("head min_prob must be in [0, 1)")
        if self.lookup < 0:
            raise ValueError("head lookup must be >= 0")


class HeadProposer:
    name = "head"

    def __init__(self, head, config: HeadConfig | None = None) -> None:
        self.head = head
        self.config = config or HeadConfig()
        self._ids = head.vocab_ids.tolist()  # kept position -> token id
        self._feature: torch.Tensor | None = None  # [H] the last accepted input's hidden state
        self._hidden: torch.Tensor | None = None  # [n+1, H] the last forward's hidden states
        self.lookup = SuffixDrafter() if self.config.lookup else None

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        self._feature = self._hidden = None
        if self.lookup is not None:
            self.lookup.begin(prompt, sampling)

    def fused_forward(self, target, step) -> torch.Tensor:
        """The verifying forward, keeping the hidden states: logits [n+1, V]."""
        logits, hidden = target.forward_hidden(step.ids, step.positions, step.cache, step.mask)
        self._hidden = hidden[0]  # [n+1, H]
        return logits[0]

    def observe(self, result: StepResult) -> None:
        if self.lookup is not None:
            self.lookup.observe(result)
        acc = result.verdict.accepted  # accepted draft nodes, root excluded
        last = 1 + acc[-1] if acc else 0  # the input whose logits chose the bonus token
        self._feature = None if self._hidden is None else self._hidden[last]
        self._hidden = None

    def propose(self, ctx: ProposeContext) -> DraftTree:
        tree = self._head_tree(ctx)
        if self.lookup is None:
            return tree
        # text that repeats (RAG, summaries, code edits) is the lookup's strength: its best path
        # joins the head's tree as one more branch, sharing the nodes where they agree
        chain = self.lookup.propose(ctx).first_path(min(self.config.lookup, ctx.max_depth))
        if len(chain) < 2:
            return tree
        paths = [[tree.tokens[i] for i in path] for path in tree.paths()]
        return DraftTree.from_sequences(paths + [chain], max_nodes=min(ctx.max_nodes, len(tree) + len(chain)))

    @torch.inference_mode()
    def _head_tree(self, ctx: ProposeContext) -> DraftTree:
        c = self.config
        depth, budget = min(c.depth, ctx.max_depth), min(c.nodes, ctx.max_nodes)
        if self._feature is None or depth < 1 or budget < 1:
            return DraftTree()
        head = self.head
        floor = math.log(c.min_prob) if c.min_prob > 0 else -math.inf
        feats = self._feature[None]  # [m, H]: what each frontier candidate steps from
        toks = torch.tensor([ctx.tokens[-1]])  # [m]: the token after each (the root first)
        base = torch.zeros(1)  # [m] path log-probability of each frontier candidate
        front = [-1]  # candidate index of each frontier row (-1 = the root)
        score: list[float] = []
        token: list[int] = []
        parent: list[int] = []
        level: list[int] = []
        for d in range(1, depth + 1):
            g = head.step(feats, toks.to(feats.device))  # [m, H]
            lp = torch.log_softmax(head.logits(g).float(), -1).cpu()  # [m, K]
            top_lp, top_k = lp.topk(min(c.width, lp.shape[-1]), -1)  # [m, w]
            paths = base[:, None] + top_lp  # [m, w]
            first = len(score)
            flat = paths.flatten().tolist()
            w = top_k.shape[1]
            for r, kk in enumerate(top_k.tolist()):
                for j, k in enumerate(kk):
                    score.append(flat[r * w + j])
                    token.append(self._ids[k])
                    parent.append(front[r])
                    level.append(d)
            if d == depth:
                break
            # expand the most probable of this depth's candidates next; a candidate no more
            # probable than the budget-th best so far cannot have a child in the draft
            cut = sorted(score, reverse=True)[budget - 1] if len(score) >= budget else -float("inf")
            order = torch.tensor(flat).topk(min(c.beam, len(flat))).indices.tolist()
            order = [i for i in order if flat[i] >= floor and flat[i] > cut]
            if not order:
                break
            rows = torch.tensor([i // w for i in order])
            feats = g[rows.to(g.device)]
            toks = torch.tensor([token[first + i] for i in order])
            base = torch.tensor([flat[i] for i in order])
            front = [first + i for i in order]
        # the draft: the most probable candidates. A parent is at least as probable as its child
        # and sorts first on ties (lower depth), so every kept node's parent is kept too.
        best = sorted(range(len(score)), key=lambda i: (-score[i], level[i], i))
        keep = [i for i in best[:budget] if score[i] >= floor]
        keep.sort(key=lambda i: (level[i], -score[i], i))  # topological: by depth
        index = {old: new for new, old in enumerate(keep)}
        return DraftTree(tuple(token[i] for i in keep), tuple(-1 if parent[i] < 0 else index[parent[i]] for i in keep))

