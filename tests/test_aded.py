"""ADED: the bounded n-gram table, the UCB tree search, adaptation, and losslessness (greedy
identity with plain AR, exact sampling distribution)."""

import pytest
import torch

from paradec.proposers.aded import ADED, ADEDConfig, NGramTable, search_tree
from paradec.proposers.base import ProposeContext, StepResult
from paradec.sampling import SamplingParams
from paradec.tree import DraftTree
from paradec.verify import verify_greedy
from helpers.lossless import assert_identical_to_ar, assert_sampling_lossless


# ---- the n-gram table --------------------------------------------------------------------------
def test_trigram_counts_and_backoff():
    t = NGramTable(n=3)
    t.add_sequence([1, 2, 3, 1, 2, 4, 1, 2, 3])
    assert t.counts([1, 2]) == {3: 2.0, 4: 1.0}
    assert t.counts([9, 9, 2, 3]) == {1: 1.0}  # only the last n - 1 tokens matter
    assert t.top([5, 1, 2], 1) == [(3, pytest.approx(2 / 3))]
    assert t.top([5, 1, 2], 5) == [(3, pytest.approx(2 / 3)), (4, pytest.approx(1 / 3))]
    # unseen (7, 2): back off to the bigram context (2,)
    assert t.counts([7, 2]) == {3: 2.0, 4: 1.0}
    strict = NGramTable(n=3, backoff=False)
    strict.add_sequence([1, 2, 3, 1, 2, 4])
    assert strict.counts([7, 2]) == {} and strict.counts([1, 2]) == {3: 1.0, 4: 1.0}
    assert len(strict) == 3  # (1,2) (2,3) (3,1): only full-length contexts
    t.add([1, 2], 4, weight=0.5)
    assert t.counts([1, 2]) == {3: 2.0, 4: 1.5}


def test_table_is_bounded_lru():
    t = NGramTable(n=2, max_contexts=4, max_next=2)
    for x in range(10):
        t.add([x], x + 1)
    assert len(t) == 4
    assert t.counts([5]) == {} and t.counts([9]) == {10: 1.0}  # least recently updated evicted
    t.add([6], 0)  # refresh (6,): now 7 is the oldest
    t.add([20], 21)
    assert t.counts([6]) == {7: 1.0, 0: 1.0} and t.counts([7]) == {}
    # next tokens per context: the smallest count goes, the newcomer stays
    t.add([6], 7)
    t.add([6], 3)
    assert t.counts([6]) == {7: 2.0, 3: 1.0}


# ---- the tree search ---------------------------------------------------------------------------
def _table(pairs):
    """A bigram table from (context token, next token, count)."""
    t = NGramTable(n=2)
    for a, b, c in pairs:
        t.add([a], b, float(c))
    return t


def test_search_respects_caps_and_is_a_trie():
    t = NGramTable(n=3)
    t.add_sequence([i * 7 % 11 for i in range(60)] + [i * 3 % 11 for i in range(60)])
    for nodes, depth in [(1, 1), (7, 3), (30, 5), (30, 1)]:
        tree = search_tree(t, [0, 7], nodes, depth, explore=1.0, branch=3)
        assert 0 < len(tree) <= nodes and tree.depth <= depth
        for kids in tree.children():  # no duplicate siblings, at most `branch` of them
            toks = [tree.tokens[k] for k in kids]
            assert len(toks) == len(set(toks)) <= 3
    # nothing known about the context: empty draft
    assert len(search_tree(t, [42], 10, 4, 1.0, 3)) == 0
    assert len(search_tree(NGramTable(n=3), [1, 2], 10, 4, 1.0, 3)) == 0


def test_search_prefers_frequent_continuations():
    t = _table([(0, 1, 10), (0, 2, 1), (1, 3, 10), (3, 4, 10), (4, 5, 10)])
    assert search_tree(t, [0], 1, 4, explore=0.5, branch=4).tokens == (1,)
    greedy = search_tree(t, [0], 3, 4, explore=0.0, branch=4)
    assert greedy.is_chain and greedy.tokens == (1, 3, 4)
    # the most likely child comes first among siblings (verification tries it first)
    wide = search_tree(t, [0], 6, 4, explore=2.0, branch=4)
    assert wide.tokens[wide.children()[0][0]] == 1


def test_search_explores_less_visited_branches():
    t = _table([(0, 1, 10), (0, 2, 4), (1, 3, 10), (3, 4, 10), (4, 5, 10), (2, 6, 10)])
    exploit = search_tree(t, [0], 4, 6, explore=0.0, branch=4)
    assert exploit.tokens == (1, 3, 4, 5)  # the chain, never the sibling
    explore = search_tree(t, [0], 4, 6, explore=1.0, branch=4)
    roots = [explore.tokens[k] for k in explore.children()[0]]
    assert roots == [1, 2]  # the less likely, unvisited branch got a node
    assert explore.tokens[0] == 1


# ---- the proposer: learning and adaptation ------------------------------------------------------
def _markov(x: int) -> int:
    return (3 * x + 1) % 17


