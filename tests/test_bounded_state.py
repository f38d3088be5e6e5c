"""Bounded drafter state: every drafter that learns from the stream keeps its state under a
fixed cap, evicting the oldest entries, and stays exactly lossless while it evicts. Each drafter
gets a small cap and a stream several times longer (the prompt plus 120 generated tokens, and a
session of requests with ``keep_state``); its size is checked after every step."""

from __future__ import annotations

import pytest

from helpers.lossless import PROMPTS, VOCAB, run
from paradec.proposers.aded import ADED, ADEDConfig
from paradec.proposers.auto import AutoConfig, AutoDrafter
from paradec.proposers.base import NoDraft
from paradec.proposers.lookahead import Lookahead, LookaheadConfig
from paradec.proposers.pld import PLDConfig, PromptLookup
from paradec.proposers.recycle import RecycleConfig, TokenRecycling
from paradec.proposers.suffix import SuffixConfig, SuffixDrafter

LONG = 120


def pld_size(d):
    assert d._buf.size <= 2 * d.config.max_window
    return d.size


def suffix_size(d):
    assert d.sam.n_states <= 2 * d.config.max_tokens
    return d.sam.n


def lookahead_size(d):
    pool = d.pool
    assert pool.keys <= pool.max_keys and all(len(v) <= pool.per_key for v in pool._pool.values())
    assert len(pool) == sum(len(v) for v in pool._pool.values())  # the O(1) count is exact
    return len(pool)


def aded_size(d):
    assert all(len(v) <= d.config.max_next for v in d.table._counts.values())
    return len(d.table)


def recycle_size(d):
    return d.nbytes


def auto_size(d):
    return d.lookup.sam.n


# name -> (drafter with a small cap, its size, the cap)
CASES = {
    "pld": (lambda **kw: PromptLookup(PLDConfig(max_window=16)), pld_size, 32),
    "suffix": (lambda **kw: SuffixDrafter(SuffixConfig(max_tokens=32, **kw)), suffix_size, 32),
    "lookahead": (lambda **kw: Lookahead(LookaheadConfig(max_grams=24, max_keys=12, **kw)), lookahead_size, 24),
    "aded": (lambda **kw: ADED(ADEDConfig(max_contexts=16, max_next=3, **kw)), aded_size, 16),
    "recycle": (lambda **kw: TokenRecycling(RecycleConfig(**kw)), recycle_size, VOCAB * 8 * 4),
    "auto": (lambda **kw: AutoDrafter(None, AutoConfig(max_tokens=32)), auto_size, 32),
}
KEEPS_STATE = ("suffix", "lookahead", "aded", "recycle")


class Watched:
    """Passes a drafter through and records its size after every step."""

    def __init__(self, inner, size):
        self.inner, self.size, self.sizes = inner, size, []
        self.name = inner.name

    def begin(self, prompt, sampling):
        self.inner.begin(prompt, sampling)
        self.sizes.append(self.size(self.inner))

    def propose(self, ctx):
        return self.inner.propose(ctx)

    def observe(self, result):
        self.inner.observe(result)
        self.sizes.append(self.size(self.inner))


@pytest.fixture(scope="module")
def long_reference(target):
    return {tuple(p): run(target, NoDraft(), p, n=LONG)[0] for p in PROMPTS}


@pytest.mark.parametrize("name", list(CASES))
def test_long_request_stays_under_the_cap_and_identical_to_ar(name, target, long_reference):
    make, size, cap = CASES[name]
    accepted, peak = 0, 0
    for p in PROMPTS:
        d = Watched(make(), size)
        out, stats = run(target, d, p, n=LONG)
        assert out == long_reference[tuple(p)], f"{name} diverged from ar on prompt {p}"
        assert max(d.sizes) <= cap, (name, max(d.sizes), cap)
        assert len(p) + LONG > 4 * 16  # the stream is far longer than the small caps
        accepted += stats.accepted
        peak = max(peak, max(d.sizes))
    assert accepted > 0, f"{name} never drafted an accepted token"
    if name != "recycle":  # recycle's matrix is allocated at its fixed size once
        assert peak > cap // 2, f"{name} never came near its cap: the test does not exercise eviction"


@pytest.mark.parametrize("name", KEEPS_STATE)
def test_session_with_kept_state_stays_under_the_cap_and_identical_to_ar(name, target, long_reference):
    make, size, cap = CASES[name]
    d = Watched(make(keep_state=True), size)
    for _ in range(2):
        for p in PROMPTS:
            out, _ = run(target, d, p, n=LONG)
            assert out == long_reference[tuple(p)], f"{name} (keep_state) diverged from ar on prompt {p}"
    assert max(d.sizes) <= cap and len(d.sizes) > 2 * len(PROMPTS) * 10


def test_pld_window_keeps_the_newest_tokens():
    d = PromptLookup(PLDConfig(max_window=8))
    d.begin([], None)
    toks = list(range(100, 130))
    for end in range(1, len(toks) + 1):
        window = d._sync(toks[:end])
        assert window.tolist() == toks[max(0, end - 8) : end]
        assert d.size <= 16
    # a jump longer than the window keeps only its newest tokens
    window = d._sync(toks + list(range(200, 220)))
    assert window.tolist() == list(range(212, 220)) and d.size <= 16
    # below the window the whole request is searched, as before
    d = PromptLookup()
    d.begin([1, 2, 3], None)
    assert d._sync(list(range(1000))).tolist() == list(range(1000))


def test_lookahead_pool_total_cap_evicts_the_oldest_of_the_stalest_key():
    from paradec.proposers.lookahead import NGramPool

    pool = NGramPool(2, per_key=4, max_keys=100, max_grams=5)
    for gram in ([1, 10], [1, 11], [2, 20], [2, 21], [3, 30]):
        pool.add(gram)
    assert len(pool) == 5
    pool.add([3, 31])  # over the total: key 1 is the stalest, its oldest (10,) goes
    assert len(pool) == 5 and pool.lookup(1, 5) == [(11,)]
    pool.add([3, 32])
    assert len(pool) == 5 and pool.lookup(1, 5) == [] and pool.keys == 2  # an emptied key goes too
    pool.add([2, 20])  # re-adding moves it, the total does not change
    assert len(pool) == 5 and pool.lookup(2, 5) == [(20,), (21,)]
