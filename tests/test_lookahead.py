"""Lookahead (Jacobi) decoding: the n-gram pool, the trie layout, the Jacobi update from the
step's logits, and losslessness (greedy identity with plain AR, exact sampling distribution)."""

import pytest
import torch

from paradec.proposers.base import ProposeContext, StepResult
from paradec.proposers.lookahead import Lookahead, LookaheadConfig, NGramPool, build_trie
from paradec.sampling import SamplingParams
from paradec.verify import verify_greedy
from helpers.lossless import assert_identical_to_ar, assert_sampling_lossless


# ---- the pool and the trie ---------------------------------------------------------------------
def test_pool_harvest_and_lookup():
    pool = NGramPool(3, per_key=2)
    pool.add_text([1, 2, 3, 1, 2, 4, 1, 2, 5])
    assert pool.lookup(1, 5) == [(2, 5), (2, 4)]  # most recent first; (2, 3) evicted (per_key)
    assert pool.lookup(2, 5) == [(4, 1), (3, 1)]
    assert pool.lookup(9, 5) == [] and pool.lookup(1, 1) == [(2, 5)]
    pool.add([1, 2, 4])  # re-adding makes it most recent
    assert pool.lookup(1, 5) == [(2, 4), (2, 5)]
    pool.add_text([7, 8, 9, 7], start=3)  # only n-grams ending at index >= 3
    assert pool.lookup(7, 5) == [] and pool.lookup(8, 5) == [(9, 7)]
    with pytest.raises(ValueError):
        pool.add([1, 2])


def test_pool_is_bounded():
    pool = NGramPool(2, per_key=3, max_keys=4)
    for x in range(10):
        pool.add([x, x + 1])
    assert len(pool) == 4 and pool.lookup(5, 1) == [] and pool.lookup(9, 1) == [(10,)]
    for y in range(10):
        pool.add([9, y])
    assert pool.lookup(9, 10) == [(9,), (8,), (7,)]


def test_build_trie_paths_and_cap():
    tree, paths = build_trie([[1, 2, 3], [1, 2, 4], [5, 6]], max_nodes=10)
    assert tree.tokens == (1, 2, 3, 4, 5, 6) and tree.parents == (-1, 0, 1, 1, -1, 4)
    assert paths == [[0, 1, 2], [0, 1, 3], [4, 5]]
    tree, paths = build_trie([[1, 2, 3], [1, 2, 4], [5, 6]], max_nodes=3)
    assert len(tree) == 3 and paths == [[0, 1, 2], [0, 1], []]


# ---- Jacobi iteration ---------------------------------------------------------------------------
def _step(p, tokens, logits_for, verdict=None, max_nodes=64):
    """Propose after ``tokens``, score every input with ``logits_for(token) -> argmax``, observe."""
    ctx = ProposeContext(list(tokens), 1, max_nodes, 32, SamplingParams())
    draft = p.propose(ctx)
    inputs = draft.input_ids(tokens[-1])
    logits = torch.zeros(len(inputs), 200)
    for i, x in enumerate(inputs):
        logits[i, logits_for(i, x)] = 1.0
    verdict = verdict or verify_greedy(draft, logits)
    new = list(tokens) + verdict.tokens
    p.observe(StepResult(draft, verdict, new, logits))
    return draft, verdict, new


def test_jacobi_update_from_hand_made_logits():
    p = Lookahead(LookaheadConfig(ngram=4, window=2, guesses=0, pool_from_context=False))
    p.begin([5], SamplingParams())
    p.chains[0].guess, p.chains[0].trail = [10, 11, 12], [(10,), (11,), (12,)]
    p.chains[1].guess, p.chains[1].trail = [20, 21, 22], [(20,), (21,), (22,)]
    # step 1: the target's greedy choice after x is x + 30 for chain tokens; root 5 -> 99
    draft, verdict, tokens = _step(p, [5], lambda i, x: 99 if i == 0 else x + 30)
    assert draft.tokens == (10, 11, 12, 20, 21, 22) and draft.parents == (-1, 0, 1, -1, 3, 4)
    assert verdict.accepted == () and tokens == [5, 99]
    # one token committed: the window moves one position, and the predictions made at
    # positions 1..3 (for positions 2..4) are the new guesses (the Jacobi update)
    assert p.chains[0].guess == [40, 41, 42] and p.chains[1].guess == [50, 51, 52]
    assert p.chains[0].trail == [(10, 40), (11, 41), (12, 42)]
    assert len(p.pool) == 0  # no trail of n - 1 = 3 tokens yet
    # step 2: trails grow along the diagonal
    _, _, tokens = _step(p, tokens, lambda i, x: 98 if i == 0 else x + 30)
    assert p.chains[0].guess == [70, 71, 72] and p.chains[0].trail[0] == (10, 40, 70)
    assert len(p.pool) == 0
    # step 3: a trail of 3 tokens + its prediction is a complete 4-gram
    _step(p, tokens, lambda i, x: 97 if i == 0 else x + 30)
    assert p.pool.lookup(10, 5) == [(40, 70, 100)] and p.pool.lookup(12, 5) == [(42, 72, 102)]
    assert p.pool.lookup(20, 5) == [(50, 80, 110)] and len(p.pool) == 6


