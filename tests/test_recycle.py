"""``recycle``: the adjacency matrix (updates from logits, row-to-token mapping, memory), the
template tree walk, and the drafter's losslessness through the decode loop."""

from collections import Counter

import pytest
import torch

from paradec.proposers.base import ProposeContext, StepResult
from paradec.proposers.recycle import (
    RecycleConfig,
    TokenRecycling,
    default_template,
    parse_template,
    template_depths,
)
from paradec.sampling import SamplingParams
from paradec.tree import DraftTree
from paradec.verify import Verdict
from helpers.lossless import assert_identical_to_ar, assert_sampling_lossless


def ranked_logits(rankings, vocab=10):
    """Logits [n, vocab] whose row i ranks the tokens rankings[i] first, in that order."""
    out = torch.zeros(len(rankings), vocab, dtype=torch.float64)
    for i, ids in enumerate(rankings):
        for r, t in enumerate(ids):
            out[i, t] = 10.0 - r
    return out


def ctx(tokens, max_nodes=64, max_depth=64):
    return ProposeContext(list(tokens), 1, max_nodes, max_depth, SamplingParams())


# ---- the matrix ---------------------------------------------------------------------------
def test_update_writes_top_k_rows():
    tr = TokenRecycling(RecycleConfig(k=3))
    tr.update([4, 7], ranked_logits([[2, 5, 9], [1, 0, 3]]))
    assert tr.M.shape == (10, 3) and tr.M.dtype.name == "int32"
    assert tr.M[4].tolist() == [2, 5, 9] and tr.M[7].tolist() == [1, 0, 3]
    assert (tr.M[[0, 1, 2, 3, 5, 6, 8, 9]] == -1).all()  # never written: empty
    tr.update([4], ranked_logits([[8, 6, 1]]))  # newer rows replace older ones
    assert tr.M[4].tolist() == [8, 6, 1] and tr.M[7].tolist() == [1, 0, 3]


def test_update_precedence_for_repeated_tokens():
    tr = TokenRecycling(RecycleConfig(k=2))
    logits = ranked_logits([[1, 2], [3, 4], [5, 6]])
    tr.update([4, 4, 4], logits, order=[2, 0, 1])  # row 1 has the highest precedence
    assert tr.M[4].tolist() == [3, 4]
    tr.update([4, 4, 4], logits)  # default: row order, the last row wins
    assert tr.M[4].tolist() == [5, 6]


def test_k_larger_than_vocab_leaves_empty_ranks():
    tr = TokenRecycling(RecycleConfig(k=8))
    tr.update([0], ranked_logits([[3, 1, 2, 0]], vocab=4))
    assert tr.M[0].tolist() == [3, 1, 2, 0, -1, -1, -1, -1]


def test_observe_maps_each_logits_row_to_the_token_it_follows():
    tr = TokenRecycling(RecycleConfig(k=2))
    # committed ... 9 (root), then draft: node0=5 (root's child), node1=6 (under 5), node2=7 (root's child)
    draft = DraftTree((5, 6, 7), (-1, 0, -1))
    verdict = Verdict(accepted=(0,), accepted_tokens=(5,), next_token=8, bonus=False)
    tokens = [1, 2, 9, 5, 8]  # the step committed 5 and 8 after the root 9
    logits = ranked_logits([[5, 1], [8, 2], [3, 4], [6, 0]])  # after 9, after 5, after 6, after 7
    tr.observe(StepResult(draft, verdict, tokens, logits))
    assert tr.M[9].tolist() == [5, 1]
    assert tr.M[5].tolist() == [8, 2]
    assert tr.M[6].tolist() == [3, 4]
    assert tr.M[7].tolist() == [6, 0]


def test_observe_prefers_the_accepted_path_for_repeated_tokens():
    tr = TokenRecycling(RecycleConfig(k=2))
    # root 3; draft node0=4 (rejected branch), node1=4 (accepted, a sibling), node2=4 (under node0)
    draft = DraftTree((4, 4, 4), (-1, -1, 0))
    verdict = Verdict(accepted=(1,), accepted_tokens=(4,), next_token=0, bonus=True)
    logits = ranked_logits([[4, 1], [5, 6], [7, 8], [9, 2]])
    tr.observe(StepResult(draft, verdict, [3, 4, 0], logits))
    assert tr.M[4].tolist() == [7, 8]  # row 2 (node 1, accepted) beats rows 1 and 3


