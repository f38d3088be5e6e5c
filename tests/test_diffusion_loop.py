"""The decoding loop on tiny random dLLMs: every method finishes, batch invariance, caches,
FreeDave identity, bad input."""

from __future__ import annotations

import pytest
import torch
from helpers.dllm import MASK, prompts, tiny_dlm

from paradec.dllm import freedave
from paradec.dllm.loop import Settings, generate
from paradec.dllm.policies import CachePolicy, FixedBlocks, Threshold, TopK
from paradec.dllm.methods import METHODS, make_settings
from paradec.errors import ParadecError

G = 12
TRAINING_FREE = [m for m in METHODS if m not in ("learn2pd", "freedave")]


@pytest.fixture(scope="module")
def model():
    return tiny_dlm(0)


def run(model, method, opts=None, batch_size=16, ps=None):
    s, extra = make_settings(method, {"gen_length": str(G), **(opts or {})})
    ps = ps or prompts(7)
    if method == "freedave":
        return freedave.generate(model, ps, s, depth=extra["depth"], batch_size=batch_size)
    return generate(model, ps, s, batch_size=batch_size)


@pytest.mark.parametrize("method", TRAINING_FREE + ["freedave"])
def test_every_method_finishes_without_masks(model, method):
    for r in run(model, method, {"block_size": "4"} if method != "adablock" else {}):
        assert MASK not in r.tokens and len(r.tokens) == G
        st = r.stats
        assert st.forwards >= 1 and st.committed + st.filled == G  # every position decoded once or filled
        assert st.mean_accepted == st.committed / st.forwards


@pytest.mark.parametrize("method", TRAINING_FREE + ["freedave"])
def test_results_do_not_depend_on_batch_size(model, method):
    opts = {"block_size": "4"} if method not in ("adablock",) else {}
    if method == "random":
        opts["seed"] = "3"
    ref = run(model, method, opts, batch_size=1)
    for bs in (3, 7):
        got = run(model, method, opts, batch_size=bs)
        assert [r.tokens for r in got] == [r.tokens for r in ref]
        assert [r.stats.accept_lengths for r in got] == [r.stats.accept_lengths for r in ref]


def test_one_token_per_step(model):
    for r in run(model, "one", {"eos_stop": "0"}):
        assert r.stats.accept_lengths == [1] * G and r.stats.forwards == G


def test_sequences_stop_on_their_own(model):
    rs = run(model, "threshold", {"tau": "0.6"})
    assert len({r.stats.forwards for r in rs}) > 1  # different step counts in one batch


def test_parallel_policies_use_fewer_forwards(model):
    one = sum(r.stats.forwards for r in run(model, "one", {"eos_stop": "0"}))
    for m in ("threshold", "factor", "prophet", "localleap", "ascending"):
        assert sum(r.stats.forwards for r in run(model, m, {"eos_stop": "0"})) < one, m


# ---- caches ------------------------------------------------------------------------------------
def test_window_forward_with_a_fresh_cache_equals_the_full_forward(model):
    from paradec.dllm.loop import prepare

    ids, km, P = prepare(prompts(3), G, MASK, 0)
    ids[:, P + 2] = 7
    full, kv = model.forward(ids, km, want_cache=True)
    q = torch.tensor([[P, P + 1, P + 2, P + 3]] * 3)
    win, _ = model.forward(ids, km, query=q, cache=kv)
    torch.testing.assert_close(win, full.gather(1, q[..., None].expand(-1, -1, full.shape[-1])), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["prefix", "dual"])
@pytest.mark.parametrize("method", ["one", "threshold", "localleap"])
def test_cache_refreshed_every_step_equals_no_cache(model, kind, method):
    ref = run(model, method, {"block_size": "4"})
    got = run(model, method, {"block_size": "4", "cache": kind, "refresh": "1"})
    assert [r.tokens for r in got] == [r.tokens for r in ref]
    assert [r.stats.accept_lengths for r in got] == [r.stats.accept_lengths for r in ref]