def test_jacobi_window_shifts_by_committed_tokens():
    p = Lookahead(LookaheadConfig(ngram=5, window=1, guesses=0, pool_from_context=False))
    p.begin([5], SamplingParams())
    p.chains[0].guess, p.chains[0].trail = [10, 11, 12, 13], [(10,), (11,), (12,), (13,)]
    # the target accepts the chain's first two tokens (root -> 10 -> 11) and then says 77
    nxt = {0: 10, 1: 11, 2: 77, 3: 60, 4: 61}
    draft, verdict, tokens = _step(p, [5], lambda i, x: nxt[i])
    assert verdict.accepted == (0, 1) and tokens == [5, 10, 11, 77]
    # window now covers positions 4..7: predictions made at positions 3 and 4 survive, then old
    # guesses are gone (all evaluated), then filler
    assert p.chains[0].guess[:2] == [60, 61]
    assert all(g in tokens for g in p.chains[0].guess[2:])


def test_unevaluated_chain_nodes_keep_their_guesses():
    # a node cap that cuts the chain: the cut positions keep their old guesses
    p = Lookahead(LookaheadConfig(ngram=4, window=1, guesses=0, pool_from_context=False))
    p.begin([5], SamplingParams())
    p.chains[0].guess, p.chains[0].trail = [10, 11, 12], [(10,), (11,), (12,)]
    draft, _, _ = _step(p, [5], lambda i, x: 99 if i == 0 else x + 30, max_nodes=1)
    assert draft.tokens == (10,)
    assert p.chains[0].guess[:2] == [40, 12]  # position 2 predicted, position 3 carried over


def test_markov_target_pool_holds_exact_ngrams_and_acceptance_grows():
    """Against a first-order deterministic target, every harvested diagonal is a true n-gram."""

    def f(x):
        return (3 * x + 1) % 17

    p = Lookahead(LookaheadConfig(ngram=4, window=4, guesses=3, pool_from_context=False, seed=1))
    p.begin([0, 5, 9], SamplingParams())
    tokens, accepted = [0, 5, 9], []
    for _ in range(30):
        _, verdict, tokens = _step(p, tokens, lambda i, x: f(x))
        accepted.append(len(verdict.accepted))
    assert all(b == f(a) for a, b in zip(tokens[2:], tokens[3:]))
    grams = [(k, *c) for k in range(17) for c in p.pool.lookup(k, 100)]
    assert grams and all(g[i + 1] == f(g[i]) for g in grams for i in range(3))
    assert sum(accepted[-10:]) > sum(accepted[:10])
    assert max(accepted) == 3


def test_respects_caps_and_puts_candidates_first():
    p = Lookahead(LookaheadConfig(ngram=4, window=3, guesses=2, max_nodes=64))
    prompt = [1, 2, 3, 4, 1, 2, 5, 6, 1]
    p.begin(prompt, SamplingParams())
    full = p.propose(ProposeContext(prompt, len(prompt), 64, 32, SamplingParams()))
    assert full.tokens[:5] == (2, 5, 6, 3, 4)  # pool candidates of 1, most recent first
    assert len(full) <= 2 * 3 + 3 * 3 and full.depth == 3
    small = p.propose(ProposeContext(prompt, len(prompt), 4, 2, SamplingParams()))
    assert len(small) <= 4 and small.depth <= 2 and small.tokens[:3] == (2, 5, 3)


def test_resets_per_request_unless_keep_state():
    for keep in (False, True):
        p = Lookahead(LookaheadConfig(ngram=3, keep_state=keep))
        p.begin([1, 2, 3], SamplingParams())
        p.begin([7, 8], SamplingParams())
        assert p.pool.lookup(1, 5) == ([(2, 3)] if keep else [])
        assert all(g in (7, 8) for ch in p.chains for g in ch.guess)


# ---- losslessness -------------------------------------------------------------------------------
CONFIGS = {
    "default": LookaheadConfig(),
    "jacobi-only": LookaheadConfig(ngram=3, window=4, guesses=0, pool_from_context=False),
    "tiny-cap": LookaheadConfig(ngram=5, window=3, guesses=3, max_nodes=6),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_identical_to_ar(name, target, reference):
    accepted = assert_identical_to_ar(target, reference, lambda: Lookahead(CONFIGS[name]), f"lookahead {name}")
    assert accepted > 0, "no token accepted: the test would not exercise acceptance"


def test_sampling_is_lossless(s_target):
    assert_sampling_lossless(s_target, lambda: Lookahead())
