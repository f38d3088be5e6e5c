"""A lean forward for Llama-family decoders (Llama, SmolLM2, Qwen2): the same math as
transformers' modules, with less Python around it.

A forward of SmolLM2-135M on a 2-core CPU spends about a quarter of its time outside the
operators: module calls, output records, mask preparation and keyword plumbing, 30 layers deep.
This path walks the same weights with the transformers building blocks that carry numerics
(its RMSNorm modules, its rotary table, its SDPA attention function) and direct tensor code for
the rest, reading and writing paradec's ``KVCache`` directly.

Two modes:
- plain (float32 and everything but bfloat16 on a CPU): every linear is the model's own
  ``nn.Linear``, called as transformers calls it, so logits equal transformers' bit for bit
  (tested);
- packed (bfloat16 on a CPU with native bf16, see ``packed.can_pack``): weights prepacked for
  oneDNN, with q/k/v fused into one product and gate/up into another. Same matrix products, in
  another memory layout and grouping; bfloat16 rounding can differ from transformers' in the
  last place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cache import KVCache
from .packed import PackedLinear, fused

LEAN_FAMILIES = ("llama", "qwen2")


def lean_unsupported(model) -> str | None:
    """Why ``model`` cannot take the lean path (None when it can)."""
    cfg = model.config
    kind = getattr(cfg, "model_type", None)
    if kind not in LEAN_FAMILIES:
        return f"model type {kind!r} (lean path: {', '.join(LEAN_FAMILIES)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    if getattr(cfg, "_attn_implementation", None) != "sdpa":
        return f"attention {getattr(cfg, '_attn_implementation', None)!r} (lean path: sdpa)"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window layers"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "tensor-parallel pretraining layout"
    return None


@dataclass
class _Layer:
    attn: nn.Module  # the transformers attention module (for its GQA settings in SDPA)
    ln1: nn.Module
    ln2: nn.Module
    qkv: nn.Module | None  # fused and packed (packed mode) ...
    q: nn.Module | None  # ... or the model's own projections (plain mode)
    k: nn.Module | None
    v: nn.Module | None
    o: nn.Module
    gate_up: nn.Module | None
    gate: nn.Module | None
    up: nn.Module | None
    down: nn.Module


class LeanDecoder:
    """``forward(ids, positions, cache, mask) -> (logits, last hidden)`` for a Llama-family
    ``*ForCausalLM``, sharing its weights (packed mode adds a packed copy of the linears)."""

    def __init__(self, model, pack: bool = False) -> None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        why = lean_unsupported(model)
        if why is not None:
            raise ValueError(f"no lean path for this model: {why}")
        self._sdpa = sdpa_attention_forward
        self.packed = pack
        body = model.model
        self.embed, self.rotary, self.norm = body.embed_tokens, body.rotary_emb, body.norm
        head = model.get_output_embeddings()
        self.lm_head = PackedLinear.of(head) if pack else head
        cfg = model.config
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = float(body.layers[0].input_layernorm.variance_epsilon)
        self.splits = [
            cfg.num_attention_heads * self.head_dim,
            cfg.num_key_value_heads * self.head_dim,
            cfg.num_key_value_heads * self.head_dim,
        ]
        self.layers: list[_Layer] = []
        for layer in body.layers[: cfg.num_hidden_layers]:
            a, m = layer.self_attn, layer.mlp
            if pack:
                self.layers.append(_Layer(a, layer.input_layernorm, layer.post_attention_layernorm,
                                          fused([a.q_proj, a.k_proj, a.v_proj]), None, None, None, PackedLinear.of(a.o_proj),
                                          fused([m.gate_proj, m.up_proj]), None, None, PackedLinear.of(m.down_proj)))
            else:
                self.layers.append(_Layer(a, layer.input_layernorm, layer.post_attention_layernorm,
                                          None, a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                                          None, m.gate_proj, m.up_proj, m.down_proj))

    def body(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, mask) -> torch.Tensor:
        """The decoder stack. ids, positions: [B, q]; mask: [B, 1, q, kv] bool or None (every
        query sees the whole cache and itself: only for q == 1). Returns the hidden states after
        the final norm, [B, q, H]; the cache grows by q slots."""
        h = self.embed(ids)  # [B, q, H]
        b, q, _ = h.shape
        cos, sin = self.rotary(h, position_ids=positions)  # [B, q, D] each
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, q, D]
        if self.packed:
            return self._packed_body(h, cos, sin, cache, mask)
        half = self.head_dim // 2
        for i, L in enumerate(self.layers):
            x = L.ln1(h)
            qs, ks, vs = L.q(x), L.k(x), L.v(x)
            qs = qs.view(b, q, -1, self.head_dim).transpose(1, 2)  # [B, Hq, q, D]
            ks = ks.view(b, q, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, q, D]
            vs = vs.view(b, q, -1, self.head_dim).transpose(1, 2)
            # rotary, as transformers applies it: x * cos + rotate_half(x) * sin
            qs = qs * cos + torch.cat((-qs[..., half:], qs[..., :half]), dim=-1) * sin
            ks = ks * cos + torch.cat((-ks[..., half:], ks[..., :half]), dim=-1) * sin
            ks, vs = cache.layers[i].update(ks, vs)  # [B, Hkv, kv, D]
            attn, _ = self._sdpa(L.attn, qs, ks, vs, mask, dropout=0.0, scaling=L.attn.scaling)  # [B, q, Hq, D]
            h = h + L.o(attn.reshape(b, q, -1).contiguous())
            x = L.ln2(h)
            h = h + L.down(nn.functional.silu(L.gate(x)) * L.up(x))
        return self.norm(h)

    def _packed_body(self, h, cos, sin, cache: KVCache, mask) -> torch.Tensor:
        """``body`` with fused products and fewer, larger operations: one rotary for q and k
        together, fused RMSNorm, torch's SDPA with grouped heads. Same math; bf16 rounding may
        differ from transformers' in the last place."""
        b, q, _ = h.shape
        d, half, (nq, nk, _) = self.head_dim, self.head_dim // 2, self.splits
        hq, eps, width = nq // d, self.eps, (h.shape[-1],)
        rms, sdpa = nn.functional.rms_norm, nn.functional.scaled_dot_product_attention
        for i, L in enumerate(self.layers):
            x = rms(h.float(), width, eps=eps).to(h.dtype) * L.ln1.weight  # [B, q, H]
            qkv = L.qkv(x)  # [B, q, (Hq + 2 Hkv) D]
            qk = qkv[..., : nq + nk].view(b, q, -1, d).transpose(1, 2)  # [B, Hq + Hkv, q, D]
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            vs = qkv[..., nq + nk :].view(b, q, -1, d).transpose(1, 2)  # [B, Hkv, q, D]
            ks, vs = cache.layers[i].update(qk[:, hq:], vs)  # [B, Hkv, kv, D]
            attn = sdpa(qk[:, :hq], ks, vs, attn_mask=mask, scale=L.attn.scaling, enable_gqa=True)  # [B, Hq, q, D]
            h = h + L.o(attn.transpose(1, 2).reshape(b, q, -1))
            x = rms(h.float(), width, eps=eps).to(h.dtype) * L.ln2.weight
            g, u = L.gate_up(x).chunk(2, dim=-1)
            h = h + L.down(nn.functional.silu(g) * u)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # [B, q, H] -> [B, q, V]
