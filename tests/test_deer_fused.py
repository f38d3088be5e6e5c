"""``deer-fused``: the verifying forward also drafts the next chain (a mask block after every
prefix of the chain, gate on). Greedy output identical to ``ar``, sampling lossless, the target
cache and the target model left exactly as a plain forward leaves them, and each block equal to
what the separate drafter computes after the same prefix."""

from __future__ import annotations

import pytest
import torch
from helpers.lossless import PROMPTS, SV, assert_identical_to_ar, assert_sampling_lossless, run
from test_deer import random_adapter

from paradec.decode import DecodeConfig, Decoder
from paradec.dllm.converted import BlockDiffusionAR, shared_copy
from paradec.distill.lora import LoRALinear, load_lora_state, lora_state
from paradec.errors import ParadecError
from paradec.proposers import Models, make_proposer
from paradec.proposers.base import NoDraft
from paradec.proposers.deer_fused import FusedDeer, FusedDeerConfig
from paradec.sampling import SamplingParams


def fused_model(target, seed=0, scale=0.05) -> BlockDiffusionAR:
    """The random adapter of test_deer on a module tree sharing the target's weights."""
    ref = random_adapter(target.model, seed=seed, scale=scale)
    m = BlockDiffusionAR(shared_copy(target.model), ref.cfg)
    load_lora_state(m.hf, lora_state(ref.hf))
    with torch.no_grad():
        m.mask_vec.copy_(ref.mask_vec)
    return m


@pytest.fixture(scope="module")
def fmodel(target):
    return fused_model(target)


GREEDY = {
    "step": FusedDeerConfig(),
    "off-k4": FusedDeerConfig(adapt="off", block=4),
    "off-k1": FusedDeerConfig(adapt="off", block=1, min_block=1),
    "confidence": FusedDeerConfig(min_confidence=0.3),
    "tree": FusedDeerConfig(width=3, sibling_depth=2),
}


@pytest.mark.parametrize("name", list(GREEDY))
def test_greedy_identical_to_ar(name, target, fmodel, reference):
    make = lambda: FusedDeer(fmodel, target.vocab_size, GREEDY[name])  # noqa: E731
    assert assert_identical_to_ar(target, reference, make, f"deer-fused {name}") > 0


def test_target_weights_shared_and_target_untouched(target, fmodel):
    assert not any(isinstance(mod, LoRALinear) for mod in target.model.modules())  # the target runs as before
    tw = dict(target.model.named_parameters())
    shared = [n for n, p in fmodel.hf.named_parameters() if ".lora_" not in n]
    assert shared and all(p.data_ptr() == tw[n.replace(".base.", ".")].data_ptr()
                          for n, p in fmodel.hf.named_parameters() if ".lora_" not in n)


def _decoder(target, prop, prompt):
    dec = Decoder(target, prop, prompt, DecodeConfig(max_new_tokens=30))
    for _ in range(3):  # a few steps, so the cache holds a prefix and the draft is a chain
        dec.step()
    return dec


def test_fused_forward_leaves_the_cache_as_a_plain_forward_does(target, fmodel):
    prop = FusedDeer(fmodel, target.vocab_size, FusedDeerConfig(adapt="off", block=3))
    dec = _decoder(target, prop, PROMPTS[0])
    step = dec.prepare()
    assert step.fused and not step.plain
    n0 = step.cache.seq_len
    keys = [layer.keys[:, :, :n0].clone() for layer in step.cache.layers]
    plain_cache = target.new_cache(capacity=64)
    target.prefill(torch.tensor([dec.tokens[:-1]]), plain_cache)
    want = target.forward(step.ids, step.positions, plain_cache, step.mask)[0]
    got = dec.forward(step)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)  # the chain's rows are the target's logits
    assert step.cache.seq_len == plain_cache.seq_len == n0 + step.ids.shape[1]
    n = step.cache.seq_len
    for la, lb, k0 in zip(step.cache.layers, plain_cache.layers, keys):
        torch.testing.assert_close(la.keys[:, :, :n], lb.keys[:, :, :n], atol=1e-10, rtol=0)
        torch.testing.assert_close(la.values[:, :, :n], lb.values[:, :, :n], atol=1e-10, rtol=0)
        assert torch.equal(la.keys[:, :, :n0], k0)  # the committed prefix is untouched


