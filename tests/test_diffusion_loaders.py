"""Loaders for LLaDA-, Dream- and SDAR-shaped HF checkpoints (tiny random ones with their own
modeling file, loaded with trust_remote_code from a temp dir) and paradec's own format."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.dllm import MASK, prompts, tiny_dlm, write_hf

from paradec.dllm.loaders import is_diffusion, load_diffusion
from paradec.dllm.loop import generate, prepare
from paradec.dllm.methods import make_settings
from paradec.errors import ParadecError


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-dllm")
    return {
        "llada": write_hf(root / "llada", "llada", {"mask_token_id": MASK}),
        "dream": write_hf(root / "dream", "Dream", {"mask_token_id": MASK}),
        "sdar": write_hf(root / "sdar", "sdar", {"mask_token_id": MASK, "block_size": 4}),
        "nomask": write_hf(root / "nomask", "Dream"),
    }


def test_specs_of_each_family(hf_dirs):
    llada = load_diffusion(str(hf_dirs["llada"]), dtype="float64")
    dream = load_diffusion(str(hf_dirs["dream"]), dtype="float64")
    sdar = load_diffusion(str(hf_dirs["sdar"]), dtype="float64")
    assert (llada.spec.shifted, llada.spec.attention, llada.spec.mask_id) == (False, "bidirectional", MASK)
    assert (dream.spec.shifted, dream.spec.attention) == (True, "bidirectional")
    assert (sdar.spec.attention, sdar.spec.block_size) == ("block_causal", 4)
    assert llada.spec.caches == ("none",)
    assert all(is_diffusion(str(d)) for d in hf_dirs.values())


def test_dream_logits_are_realigned(hf_dirs):
    dream = load_diffusion(str(hf_dirs["dream"]), dtype="float64")
    ids, km, P = prepare(prompts(2), 8, MASK, 0)
    logits, _ = dream.forward(ids, km)
    raw = dream.model(input_ids=ids, attention_mask=dream._mask4d(km), position_ids=(km.long().cumsum(1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(logits[:, 1:], raw[:, :-1])


def test_sdar_attention_is_block_causal(hf_dirs):
    sdar = load_diffusion(str(hf_dirs["sdar"]), dtype="float64")
    ids, km, P = prepare([[2, 5, 6, 7]], 8, MASK, 0)
    a, _ = sdar.forward(ids, km)
    ids2 = ids.clone()
    ids2[0, -1] = 9  # the last block changes: earlier blocks' logits must not
    b, _ = sdar.forward(ids2, km)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_decode_each_family(hf_dirs, family):
    m = load_diffusion(str(hf_dirs[family]), dtype="float64")
    for method in ("one", "threshold", "localleap"):
        s, _ = make_settings(method, {"gen_length": "8", "block_size": "4"})
        a = generate(m, prompts(4, lengths=(3, 3)), s, batch_size=1)
        b = generate(m, prompts(4, lengths=(3, 3)), s, batch_size=4)
        assert [r.tokens for r in a] == [r.tokens for r in b]
        assert all(MASK not in r.tokens for r in a)


def test_hf_model_without_mask_token(hf_dirs):
    with pytest.raises(ParadecError, match="no mask token"):
        load_diffusion(str(hf_dirs["nomask"]))


def test_hf_model_has_no_cache(hf_dirs):
    m = load_diffusion(str(hf_dirs["llada"]), dtype="float64")
    s, _ = make_settings("one", {"gen_length": "8", "cache": "dual"})
    with pytest.raises(ParadecError, match="does not support the 'dual' cache"):
        generate(m, prompts(1), s)


def test_paradec_format_roundtrip(tmp_path):
    m = tiny_dlm(0)
    m.model.save(tmp_path / "d")
    back = load_diffusion(str(tmp_path / "d"), dtype="float64")
    s, _ = make_settings("threshold", {"gen_length": "8"})
    # saved in float32: compare against the float32-rounded original
    m.model.float().double()
    assert [r.tokens for r in generate(back, prompts(3), s)] == [r.tokens for r in generate(m, prompts(3), s)]
    assert json.loads((tmp_path / "d" / "config.json").read_text())["paradec_dllm"]["mask_id"] == MASK


def test_not_a_diffusion_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not is_diffusion(str(tmp_path))
    with pytest.raises(ParadecError, match="not a LLaDA"):
        load_diffusion(str(tmp_path))
    with pytest.raises(ParadecError, match="no diffusion model"):
        load_diffusion(str(tmp_path / "missing"))


def test_capabilities_are_named_protocols():
    from paradec.dllm.policies.learned import filter_of
    from paradec.dllm.protocol import ChatPrompted, Named, Stored

    shipped = load_diffusion("tiny-dllm")
    assert isinstance(shipped, Stored) and isinstance(shipped, Named) and not isinstance(shipped, ChatPrompted)
    assert filter_of(shipped) is not None  # shipped beside the weights
    fresh = tiny_dlm(0)
    assert not isinstance(fresh, Stored) and filter_of(fresh) is None


def test_tokenizer_capability_is_a_named_protocol(hf_dirs):
    """paradec generate decodes a dLLM's answer with the model's own tokenizer only when it is
    ``Tokenized``: Hugging Face checkpoints carry one (possibly None), the tiny dLLM does not."""
    from paradec.dllm.protocol import Tokenized

    llada = load_diffusion(str(hf_dirs["llada"]), dtype="float64")
    assert isinstance(llada, Tokenized)
    assert not isinstance(load_diffusion("tiny-dllm"), Tokenized) and not isinstance(tiny_dlm(0), Tokenized)
