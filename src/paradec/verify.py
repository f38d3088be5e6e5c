"""Verification: target logits over a draft tree -> the tokens to commit. Pure functions.

Naming follows vLLM: *accepted* tokens are draft tokens the target keeps; after them comes one
token sampled by the target itself: the *bonus* token when the walk reached a leaf (every draft
token on the path was kept), the *recovered* token when the target rejected all children of the
node it stopped at (sampled from the residual distribution).

Sampling uses recursive rejection sampling over the tree (SpecInfer / multi-draft speculative
sampling). At a node with target distribution p, children are tried in order; child token x
with draft distribution q is accepted with probability min(1, p(x)/q(x)), and on rejection p
becomes normalize(max(p - q, 0)). A deterministic candidate is a point mass q = onehot(x): it is
accepted with probability p(x), and on rejection x is removed from p. Either way the committed
token follows p exactly, provided every sampled child was drawn from its q independently of
the coin flips. Greedy is the temperature-0 limit (p one-hot) and has a fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import DraftTree


@dataclass(frozen=True)
class Verdict:
    accepted: tuple[int, ...]  # node indices of accepted draft tokens, root to leaf
    accepted_tokens: tuple[int, ...]
    next_token: int  # the bonus or recovered token, committed after the accepted ones
    bonus: bool  # True: next_token is a bonus token (path ended at a leaf); False: recovered

    @property
    def tokens(self) -> list[int]:
        """Every token this step commits."""
        return [*self.accepted_tokens, self.next_token]


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """logits: [n+1, V] target logits at the root and at each node (input order)."""
    return verify_greedy_best(tree, argmax_rows(logits))


def argmax_rows(logits: torch.Tensor) -> list[int]:
    """The first maximal index of each row of [n, V] logits. On a CPU, numpy's (one thread, the
    same index: both take the first maximum): torch's reduction over a 49k vocabulary opens a
    parallel region, whose threads then spin on the cores the next forward needs."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64, torch.float16):
        return logits.detach().numpy().argmax(-1).tolist()
    return logits.argmax(-1).tolist()


def verify_greedy_best(tree: DraftTree, best: list[int]) -> Verdict:
    """``verify_greedy`` given the target's argmax at the root and at each node (``best``, n+1
    token ids in input order) instead of the logits."""
    children = tree.children()
    node, path = -1, []
    while True:
        want = best[node + 1]
        kids = children[node + 1]
        nxt = next((c for c in kids if tree.tokens[c] == want), None)
        if nxt is None:
            return Verdict(tuple(path), tuple(tree.tokens[i] for i in path), want, bonus=not kids)
        path.append(nxt)
        node = nxt


def verify_sampling(tree: DraftTree, probs: torch.Tensor, generator: torch.Generator) -> Verdict:
    """probs: [n+1, V] target distributions (after temperature/top-k/top-p) at the root and at
    each node. Exact for chains and trees, for sampled and deterministic drafts."""
    children = tree.children()
    q_all = None if tree.q is None else tree.q.to(probs.device)
    node, path = -1, []
    while True:
        p = probs[node + 1]
        kids = children[node + 1]
        accepted = None
        for c in kids:
            x = tree.tokens[c]
            q = None if q_all is None else q_all[c]
            qx = 0.0 if q is None else float(q[x])
            if qx <= 0.0:  # no draft distribution (or x outside it): a deterministic candidate
                q = None
            px = float(p[x])
            u = float(torch.rand((), generator=generator, device=generator.device))
            ratio = px if q is None else min(1.0, px / qx)
            if u < ratio:
                accepted = c
                break
            # rejected: move to the residual distribution
            if q is None:
                residual = p.clone()
                residual[x] = 0.0
            else:
                residual = (p - q.to(p.dtype)).clamp_(min=0.0)
            mass = float(residual.sum())
            if mass > 1e-12:
                p = residual / mass
            # else: p and q agree to rounding; rejection had probability ~0, keep p
        if accepted is not None:
            path.append(accepted)
            node = accepted
            continue
        nxt = int(torch.multinomial(p, 1, generator=generator))
        return Verdict(tuple(path), tuple(tree.tokens[i] for i in path), nxt, bonus=not kids)
