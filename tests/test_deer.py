"""``deer``: a converted block-diffusion drafter (random adapter on the tiny targets) must give
output identical to ``ar`` under greedy decoding and the exact target distribution under
sampling; adaptive block size; its cache follows the accepted prefix; bad input."""

from __future__ import annotations

import pytest
import torch
from helpers.lossless import PROMPTS, SV, assert_identical_to_ar, assert_sampling_lossless, run

from paradec.dllm.converted import AdapterConfig, BlockDiffusionAR
from paradec.errors import ParadecError
from paradec.proposers import Models, make_proposer
from paradec.proposers.base import StepResult
from paradec.proposers.deer import DeerConfig, DeerProposer
from paradec.sampling import SamplingParams
from paradec.tree import DraftTree
from paradec.verify import Verdict


def random_adapter(hf_model, seed: int = 0, scale: float = 0.05, **kw) -> BlockDiffusionAR:
    """A converted model with a random (untrained) adapter: drafts that are sometimes right."""
    cfg = AdapterConfig(base="tiny", rank=4, alpha=8.0, block_size=4, min_block=2, max_block=8, **kw)
    m = BlockDiffusionAR.from_base(hf_model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.hf.named_parameters():
            if "lora_b" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        m.mask_vec.copy_(torch.randn(m.mask_vec.shape, generator=g, dtype=m.mask_vec.dtype))
    return m


@pytest.fixture(scope="module")
def drafter(target):
    return random_adapter(target.model)


@pytest.fixture(scope="module")
def s_drafter(s_target):
    return random_adapter(s_target.model, seed=1, scale=0.5)


GREEDY = {
    "step": DeerConfig(),
    "off-k6": DeerConfig(adapt="off", block=6),
    "prefill": DeerConfig(adapt="prefill", block=8),
    "passes2": DeerConfig(passes=2, adapt="off", block=6),
    "tree": DeerConfig(width=3, sibling_depth=2),
    "confidence": DeerConfig(min_confidence=0.4),
}


@pytest.mark.parametrize("name", list(GREEDY))
def test_greedy_identical_to_ar(name, target, drafter, reference):
    accepted = assert_identical_to_ar(target, reference, lambda: DeerProposer(drafter, target.vocab_size, GREEDY[name]), f"deer {name}")
    assert accepted > 0


def test_first_draft_token_is_the_base_models_prediction(target, drafter):
    """Clean tokens run through the exact base weights: the block's first token is the AR argmax,
    so greedy deer accepts at least one draft token every step."""
    for p in PROMPTS[:4]:
        out, stats = run(target, DeerProposer(drafter, target.vocab_size, DeerConfig()), p, n=30)
        assert stats.per_position_acceptance[0] == 1.0


def test_drafter_cache_follows_the_accepted_prefix(target, drafter):
    prop = DeerProposer(drafter, target.vocab_size, DeerConfig())
    out, _ = run(target, prop, PROMPTS[0], n=20)
    committed = PROMPTS[0] + out
    cached = prop.state.cached
    assert cached == committed[: len(cached)] and len(cached) >= len(committed) - 9
    assert prop.state.cache.seq_len == len(cached)


SAMPLING = {
    "t1-chain": (SamplingParams(temperature=1.0), DeerConfig(block=3, adapt="off")),
    "t1-tree": (SamplingParams(temperature=1.0), DeerConfig(block=3, width=2, sibling_depth=2)),
    "t0.7-topk4-topp0.9": (SamplingParams(temperature=0.7, top_k=4, top_p=0.9), DeerConfig(block=3)),
}


@pytest.mark.parametrize("case", list(SAMPLING))
def test_sampling_is_lossless(case, s_target, s_drafter):
    sampling, cfg = SAMPLING[case]
    assert_sampling_lossless(s_target, lambda: DeerProposer(s_drafter, SV, cfg), sampling)


def _step(k: int, n_acc: int) -> StepResult:
    tree = DraftTree(tuple(range(5, 5 + k)), tuple(range(-1, k - 1)))
    verdict = Verdict(tuple(range(n_acc)), tuple(range(5, 5 + n_acc)), 0, bonus=n_acc == k)
    return StepResult(tree, verdict, [1, 2, 3])


def test_adaptive_block_size_follows_acceptance(drafter):
    prop = DeerProposer(drafter, 80, DeerConfig(block=12, min_block=2, adapt="step", ema=0.5))
    prop.begin([1, 2], SamplingParams())
    for _ in range(6):
        prop.observe(_step(prop.k, 0))
    assert prop.k == 2  # nothing accepted: the smallest block
    for _ in range(12):
        prop.observe(_step(prop.k, prop.k))
    assert prop.k == 12  # everything accepted: grows to the cap
    prop.begin([1, 2], SamplingParams())
    assert prop.k == 12  # per request


def test_prefill_block_size_is_chosen_once_per_request(target, drafter):
    prop = DeerProposer(drafter, target.vocab_size, DeerConfig(block=8, min_block=2, adapt="prefill"))
    run(target, prop, PROMPTS[1], n=12)
    k = prop.k
    assert 2 <= k <= 8 and prop.fixed
    run(target, prop, PROMPTS[1], n=12)
    assert prop.k == k  # same prompt, same choice


def test_make_proposer_with_an_adapter_directory(tmp_path, target, drafter, reference):
    drafter.save(tmp_path / "a")
    models = Models(target)
    make = lambda: make_proposer("deer", models, {"adapter": str(tmp_path / "a"), "block": 5})  # noqa: E731
    assert assert_identical_to_ar(target, reference, make, "deer from directory") > 0


def test_bad_input(tmp_path, target, s_target, s_drafter):
    models = Models(target)
    for opts, msg in [
        ({"adapt": "sometimes"}, "adapt"),
        ({"block": 2, "min_block": 4}, "min_block"),
        ({"passes": 0}, "passes"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"passes": "2"}, "expects int"),
        ({"nope": 1}, "unknown option"),
        ({"adapter": str(tmp_path / "missing")}, "unknown adapter"),
    ]:
        with pytest.raises(ParadecError, match=msg):
            make_proposer("deer", models, opts)
    with pytest.raises(ParadecError, match="no converted adapter"):
        make_proposer("deer", models)  # nothing shipped was trained on this tiny model
    s_drafter.save(tmp_path / "other")  # an adapter for a different base model
    with pytest.raises(ParadecError, match="another base model"):
        make_proposer("deer", models, {"adapter": str(tmp_path / "other")})