@pytest.mark.parametrize("kind", ["prefix", "dual"])
def test_approximate_cache_reports_agreement(model, kind):
    rs = run(model, "one", {"block_size": "6", "cache": kind, "measure_agreement": "1"})
    checks = sum(r.stats.cache_checks for r in rs)
    assert checks > 0
    rate = sum(r.stats.cache_agree for r in rs) / checks
    assert 0.0 <= rate <= 1.0
    assert all(0.0 <= r.stats.cache_agreement <= 1.0 for r in rs)
    # batch invariance holds with a cache too
    a = run(model, "threshold", {"block_size": "6", "cache": kind}, batch_size=1)
    b = run(model, "threshold", {"block_size": "6", "cache": kind}, batch_size=7)
    assert [r.tokens for r in a] == [r.tokens for r in b]


# ---- FreeDave ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block", [None, 4, 6])
@pytest.mark.parametrize("depth", [2, 5])
def test_freedave_reproduces_one_token_per_step(seed, block, depth):
    m = tiny_dlm(seed)
    ps = prompts(6, seed=seed)
    for eos_stop in (True, False):
        s = Settings(max_new_tokens=G, commit=TopK(k=1), blocks=FixedBlocks(block), eos_stop=eos_stop)
        ref = generate(m, ps, s, batch_size=6)
        got = freedave.generate(m, ps, s, depth=depth, batch_size=4)
        assert [r.tokens for r in got] == [r.tokens for r in ref]
        assert sum(r.stats.forwards for r in got) <= sum(r.stats.forwards for r in ref)
        assert all(r.stats.committed + r.stats.filled == G for r in got)


def test_freedave_saves_forwards_on_a_confident_model():
    m = tiny_dlm(0, head=200.0)
    ps = prompts(6)
    s = Settings(max_new_tokens=G, commit=TopK(k=1), eos_stop=False)
    ref = generate(m, ps, s)
    got = freedave.generate(m, ps, s, depth=6)
    assert [r.tokens for r in got] == [r.tokens for r in ref]
    assert sum(r.stats.forwards for r in got) < sum(r.stats.forwards for r in ref)


def test_freedave_rejects_settings_it_cannot_reproduce(model):
    s = Settings(max_new_tokens=G, commit=Threshold(0.9), cache=CachePolicy("dual"))
    with pytest.raises(ParadecError, match="freedave"):
        freedave.generate(model, prompts(2), s)


# ---- bad input ---------------------------------------------------------------------------------
def test_block_size_must_divide_the_length(model):
    with pytest.raises(ParadecError, match="block size 5 does not divide the generation length 12"):
        run(model, "one", {"block_size": "5"})


def test_model_without_mask_token(model):
    ar = tiny_dlm(0, attention="causal")
    with pytest.raises(ParadecError, match="no mask token"):
        run(ar, "one")
    nomask = tiny_dlm(0, mask_id=None)
    with pytest.raises(ParadecError, match="no mask token"):
        run(nomask, "threshold")


def test_block_causal_model_decodes_in_its_blocks():
    m = tiny_dlm(0, attention="block_causal", block_size=4)
    with pytest.raises(ParadecError, match="block size 4"):
        run(m, "one", {"block_size": "6"})
    a = run(m, "threshold", {"block_size": "4"}, batch_size=1)
    b = run(m, "threshold", {"block_size": "4"}, batch_size=7)
    assert [r.tokens for r in a] == [r.tokens for r in b]


def test_every_step_commits_and_a_broken_schedule_raises(model):
    """The loop's step bound (max_new_tokens) rests on its progress guarantee: every step commits
    at least one token of every active sequence. A schedule that breaks it (an empty block) ends
    in a one-line error, not a hang."""
    for r in run(model, "threshold", {"tau": "0.99", "eos_stop": "0"}):
        assert len(r.stats.accept_lengths) <= G and min(r.stats.accept_lengths) >= 1

    class Empty(FixedBlocks):
        def end(self, lo, pred, conf, max_new_tokens):
            return lo  # [lo, lo): nothing to commit

    s = Settings(max_new_tokens=G, commit=TopK(k=1), blocks=Empty())
    with pytest.raises(ParadecError, match="did not finish"):
        generate(model, prompts(2), s)
