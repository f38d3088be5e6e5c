"""Unit tests of the commit rules, block schedules and edit / EOS rules on hand-made inputs."""

from __future__ import annotations

import pytest
import torch
from helpers.dllm import EOS, MASK, FakeDLM

from paradec.dllm.loop import Settings, generate
from paradec.dllm.policies import (
    AdaBlock,
    Credit,
    EditPolicy,
    Entropy,
    Factor,
    FixedBlocks,
    LocalLeap,
    Margin,
    Prophet,
    RandomK,
    StepContext,
    Threshold,
    TopK,
)
from paradec.dllm.methods import make_settings
from paradec.errors import ParadecError


def ctx_from(conf, cand=None, second=None, block_step=0, progress=0.0, V=8):
    """A StepContext for one sequence whose top-1 probabilities are ``conf`` (token 5) and top-2
    ``second`` (token 6), the rest spread evenly."""
    conf = torch.tensor([conf], dtype=torch.float64)
    G = conf.shape[1]
    second = torch.tensor([second], dtype=torch.float64) if second is not None else (1 - conf) / 2
    probs = torch.zeros(1, G, V, dtype=torch.float64)
    probs[..., 5], probs[..., 6] = conf, second
    rest = (1 - conf - second) / (V - 2)
    for v in range(V):
        if v not in (5, 6):
            probs[..., v] = rest
    cand = torch.ones(1, G, dtype=torch.bool) if cand is None else torch.tensor([cand])
    return StepContext(
        pred=torch.full((1, G), 5), conf=conf, probs=probs, cand=cand, masked=cand.clone(),
        block_lo=torch.tensor([0]), block_hi=torch.tensor([G]), block_step=torch.tensor([block_step]),
        progress=torch.tensor([progress], dtype=torch.float64), rows=torch.tensor([0]),
        gens=[torch.Generator().manual_seed(0)], eos_id=EOS,
    )


def sel(policy, ctx):
    return policy.select(ctx).mask[0].tolist()


def test_topk_counts_and_order():
    c = ctx_from([0.5, 0.9, 0.7, 0.9, 0.1])
    assert sel(TopK(k=2), c) == [False, True, False, True, False]  # tie at 0.9: both, lower first
    assert sel(TopK(k=1), c) == [False, True, False, False, False]
    # steps: 5 candidates over 2 steps -> 3 now
    assert sum(sel(TopK(steps=2), c)) == 3
    assert sum(sel(TopK(steps=2), ctx_from([0.5] * 5, block_step=1))) == 5  # last step: all
    # ascending step size: 1, 2, 4 per step
    assert [sum(sel(TopK(schedule="ascending"), ctx_from([0.5] * 8, block_step=s))) for s in range(3)] == [1, 2, 4]
    # candidates only
    assert sel(TopK(k=3), ctx_from([0.9, 0.9, 0.9], cand=[True, False, True])) == [True, False, True]


def test_random_is_seeded_and_counts():
    a = sel(RandomK(k=2), ctx_from([0.5] * 6))
    b = sel(RandomK(k=2), ctx_from([0.5] * 6))
    assert a == b and sum(a) == 2


def test_threshold_margin_entropy():
    c = ctx_from([0.95, 0.85, 0.5], second=[0.04, 0.01, 0.45])
    assert sel(Threshold(0.9), c) == [True, False, False]
    assert sel(Threshold(0.8), c) == [True, True, False]
    assert sel(Margin(0.8), c) == [True, True, False]
    assert sel(Margin(0.9), c) == [True, False, False]
    assert sel(Entropy(0.3), c) == [True, False, False]
    assert sel(Entropy(0.8), c) == [True, True, False]  # entropies ~0.24, 0.71, 0.95


def test_factor_rule():
    # sorted 0.99, 0.9, 0.8, 0.3: (n+1)(1-c_n) = 0.02, 0.3, 0.8, 3.5 -> f=1 commits 3
    c = ctx_from([0.8, 0.99, 0.3, 0.9])
    assert sel(Factor(1.0), c) == [True, True, False, True]
    assert sel(Factor(0.5), c) == [False, True, False, True]
    assert sel(Factor(0.01), c) == [False, False, False, False]  # the loop then forces one


def test_prophet_goes_all_in_on_a_large_gap():
    confident = ctx_from([0.999, 0.999, 0.999], second=[1e-4, 1e-4, 1e-4])
    assert sel(Prophet(), confident) == [True, True, True]
    unsure = ctx_from([0.6, 0.7, 0.5], second=[0.3, 0.2, 0.4])
    assert sel(Prophet(), unsure) == [False, True, False]  # the base rule: one token
    # later in decoding the required gap is smaller: gap log(0.9/0.01) = 4.5 passes only late
    mid = ctx_from([0.9, 0.9], second=[0.01, 0.01], progress=0.0)
    late = ctx_from([0.9, 0.9], second=[0.01, 0.01], progress=0.8)
    assert sum(sel(Prophet(), mid)) == 1 and sum(sel(Prophet(), late)) == 2


def test_localleap_anchor_and_neighbours():
    #            0     1     2     3     4     5     6
    c = ctx_from([0.95, 0.65, 0.65, 0.85, 0.65, 0.3, 0.65])
    got = sel(LocalLeap(anchor=0.9, local=0.6, radius=3), c)
    # anchor 0; pos 1 (d=1, need 0.6) yes; pos 2 (d=2, need 0.7) no; pos 3 (d=3, need 0.8) yes;
    # pos 4 (d=4 > radius) no
    assert got == [True, True, False, True, False, False, False]


