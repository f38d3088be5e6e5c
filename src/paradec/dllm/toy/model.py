"""A small transformer in plain torch: the masked diffusion LM paradec trains and ships, and the
autoregressive reference of the same size (same code, causal attention).

Attention family is a config field: ``bidirectional`` (LLaDA-style masked diffusion),
``block_causal`` (SDAR/BD3-style: a position sees its own block and every earlier block) or
``causal`` (the AR reference). Rotary positions are counted from the first real token, so left padding
(masked out as keys) does not change a sequence's result.

``forward(..., query=idx, cache=kv)`` computes only the positions in ``idx`` [B, W] and reads every
other position's keys and values from ``kv``, the per-layer K/V of an earlier full forward: that
is the prefix / dual cache of Fast-dLLM. With ``kv`` taken from the same ids the result equals
the full forward's at those positions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TinyConfig:
    vocab_size: int = 48
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 1024
    max_len: int = 48
    attention: str = "bidirectional"  # bidirectional | block_causal | causal
    block_size: int = 0  # block_causal only
    mask_id: int | None = 1
    eos_id: int = 3
    pad_id: int = 0
    # Segment positions (0 = off): besides rotary positions, every token gets a learned embedding
    # of its index inside its segment (prompt from its first token; answer from the token after
    # the first ``sep_id``) and, for prompt tokens, of its distance to the answer start. The answer
    # can then address prompt items from either end: what copy, reverse and the index edits need.
    sep_id: int = 4
    seg_positions: int = 0


def _rope(pos: torch.Tensor, dh: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, dh, 2, device=pos.device, dtype=torch.float64) / dh))
    ang = pos[..., None].to(torch.float64) * inv  # [B, W, dh/2]
    return ang.cos().to(dtype)[:, None], ang.sin().to(dtype)[:, None]


def _rotate(x: torch.Tensor, rope) -> torch.Tensor:
    cos, sin = rope
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)


class Layer(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.h, self.dh = c.n_heads, c.d_model // c.n_heads
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.out = nn.Linear(c.d_model, c.d_model)
        self.ff = nn.Sequential(nn.Linear(c.d_model, c.d_ff), nn.GELU(), nn.Linear(c.d_ff, c.d_model))

    def forward(self, x, bias, rope, kv=None, query=None):
        B, W, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, W, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        q, k = _rotate(q, rope), _rotate(k, rope)
        if kv is not None:  # splice this window's fresh K/V into the cached full-length K/V
            K, V = kv[0].clone(), kv[1].clone()
            idx = query[:, None, :, None].expand(B, self.h, W, self.dh)
            K.scatter_(2, idx, k)
            V.scatter_(2, idx, v)
            k, v = K, V
        new_kv = (k, v)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.out(a.transpose(1, 2).reshape(B, W, D))
        return x + self.ff(self.ln2(x)), new_kv


class TinyTransformer(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.config = c
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        if c.seg_positions:
            self.seg_index = nn.Embedding(c.seg_positions, c.d_model)
            self.seg_dist = nn.Embedding(c.seg_positions + 1, c.d_model)  # 0 = an answer token
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.n_layers))
        self.ln = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _bias(self, pos_q, pos_k, key_mask, dtype):
        """Additive attention bias [B, 1, Wq, L] from the attention family and the key padding."""
        c = self.config
        allowed = key_mask[:, None, :].expand(-1, pos_q.shape[1], -1)
        if c.attention == "causal":
            allowed = allowed & (pos_k[:, None, :] <= pos_q[:, :, None])
        elif c.attention == "block_causal":
            allowed = allowed & (pos_k[:, None, :] // c.block_size <= pos_q[:, :, None] // c.block_size)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        bias.masked_fill_(~allowed, float("-inf"))
        return bias[:, None]

    def _segment(self, ids, key_mask, query, n):
        L = ids.shape[1]
        idx = torch.arange(L, device=ids.device)[None]
        is_sep = ids == self.config.sep_id
        start = torch.where(is_sep.any(1), is_sep.long().argmax(1) + 1, torch.full_like(ids[:, 0], L))[:, None]
        first_idx = key_mask.long().argmax(1, keepdim=True)  # the first real token
        answer = idx >= start
        index = torch.where(answer, idx - start, idx - first_idx).clamp(0, n - 1)
        dist = torch.where(answer, torch.zeros_like(idx), (start - idx).clamp(1, n))
        if query is not None:
            index, dist = index.gather(1, query), dist.gather(1, query)
        return self.seg_index(index) + self.seg_dist(dist)

    def forward(self, ids, key_mask=None, query=None, cache=None, want_cache=False):
        """ids [B, L]; key_mask [B, L] bool (False = padding). Returns (logits [B, W, V], kv)."""
        B, L = ids.shape
        if key_mask is None:
            key_mask = torch.ones(B, L, dtype=torch.bool, device=ids.device)
        pos = (key_mask.long().cumsum(1) - 1).clamp(min=0)
        if query is None:
            q_ids, pos_q = ids, pos
        else:
            q_ids, pos_q = ids.gather(1, query), pos.gather(1, query)
        x = self.tok(q_ids)
        if c_seg := self.config.seg_positions:
            x = x + self._segment(ids, key_mask, query, c_seg)
        bias = self._bias(pos_q, pos, key_mask, x.dtype)
        rope = _rope(pos_q, self.config.d_model // self.config.n_heads, x.dtype)
        kvs = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, bias, rope, None if cache is None else cache[i], query if cache is not None else None)
            if want_cache:
                kvs.append(kv)
        return self.head(self.ln(x)), (kvs if want_cache else None)

    # ---- save / load (safetensors + config.json) ----
    def save(self, directory: str | Path, extra: dict | None = None, dtype=torch.float32) -> None:
        """Weights as safetensors (float32, or float16 to ship half the bytes) + config.json."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(sd, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"paradec_dllm": asdict(self.config), **(extra or {})}, indent=1))

    @classmethod
    def load(cls, directory: str | Path, dtype=torch.float32) -> TinyTransformer:
        from safetensors.torch import load_file

        d = Path(directory)
        cfg = json.loads((d / "config.json").read_text())["paradec_dllm"]
        m = cls(TinyConfig(**cfg))
        m.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(d / "model.safetensors")).items()})
        return m.to(dtype).eval()


__all__ = ["TinyConfig", "TinyTransformer"]
