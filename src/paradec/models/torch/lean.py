"""A lean forward for Llama-family decoders (Llama, SmolLM2, Qwen2): the same math as
transformers' modules, with less Python around it.

The same weights, walked without transformers' per-module plumbing (output records, mask
preparation, keyword passing), reading and writing paradec's ``KVCache`` directly. Two modes:
- plain (float32, float64, and bfloat16 where packing does not pay): the model's own modules
  (its linears and RMSNorms, its rotary table, transformers' SDPA function), called as
  transformers calls them, so logits equal transformers' bit for bit (tested);
- packed (bfloat16 on a CPU with native bf16, see ``packed.can_pack``): weights prepacked for
  oneDNN, q/k/v fused into one product and gate/up into another, torch's fused RMSNorm, one
  rotary pass for q and k, torch's SDPA with grouped heads. Same math, fewer and larger
  operations; bfloat16 rounding can differ from transformers' in the last place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...cache import KVCache
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
    attn: nn.Module  # the model's attention module: its projections (plain mode), GQA settings, scaling
    mlp: nn.Module  # the model's MLP: its projections (plain mode)
    ln1: nn.Module
    ln2: nn.Module
    qkv: PackedLinear | None = None  # packed mode: q, k, v fused
    o: nn.Module | None = None  # packed mode: the output projection, packed
    gate_up: PackedLinear | None = None  # packed mode: gate, up fused
    down: nn.Module | None = None  # packed mode: the down projection, packed


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
            L = _Layer(a, m, layer.input_layernorm, layer.post_attention_layernorm)
            if pack:
                L.qkv, L.o = fused([a.q_proj, a.k_proj, a.v_proj]), PackedLinear.of(a.o_proj)
                L.gate_up, L.down = fused([m.gate_proj, m.up_proj]), PackedLinear.of(m.down_proj)
            self.layers.append(L)

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
            a, m = L.attn, L.mlp
            x = L.ln1(h)
            qs = a.q_proj(x).view(b, q, -1, self.head_dim).transpose(1, 2)  # [B, Hq, q, D]
            ks = a.k_proj(x).view(b, q, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, q, D]
            vs = a.v_proj(x).view(b, q, -1, self.head_dim).transpose(1, 2)
            # rotary, as transformers applies it: x * cos + rotate_half(x) * sin
            qs = qs * cos + torch.cat((-qs[..., half:], qs[..., :half]), dim=-1) * sin
            ks = ks * cos + torch.cat((-ks[..., half:], ks[..., :half]), dim=-1) * sin
            ks, vs = cache.layers[i].update(ks, vs)  # [B, Hkv, kv, D]
            attn, _ = self._sdpa(a, qs, ks, vs, mask, dropout=0.0, scaling=a.scaling)  # [B, q, Hq, D]
            h = h + a.o_proj(attn.reshape(b, q, -1).contiguous())
            x = L.ln2(h)
            h = h + m.down_proj(nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))
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
