"""Shape a draft tree to a grammar, before the target forward.

Walk the tree depth-first with one matcher (consume a node's token going down, roll it back
coming up): a node whose token the grammar rejects after its parent's path is pruned with its
subtree (it would take a verification slot and could never be accepted). Every kept node
records its mask, the grammar state after its path, which verification applies to that node's
logits row (sampling; greedy verification computes only the masks of the rows it reads, see
``with_masks``). Then, where the grammar forces the next tokens (its fast-forward tokens: the bytes
it allows are fixed) and no kept child starts them, they are added as a chain of deterministic
draft nodes: free drafts, verified like any other.

Forced bytes are more than forced tokens: after ``"age":`` the grammar fixes the bytes `` "``
but not the token, since a token may join them to what follows (`` "J``). So the chain goes on
with the tokens of the forced bytes that are not forced (``tokenize``: the tokenizer's own
spelling of those bytes, usually the one the model writes), as *likely* nodes: a guess like
any drafter's, taken only where the grammar's mask allows it, and verified like any other node
(lossless either way; it only costs a verification slot when wrong). On the structured suite
this spelling was the model's next token 33 times in 57 (a forward saved each time).

Kept nodes keep their order and come first, so a tree the grammar allows whole is unchanged;
the grammar's nodes (forced, then likely, chain by chain) follow them. A kept sampled node's draft distribution is restricted to the tokens
the grammar allows there and renormalized: a kept sample is a sample of that restricted
distribution (the samples the grammar rejected were dropped), which keeps rejection sampling
exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..tree import DraftTree
from . import masks


@dataclass(frozen=True)
class Shaped:
    tree: DraftTree
    rows: torch.Tensor | None  # [n+1, words] int32: row 0 the root's state, row i+1 the state after node i (None: not computed)
    kept: int  # nodes of the proposer's draft kept (the first ``kept`` nodes of ``tree``)
    pruned: int  # nodes of the proposer's draft dropped
    forced_nodes: frozenset[int] = frozenset()  # which of the nodes after the kept ones are forced (the rest: likely)

    @property
    def forced(self) -> int:
        """Forced nodes the grammar added."""
        return len(self.forced_nodes)

    @property
    def likely(self) -> int:
        """Likely nodes the grammar added (the forced bytes' tokens that are not forced)."""
        return len(self.tree) - self.kept - self.forced


def _takes(m, row: torch.Tensor | None, t: int) -> bool:
    """Whether matcher ``m`` takes token ``t`` (if so, it has consumed it): by the mask ``row`` of
    its state and its parser, or (no row: shaped for greedy) by its parser alone."""
    if row is None:
        return m.try_consume_tokens([t]) == 1
    return masks.allowed(row, t) and m.consume_token(t)


def _chain_after(matcher, tokenize) -> tuple[list[int], int]:
    """The grammar's chain at ``matcher``'s state: its forced tokens, then (with ``tokenize``)
    the likely ones spelling the rest of the forced bytes; and how many are forced."""
    ff = [int(t) for t in matcher.compute_ff_tokens()]
    if tokenize is not None and (fb := matcher.compute_ff_bytes()):
        spelled = [int(t) for t in tokenize(bytes(fb))]
        if spelled[: len(ff)] == ff:
            return spelled, len(ff)
    return ff, len(ff)


def shape_draft(
    matcher, draft: DraftTree, max_nodes: int, max_depth: int, vocab: int, tokenize: Callable[[bytes], list[int]] | None = None,
    with_masks: bool = True,
) -> Shaped:
    """``matcher`` sits at the committed state (the step's root) and is left there. ``tokenize``
    (bytes -> token ids): spells the forced bytes for the likely nodes (None: forced tokens only).
    ``with_masks=False``: no mask rows (``rows`` None) and no restricted draft distributions, for
    greedy verification, which computes the masks of the rows it reads itself
    (``Guide.greedy_best``); a node is then kept when the grammar's parser takes its token, a
    test a little wider than the mask (a token kept that the mask rules out costs a slot but is
    never accepted: the masked argmax cannot be it)."""
    n = len(draft)
    kids = draft.children()
    rows = masks.new_rows(n + 1, vocab) if with_masks else None  # by proposer index + 1 (0 = root)
    if with_masks:
        masks.fill(matcher, rows, 0)
    keep: list[int] = []
    forks: list[tuple[int, int, list[int], int, object]] = []  # (proposer node or -1, depth, chain, forced in it, matcher)

    def visit(node: int, depth: int) -> None:  # the matcher is at ``node``'s state
        kept_tokens = set()
        for c in kids[node + 1]:
            t = draft.tokens[c]
            if depth < max_depth and _takes(matcher, None if rows is None else rows[node + 1], t):
                keep.append(c)
                kept_tokens.add(t)
                if rows is not None:
                    masks.fill(matcher, rows, c + 1)
                visit(c, depth + 1)
                matcher.rollback(1)
        if depth < max_depth and max_nodes > 0:  # (no room for forced tokens: ar, the baseline)
            chain, n_forced = _chain_after(matcher, tokenize)
            if chain and chain[0] not in kept_tokens:
                forks.append((node, depth, chain, n_forced, matcher.deep_copy()))

    visit(-1, 0)
    keep = sorted(keep)[:max_nodes]
    index = {old: new for new, old in enumerate(keep)}
    tokens = [draft.tokens[i] for i in keep]
    parents = [-1 if draft.parents[i] < 0 else index[draft.parents[i]] for i in keep]
    out_rows = None if rows is None else [rows[0]] + [rows[i + 1] for i in keep]
    forced_nodes = _add_chains(forks, index, tokens, parents, out_rows, max_nodes - len(keep), max_depth, vocab)
    q = None if draft.q is None or out_rows is None else _restricted_q(draft.q, keep, parents, out_rows, len(tokens))
    tree = DraftTree(tuple(tokens), tuple(parents), q)
    return Shaped(tree, None if out_rows is None else torch.stack(out_rows), len(keep), n - len(keep), frozenset(forced_nodes))


def _add_chains(forks, index: dict[int, int], tokens: list[int], parents: list[int], out_rows: list | None, room: int,
                max_depth: int, vocab: int) -> set[int]:
    """Append the grammar's chains (the root's first, then in node order, while ``room`` lasts)
    to ``tokens``/``parents`` (and their mask rows to ``out_rows``); returns the forced nodes."""
    forced_nodes: set[int] = set()
    for node, depth, chain, n_forced, m in sorted(forks, key=lambda f: f[0]):
        if room <= 0:
            break
        if node >= 0 and node not in index:
            continue
        parent = -1 if node < 0 else index[node]
        for k, t in enumerate(chain[: min(room, max_depth - depth)]):
            # a likely token the mask rules out could never be accepted (the mask is the constraint)
            if not _takes(m, None if out_rows is None else out_rows[parent + 1], t):
                break
            if k < n_forced:
                forced_nodes.add(len(tokens))
            tokens.append(t)
            parents.append(parent)
            parent = len(tokens) - 1
            if out_rows is not None:
                extra = masks.new_rows(1, vocab)
                masks.fill(m, extra, 0)
                out_rows.append(extra[0])
            room -= 1
    return forced_nodes


def _restricted_q(q_draft: torch.Tensor, keep: list[int], parents: list[int], out_rows: list, n: int) -> torch.Tensor:
    """Draft distributions [n, V]: each kept node's restricted to what the grammar allows at its
    parent and renormalized; the grammar's nodes (deterministic) zero."""
    q = q_draft.new_zeros(n, q_draft.shape[1])
    if keep:
        parent_rows = torch.stack([out_rows[0 if p < 0 else p + 1] for p in parents[: len(keep)]])
        allow = masks.unpack(parent_rows, q_draft.shape[1]).to(q_draft.device)  # [kept, V]
        restricted = q_draft[keep] * allow
        mass = restricted.sum(-1, keepdim=True)
        q[: len(keep)] = torch.where(mass > 0, restricted / mass.clamp_min(1e-30), torch.zeros_like(restricted))
    return q