def test_memory_bound_for_the_default_vocab():
    tr = TokenRecycling()
    tr.update([0], torch.zeros(1, 49152))
    assert tr.nbytes == 49152 * 8 * 4 == 1_572_864 < 2 * 2**20


# ---- the template walk ----------------------------------------------------------------------
def test_tree_from_template():
    tr = TokenRecycling(RecycleConfig(k=2, template="-1:0 -1:1 0:0 0:1 1:0 2:0"))
    tr.update([1, 2, 3, 4], ranked_logits([[2, 3], [4, 5], [6, 7], [8, 9]]))
    tree = tr.propose(ctx([0, 1]))
    # root 1 -> 2, 3; 2 -> 4, 5; 3 -> 6; 4 -> 8
    assert tree.tokens == (2, 3, 4, 5, 6, 8) and tree.parents == (-1, -1, 0, 0, 1, 2)


def test_tree_skips_empty_rows_with_their_subtree():
    tr = TokenRecycling(RecycleConfig(k=2, template="-1:0 -1:1 0:0 1:0 2:0 3:0"))
    tr.update([1, 3], ranked_logits([[2, 3], [6, 7]]))  # row 2 never written
    tree = tr.propose(ctx([1]))
    assert tree.tokens == (2, 3, 6) and tree.parents == (-1, -1, 1)


def test_tree_respects_context_limits():
    tr = TokenRecycling()
    tr.update(list(range(10)), ranked_logits([[(i + j) % 10 for j in range(8)] for i in range(10)]))
    full = tr.propose(ctx([0]))
    assert len(full) == 64 and full.depth == 8  # every row is full: the whole default template
    assert tr.propose(ctx([0], max_nodes=5)).tokens == full.tokens[:5]  # the template's best nodes
    assert tr.propose(ctx([0], max_depth=2)).depth == 2
    assert len(tr.propose(ctx([0], max_nodes=10, max_depth=2))) == 10


def test_default_template_shape():
    t = default_template()
    depth = template_depths(t)
    assert len(t) == 64 and all(-1 <= p < i for i, (p, _) in enumerate(t))
    per_depth = Counter(depth)
    assert [per_depth[d] for d in range(1, 9)] == [8, 16, 16, 9, 6, 7, 1, 1]
    kids_of_first = sum(1 for p, _ in t if p == 0)
    assert per_depth[1] == 8 and all(sum(1 for p, _ in t if p == i) <= kids_of_first for i in range(len(t)))


def test_template_parsing_and_validation():
    assert parse_template("-1:0, -1:1 0:0") == ((-1, 0), (-1, 1), (0, 0))
    with pytest.raises(ValueError, match="parent"):
        RecycleConfig(template="0:0")
    with pytest.raises(ValueError, match="rank"):
        RecycleConfig(k=2, template="-1:2")
    with pytest.raises(ValueError, match="parent:rank"):
        RecycleConfig(template="-1")


def test_state_per_request():
    tr = TokenRecycling()
    assert len(tr.propose(ctx([1]))) == 0  # nothing observed yet: empty draft
    tr.update([1], ranked_logits([list(range(8))]))
    assert len(tr.propose(ctx([1]))) > 0
    tr.begin([1], SamplingParams())
    assert tr.M is None and len(tr.propose(ctx([1]))) == 0
    keep = TokenRecycling(RecycleConfig(keep_state=True))
    keep.update([1], ranked_logits([list(range(8))]))
    keep.begin([1], SamplingParams())
    assert len(keep.propose(ctx([1]))) > 0


# ---- losslessness through the decode loop --------------------------------------------------
@pytest.mark.parametrize("config", [RecycleConfig(), RecycleConfig(keep_state=True, k=3, nodes=12)])
def test_greedy_identical_to_ar(config, target, reference):
    d = TokenRecycling(config)  # one drafter for all prompts (state kept across them or not)
    assert assert_identical_to_ar(target, reference, lambda: d, f"recycle {config}") > 0


def test_sampling_is_lossless(s_target):
    # One drafter with keep_state learns across trials, so it drafts at most steps (a fresh one
    # would draft little in 3 tokens). Samples stay i.i.d.: every trial's output follows the
    # target exactly whatever the draft.
    shared = TokenRecycling(RecycleConfig(keep_state=True))
    assert_sampling_lossless(s_target, lambda: shared)