def test_each_block_is_the_drafters_block_after_that_prefix(target, fmodel):
    """Block i of the fused forward == the converted model's own block after the root and the
    first i draft tokens (first mask at the next token's place)."""
    k = 3
    prop = FusedDeer(fmodel, target.vocab_size, FusedDeerConfig(adapt="off", block=k))
    dec = _decoder(target, prop, PROMPTS[2])
    step = dec.prepare()
    chain = step.ids[0, 1:].tolist()
    assert chain
    dec.forward(step)
    state = fmodel.new_state(64)
    for i in range(len(chain) + 1):
        context = dec.tokens + chain[:i]
        ref = fmodel.block_logits(state, context, [None] * k)  # [k, V]: row j + 1 comes from mask j
        torch.testing.assert_close(prop._blocks[i][: k - 1], ref[1:], atol=1e-9, rtol=0)


SAMPLING = {
    "t1": (SamplingParams(temperature=1.0), FusedDeerConfig(block=3, adapt="off")),
    "t0.7-topk4-topp0.9": (SamplingParams(temperature=0.7, top_k=4, top_p=0.9), FusedDeerConfig(block=2)),
    "t1-tree": (SamplingParams(temperature=1.0), FusedDeerConfig(block=3, width=2, sibling_depth=2)),
}


@pytest.mark.parametrize("case", list(SAMPLING))
def test_sampling_is_lossless(case, s_target):
    sampling, cfg = SAMPLING[case]
    m = fused_model(s_target, seed=1, scale=0.5)
    assert_sampling_lossless(s_target, lambda: FusedDeer(m, SV, cfg), sampling)


def test_make_proposer_and_bad_input(tmp_path, target, reference):
    drafter = random_adapter(target.model)
    drafter.save(tmp_path / "a")
    models = Models(target)
    make = lambda: make_proposer("deer-fused", models, {"adapter": str(tmp_path / "a"), "block": 4})  # noqa: E731
    assert assert_identical_to_ar(target, reference, make, "deer-fused from directory") > 0
    assert not any(isinstance(mod, LoRALinear) for mod in target.model.modules())
    out, _ = run(target, NoDraft(), PROMPTS[0], n=5)  # the target still decodes plainly
    assert out == reference[tuple(PROMPTS[0])][:5]
    for bad in ({"adapt": "prefill"}, {"passes": 2}, {"block": 0}):
        with pytest.raises(ParadecError):
            make_proposer("deer-fused", models, {"adapter": str(tmp_path / "a"), **bad})



@pytest.mark.parametrize("cfg", [FusedDeerConfig(adapt="off", block=3), FusedDeerConfig(adapt="off", block=3, width=3, sibling_depth=2)])
def test_next_draft_is_the_block_after_what_was_accepted(target, fmodel, cfg):
    """After every step, the kept block is the drafter's block after the committed tokens but the
    last one (whose place the block's first mask takes), whatever was accepted: the chosen node's
    path is exactly the accepted prefix."""
    state, checked, lengths = fmodel.new_state(64), 0, []
    for prompt in PROMPTS:
        prop = FusedDeer(fmodel, target.vocab_size, cfg)
        dec = Decoder(target, prop, prompt, DecodeConfig(max_new_tokens=24))
        while dec.step() is not None and not dec.done:
            if prop._side is None:
                continue
            ref = fmodel.block_logits(state, dec.tokens[:-1], [None] * cfg.block)
            torch.testing.assert_close(prop._side[: cfg.block - 1], ref[1:], atol=1e-9, rtol=0)
            checked += 1
        lengths += dec.stats.accept_lengths
    assert checked >= 20
    assert 1 in lengths and max(lengths) > 1  # steps with rejections and steps with acceptances
