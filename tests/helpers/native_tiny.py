"""A tiny random Llama / Qwen2 written as a quantized GGUF, and the transformers model on the
very values that GGUF holds (its dequantized weights): the reference for the native backend."""

from __future__ import annotations

import gguf.quants
import numpy as np
import torch
from gguf import GGMLQuantizationType as GT
from gguf import GGUFWriter

from paradec.models.native import quants


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection [heads * D, K] in the order llama.cpp's converter writes them
    (each head's rotary halves interleaved)."""
    n = w.shape[0]
    return w.reshape(heads, 2, n // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_hf(arch: str = "llama", seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
            ffn: int = 128, vocab: int = 96, max_pos: int = 512, std: float = 0.02):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=std,
                  bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    with torch.no_grad():  # norms away from 1 so they matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def write_gguf(model, path, qtype: str = "Q4_1", embed_type: str = "Q8_0", truncate: int | None = None):
    """Quantize ``model``'s matrices to ``qtype`` (the embedding to ``embed_type``), write them
    as a GGUF at ``path``, and load the dequantized values back into ``model`` (in place): then
    ``model`` computes with exactly the weights the file holds."""
    cfg = model.config
    arch = cfg.model_type
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    w = GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)  # tiny_hf uses the default theta
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(d)

    def quant(name: str, p: torch.Tensor, kind: str, perm_heads: int | None = None) -> None:
        a = p.detach().float().numpy()
        if kind in quants.FORMATS:
            raw = np.frombuffer(quants.quantize(a, kind), dtype=np.uint8).reshape(a.shape[0], -1)
            deq = quants.dequantize(raw, kind, a.shape[0], a.shape[1], dtype=np.float32)
        else:  # a type the backend does not run (to test that it says so)
            raw = gguf.quants.quantize(a, getattr(GT, kind))
            deq = gguf.quants.dequantize(raw, getattr(GT, kind)).reshape(a.shape)
        with torch.no_grad():
            p.copy_(torch.from_numpy(deq))
        if perm_heads is not None:
            raw = _permute(raw, perm_heads)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=getattr(GT, kind))

    def vec(name: str, p: torch.Tensor) -> None:
        w.add_tensor(name, p.detach().float().numpy().copy())

    body = model.model
    quant("token_embd.weight", body.embed_tokens.weight, embed_type)
    vec("output_norm.weight", body.norm.weight)
    llama = arch == "llama"
    for i, L in enumerate(body.layers):
        p, a, m = f"blk.{i}.", L.self_attn, L.mlp
        vec(p + "attn_norm.weight", L.input_layernorm.weight)
        vec(p + "ffn_norm.weight", L.post_attention_layernorm.weight)
        quant(p + "attn_q.weight", a.q_proj.weight, qtype, heads if llama else None)
        quant(p + "attn_k.weight", a.k_proj.weight, qtype, kv if llama else None)
        quant(p + "attn_v.weight", a.v_proj.weight, qtype)
        quant(p + "attn_output.weight", a.o_proj.weight, qtype)
        if a.q_proj.bias is not None:
            for x, proj in zip("qkv", (a.q_proj, a.k_proj, a.v_proj)):
                vec(p + f"attn_{x}.bias", proj.bias)
        quant(p + "ffn_gate.weight", m.gate_proj.weight, qtype)
        quant(p + "ffn_up.weight", m.up_proj.weight, qtype)
        quant(p + "ffn_down.weight", m.down_proj.weight, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if truncate is not None:
        with open(path, "r+b") as f:
            f.truncate(truncate)
    return path


def one_kernel_thread():
    """A module fixture's body (``pytest.fixture(autouse=True, scope="module")(one_kernel_thread)``):
    the native kernels on one thread for tiny matrices (waking the pool costs more than the
    work; the machine is shared), the count restored after."""
    from paradec.models.native import kernels

    n = kernels.threads()
    kernels.set_threads(1)
    yield
    kernels.set_threads(n)
