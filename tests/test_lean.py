"""The lean forward path (models/lean.py) and prepacked linears (models/packed.py)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_llama
from helpers.lossless import PROMPTS, VOCAB, run
from transformers import Qwen2Config, Qwen2ForCausalLM

from paradec.models.torch.hf import HFCausalLM
from paradec.models.torch.lean import LeanDecoder, lean_unsupported
from paradec.models.torch.packed import PackedLinear, can_pack, fused
from paradec.proposers.pld import PLDConfig, PromptLookup


def tiny_qwen2(seed: int = 0, dtype=torch.float64) -> Qwen2ForCausalLM:
    """A tiny random Qwen2: q/k/v carry biases, embeddings tied."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.5, tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    m = Qwen2ForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():  # non-zero biases, so a dropped bias would show
        for layer in m.model.layers:
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                p.bias.normal_(0, 0.5)
    return m


def _steps(a: HFCausalLM) -> list[torch.Tensor]:
    """Prefill, a chain of 3, a 4-node tree, a rollback and a one-token step (no mask): every
    kind of forward the decode loop makes. Returns each step's logits and hidden states."""
    c = a.new_cache(64)
    out = []
    a.prefill(torch.tensor([[1, 5, 7, 9, 5, 7, 9, 11]]), c)
    n = c.seq_len
    chain = torch.tensor([[4, 8, 15]])
    mask = torch.ones(1, 3, n + 3, dtype=torch.bool).tril_(n)
    out += a.forward_hidden(chain, torch.arange(n, n + 3)[None], c, mask)
    c.truncate(n + 1)
    n = c.seq_len
    # tree: root 16 with children 23 and 42, and 42's child 7
    tree_mask = torch.ones(1, 4, n + 4, dtype=torch.bool)
    tree_mask[0, :, n:] = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    out += a.forward_hidden(torch.tensor([[16, 23, 42, 7]]), torch.tensor([[n, n + 1, n + 1, n + 2]]), c, tree_mask)
    c.compact([n, n + 2, n + 3], offset=n)
    m = c.seq_len
    out.append(a.forward(torch.tensor([[30]]), torch.tensor([[m]]), c, torch.ones(1, 1, m + 1, dtype=torch.bool)))
    out.append(c.layers[-1].keys[:, :, : c.seq_len].clone())
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_lean_path_equals_transformers_bit_for_bit(family, dtype):
    model = tiny_llama(0, vocab=VOCAB).to(dtype) if family == "llama" else tiny_qwen2(0, dtype)
    hf, lean = HFCausalLM(model), HFCausalLM(model, fast=True)
    assert lean.lean is not None and lean.path == "lean" and hf.lean is None
    for i, (x, y) in enumerate(zip(_steps(hf), _steps(lean))):
        assert torch.equal(x, y), f"step output {i} differs"


def test_lean_greedy_identical_to_ar(reference):
    """A tree drafter on the lean path reproduces plain AR on transformers' path."""
    lean = HFCausalLM(tiny_llama(0, vocab=VOCAB), fast=True)
    accepted = 0
    for p in PROMPTS:
        out, stats = run(lean, PromptLookup(PLDConfig(branches=4, draft_len=6, max_nodes=20)), p)
        assert out == reference[tuple(p)]
        accepted += stats.accepted
    assert accepted > 0


def test_packed_linear_and_fusion_compute_the_same_products():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(48, n, bias=b) for n, b in ((32, True), (16, False), (16, True))]
    x = torch.randn(2, 5, 48)  # [B, q, in]
    with torch.inference_mode():
        for lin in layers:
            p = PackedLinear.of(lin)
            assert p.weight is lin.weight  # shared, not copied
            torch.testing.assert_close(p(x), lin(x), rtol=1e-5, atol=1e-5)
        f = fused(layers)
        assert f.weight is None  # the concatenated weight is not kept
        torch.testing.assert_close(f(x), torch.cat([lin(x) for lin in layers], dim=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_lean_path_matches_transformers(family):
    """Packed and fused weights (float32 here, so the comparison is tight) give transformers'
    logits, and leave the transformers model as it was."""
    model = tiny_llama(0, vocab=VOCAB).float() if family == "llama" else tiny_qwen2(0, torch.float32)
    hf = HFCausalLM(model)
    lean = HFCausalLM(model)
    lean.lean = LeanDecoder(model, pack=True)
    assert all(type(m) is not PackedLinear for m in model.modules())
    for x, y in zip(_steps(hf), _steps(lean)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.bfloat16), reason="this CPU has no native bf16 in oneDNN")
def test_bfloat16_engine_path_is_packed_and_close_to_transformers():
    model = tiny_llama(0, vocab=VOCAB).to(torch.bfloat16)
    hf, lean = HFCausalLM(model), HFCausalLM(model, fast=True)
    assert lean.path == "lean, packed bf16"
    for x, y in zip(_steps(hf), _steps(lean)):
        torch.testing.assert_close(x.float(), y.float(), rtol=0.05, atol=0.1)


def test_packing_only_for_bfloat16_on_cpu_and_can_be_turned_off(monkeypatch):
    assert not can_pack(torch.device("cpu"), torch.float32)
    assert not can_pack(torch.device("cuda"), torch.bfloat16)
    monkeypatch.setenv("PARADEC_PACKED_LINEAR", "0")
    assert not can_pack(torch.device("cpu"), torch.bfloat16)
    model = tiny_llama(0, vocab=VOCAB).to(torch.bfloat16)
    assert HFCausalLM(model, fast=True).path == "lean"


def test_unsupported_models_keep_the_transformers_path():
    model = tiny_llama(0, vocab=VOCAB)
    model.config._attn_implementation = "eager"
    assert "attention" in lean_unsupported(model)
    a = HFCausalLM(model, fast=True)
    assert a.lean is None and a.path == "transformers"
    with pytest.raises(ValueError, match="no lean path"):
        LeanDecoder(model)


def test_fast_path_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("PARADEC_FAST", "0")
    assert HFCausalLM(tiny_llama(0, vocab=VOCAB), fast=True).path == "transformers"


@pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.bfloat16), reason="this CPU has no native bf16 in oneDNN")
def test_packed_draft_head_drafts_the_same():
    from paradec.heads import new_head

    model = tiny_llama(0, vocab=VOCAB).to(torch.bfloat16)
    plain = new_head(model, torch.arange(40), intermediate=48).eval()
    packed = new_head(model, torch.arange(40), intermediate=48).eval()
    packed.load_state_dict(plain.state_dict())
    packed.pack()
    assert isinstance(packed.fc, PackedLinear) and packed._lm_packed is not None
    f, toks = torch.randn(3, 32, dtype=torch.bfloat16), torch.tensor([4, 9, 30])
    with torch.inference_mode():
        torch.testing.assert_close(packed.logits(packed.step(f, toks)), plain.logits(plain.step(f, toks)), rtol=0.02, atol=0.02)