def test_credit_accumulates_over_steps():
    p = Credit(tau=0.9, gamma=1.0, alpha=1.0)
    p.reset(1, 2, 8, "cpu")
    steady = [0.0, 0.0]
    for step in range(6):
        c = ctx_from([0.8, 0.4])
        commit = p.select(c)
        s, tokens = commit.mask, commit.tokens
        steady[0] = steady[0] or (bool(s[0, 0]) and step)
    assert steady[0] >= 1  # 0.8 < tau at first, committed once its credit has built up
    assert Threshold(0.9).select(ctx_from([0.8, 0.4])).mask[0].tolist() == [False, False]


def test_adablock_ends_after_a_confident_delimiter():
    sched = AdaBlock(size=3, min_size=2, tau=0.5, delimiters=(EOS,))
    pred = torch.tensor([5, 5, 5, 5, EOS, 5, 5, 5])
    conf = torch.tensor([0.9] * 8)
    assert sched.end(0, pred, conf, 8) == 5
    assert sched.end(0, pred, torch.tensor([0.9, 0.9, 0.9, 0.9, 0.2, 0.9, 0.9, 0.9]), 8) == 3  # not confident
    assert FixedBlocks(4).end(5, pred, conf, 8) == 8 and FixedBlocks(None).end(3, pred, conf, 8) == 8


# ---- loop behaviour on scripted models ---------------------------------------------------------
def test_edit_replaces_a_committed_token():
    # pos 0 looks like 5 while pos 1 is masked, and clearly 7 once pos 1 is decoded
    def fn(g):
        out = {1: (6, 0.95), 2: (EOS, 0.5), 3: (EOS, 0.5)}
        out[0] = (5, 0.8) if g[1] == MASK else (7, 0.97)
        return out

    s, _ = make_settings("edit", {"tau": "0.7", "edit_tau": "0.9", "eos_stop": "0"}, gen_length=4)
    r = generate(FakeDLM(fn, 4), [[2, 9]], s)[0]
    assert r.tokens[:2] == [7, 6] and r.stats.edits == 1
    s, _ = make_settings("threshold", {"tau": "0.7", "eos_stop": "0"}, gen_length=4)
    assert generate(FakeDLM(fn, 4), [[2, 9]], s)[0].tokens[:2] == [5, 6]  # no editing
    assert EditPolicy(0.9, max_edits=1).max_edits == 1


def test_end_of_text_stop_fills_with_eos():
    def fn(g):
        return {0: (5, 0.99), 1: (6, 0.98), 2: (EOS, 0.97), 3: (8, 0.2), 4: (9, 0.2), 5: (9, 0.2)}

    s = Settings(max_new_tokens=6, commit=TopK(k=1))
    r = generate(FakeDLM(fn, 6), [[2, 9]], s)[0]
    assert r.tokens == [5, 6, EOS, EOS, EOS, EOS] and r.answer == [5, 6]
    assert r.stats.forwards == 3 and r.stats.filled == 3 and r.stats.stop_reason == "eos"
    s = Settings(max_new_tokens=6, commit=TopK(k=1), eos_stop=False)
    r = generate(FakeDLM(fn, 6), [[2, 9]], s)[0]
    assert r.stats.forwards == 6 and r.tokens[3:] == [8, 9, 9]


def test_eos_early_rejection_delays_eos():
    def fn(g):
        return {0: (EOS, 0.99), 1: (5, 0.9), 2: (6, 0.8)}

    s = Settings(max_new_tokens=3, commit=TopK(k=1), eos_stop=False)
    order = []
    first = generate(FakeDLM(fn, 3), [[2]], s)[0]
    s2 = Settings(max_new_tokens=3, commit=TopK(k=1), eos_stop=False, eos_reject=0.0)
    second = generate(FakeDLM(fn, 3), [[2]], s2)[0]
    assert first.tokens == second.tokens == [EOS, 5, 6]
    assert first.stats.accept_lengths == [1, 1, 1]
    del order
    # with rejection the EOS is decoded last: check through a threshold rule that passes only EOS
    s3 = Settings(max_new_tokens=3, commit=Threshold(0.95), eos_stop=False, eos_reject=0.0)
    r = generate(FakeDLM(fn, 3), [[2]], s3)[0]
    assert r.stats.accept_lengths[0] == 1 and r.stats.forwards == 3  # EOS (0.99 -> 0) waited


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda: make_settings("threshold", {"tau": "0"}), "threshold must be in (0, 1]"),
        (lambda: make_settings("threshold", {"tau": "1.5"}), "threshold must be in (0, 1]"),
        (lambda: Threshold(-0.1), "(0, 1]"),
        (lambda: make_settings("nope"), "unknown dLLM method"),
        (lambda: make_settings("one", {"bogus": "1"}), "unknown option"),
        (lambda: make_settings("one", {"cache": "huge"}), "unknown cache"),
        (lambda: make_settings("factor", {"f": "x"}), "expects a number"),
    ],
)
def test_bad_input_is_one_line(call, msg):
    with pytest.raises(ParadecError) as e:
        call()
    assert msg in str(e.value) and "\n" not in str(e.value)