def _simulate(proposer, prompt, steps, vocab=17, max_nodes=16):
    """Decode against a fake deterministic target whose greedy next token is _markov(last);
    returns the accepted count per step."""
    proposer.begin(list(prompt), SamplingParams())
    tokens, accepted = list(prompt), []
    for _ in range(steps):
        ctx = ProposeContext(tokens, len(prompt), max_nodes, 32, SamplingParams())
        draft = proposer.propose(ctx).truncated(max_nodes)
        inputs = draft.input_ids(tokens[-1])
        logits = torch.full((len(inputs), vocab), -1.0, dtype=torch.float64)
        for i, x in enumerate(inputs):
            logits[i, _markov(x)] = 1.0
        verdict = verify_greedy(draft, logits)
        tokens.extend(verdict.tokens)
        proposer.observe(StepResult(draft, verdict, tokens, logits))
        accepted.append(len(verdict.accepted))
    return tokens, accepted


def test_learns_the_target_and_drafts_deep():
    p = ADED(ADEDConfig(n=2, seed_prompt=False, max_depth=6, explore=0.3))
    tokens, accepted = _simulate(p, [0, 5, 9], steps=24)
    assert all(b == _markov(a) for a, b in zip(tokens[2:], tokens[3:]))
    # the top-1 of every context is the target's choice (committed tokens and free logits)
    for x in range(17):
        top = p.table.top([x], 1)
        assert not top or top[0][0] == _markov(x)
    assert accepted[:3] == [0, 0, 0]  # nothing known yet
    assert accepted[-4:] == [6, 6, 6, 6]  # the whole cycle learnt: full-depth drafts accepted


def test_learns_from_logits_of_unaccepted_nodes():
    draft = DraftTree.from_sequences([[5, 6], [7]])  # nodes: 0:5, 1:6 (under 0), 2:7
    logits = torch.zeros(4, 10)
    for row, best in enumerate([5, 9, 8, 3]):  # root -> 5, node0 -> 9, node1 -> 8, node2 -> 3
        logits[row, best] = 1.0
    verdict = verify_greedy(draft, logits)
    assert verdict.accepted == (0,) and verdict.next_token == 9
    for learn in (True, False):
        p = ADED(ADEDConfig(n=2, learn_from_logits=learn, logit_weight=0.5))
        p.begin([0], SamplingParams())
        p.observe(StepResult(draft, verdict, [0, 5, 9], logits))
        assert p.table.counts([0]) == {5: 1.0} and p.table.counts([5]) == {9: 1.0}  # committed
        assert p.table.counts([6]) == ({8: 0.5} if learn else {})  # rejected node
        assert p.table.counts([7]) == ({3: 0.5} if learn else {})  # node off the accepted path


def test_adapts_and_resets_per_request():
    p = ADED(ADEDConfig(explore=0.5, max_depth=6, min_depth=2))
    p.begin([1, 2, 3, 1, 2], SamplingParams())
    draft = p.propose(ProposeContext([1, 2, 3, 1, 2], 5, 16, 16, SamplingParams()))
    assert len(draft) > 0 and draft.tokens[0] == 3
    logits = torch.zeros(len(draft) + 1, 8)
    logits[0, 7] = 1.0  # the target rejects everything
    p.observe(StepResult(draft, verify_greedy(draft, logits), [1, 2, 3, 1, 2, 7], logits))
    assert p.explore > 0.5 and p.depth_cap == 5  # explore more, draft shallower
    good = p.propose(ProposeContext([1, 2, 3, 1, 2, 7, 1, 2], 5, 16, 16, SamplingParams()))
    logits = torch.zeros(len(good) + 1, 8)
    path = good.paths()[0]
    for row, node in enumerate([-1, *path]):  # the target follows the first path, then 7
        logits[row, good.tokens[path[row]] if row < len(path) else 7] = 1.0
    explore = p.explore
    verdict = verify_greedy(good, logits)
    assert len(verdict.accepted) == len(path)
    p.observe(StepResult(good, verdict, [1, 2, 3, 1, 2, 7, 1, 2, *verdict.tokens], logits))
    assert p.explore < explore
    p.begin([4, 4], SamplingParams())
    assert p.explore == 0.5 and p.depth_cap == 6 and p.table.counts([1, 2]) == {}
    kept = ADED(ADEDConfig(keep_state=True))
    kept.begin([1, 2, 3, 1, 2], SamplingParams())
    kept.begin([4, 4], SamplingParams())
    assert kept.table.counts([1, 2]) == {3: 1.0}


def test_config_validation():
    for bad in [dict(n=1), dict(min_depth=0), dict(min_depth=5, max_depth=4), dict(explore=3.0), dict(branch=0)]:
        with pytest.raises(ValueError):
            ADEDConfig(**bad)


# ---- losslessness -------------------------------------------------------------------------------
CONFIGS = {
    "default": ADEDConfig(),
    "bigram-strict": ADEDConfig(n=2, backoff=False, explore=1.0),
    "4gram-small": ADEDConfig(n=4, max_nodes=5, max_depth=3, learn_from_logits=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_identical_to_ar(name, target, reference):
    accepted = assert_identical_to_ar(target, reference, lambda: ADED(CONFIGS[name]), f"aded {name}")
    assert accepted > 0, "no token accepted: the test would not exercise acceptance"


def test_sampling_is_lossless(s_target):
    assert_sampling_lossless(s_target, lambda: ADED())
