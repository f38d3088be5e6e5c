"""``NativeCausalLM``: the ``CausalLM`` adapter on the GGUF's own quantized weights.

Every operation is per row (the quantized matmuls of ``kernels``, RMSNorm, rotary, SiLU * up
and tree attention of ``csrc/ops.c``), so a token's logits are bit-identical whether it is
computed alone, in a draft tree, or among other requests' tokens: on this backend every
drafter's greedy output is exactly plain decoding's.

The cache is ``NativeKVCache`` (float32 keys and values per request, with the same rollback as
``paradec.cache.KVCache``). One forward runs ``T`` token rows; each row carries its cache's
addresses, its slot and how many slots it may see, so the rows of one call may sit on
different caches (``forward_rows``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ...cache import compact_plan
from ...errors import ParadecError
from . import build, kernels
from .gguf_model import GGUFModel, embed_rows
from .ops import Ops, addr

PREFILL_CHUNK = 64  # the kernels' row tile


class NativeKVCache:
    """Keys and values of one request, [layers, kv_heads, capacity, head_dim] float32 each;
    slot i holds position i. Grows by doubling when a request outruns its capacity."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int) -> None:
        self.dims = (layers, kv_heads, head_dim)
        self.capacity = 0
        self.keys = self.values = np.empty((layers, kv_heads, 0, head_dim), np.float32)
        self.length = 0
        self.reserve(max(int(capacity), 1))

    @property
    def seq_len(self) -> int:
        return self.length

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` slots (reallocates, keeping the filled ones)."""
        if capacity <= self.capacity:
            return
        cap = max(capacity, 2 * self.capacity)
        layers, heads, dim = self.dims
        for name in ("keys", "values"):
            new = np.empty((layers, heads, cap, dim), np.float32)
            new[:, :, : self.length] = getattr(self, name)[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = cap

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` slots."""
        if n < 0 or n > self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} slots to {n}")
        self.length = n

    def compact(self, indices: Sequence[int], offset: int = 0) -> None:
        """Keep slots ``[0, offset)`` and then exactly ``indices`` (as ``KVCache.compact``)."""
        idx, keep, end = compact_plan(indices, offset, self.length)
        if keep < len(idx):
            src = np.asarray(idx[keep:], dtype=np.int64)
            for a in (self.keys, self.values):
                a[:, :, offset + keep : end] = a[:, :, src]  # fancy indexing copies first
        self.length = end


@dataclass(frozen=True)
class _Rows:
    """Where each of T token rows reads and writes: its cache and slot, the slots it may see."""

    tokens: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    kptr: np.ndarray  # [T] int64 addresses of each row's cache keys
    vptr: np.ndarray  # [T] int64
    cap: np.ndarray  # [T] int64 capacities
    slot: np.ndarray  # [T] int64: where the row's key/value goes
    nkeys: np.ndarray  # [T] int64: the row sees slots [0, nkeys) where mask allows
    mask: np.ndarray  # [T, S] uint8, S >= max(nkeys)


def _rows_on(cache: NativeKVCache, tokens, positions, slots, nkeys, mask) -> _Rows:
    t = len(tokens)
    return _Rows(
        np.ascontiguousarray(tokens, dtype=np.int64), np.ascontiguousarray(positions, dtype=np.int64),
        np.full(t, cache.keys.ctypes.data, np.int64), np.full(t, cache.values.ctypes.data, np.int64),
        np.full(t, cache.capacity, np.int64), np.ascontiguousarray(slots, dtype=np.int64),
        np.ascontiguousarray(nkeys, dtype=np.int64), np.ascontiguousarray(mask, dtype=np.uint8),
    )


class _Buffers:
    """Preallocated activations for T rows (reused across forwards of the same size)."""

    def __init__(self, t: int, cfg) -> None:
        d = cfg.head_dim
        nqkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * d
        z = lambda *s: torch.empty(*s, dtype=torch.float32)  # noqa: E731
        self.x, self.h = z(t, cfg.hidden), z(t, cfg.hidden)
        self.proj = z(t, cfg.hidden)
        self.qkv, self.attn = z(t, nqkv), z(t, cfg.n_heads * d)
        self.gu, self.act = z(t, 2 * cfg.ffn), z(t, cfg.ffn)


class NativeCausalLM:
    """The ``CausalLM`` protocol (``adapter.py``) on a ``GGUFModel``, batch-invariant by
    construction. ``hf_loader`` makes the transformers model on demand, for drafters that
    build their own copy of the target from it (``head``, ``deer``, ``qdraft`` int8)."""

    native = True  # what drafters probe for (deer-fused needs a transformers forward instead)

    def __init__(self, model: GGUFModel, hf_loader: Callable[[], object] | None = None) -> None:
        if not kernels.available():
            raise ParadecError(f"native backend unavailable: {kernels.unavailable_reason()}")
        self.gguf = model
        cfg = self.config = model.config
        self.vocab_size = cfg.vocab
        self.max_context = cfg.max_context
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.num_layers = cfg.n_layers
        self.path = f"native {'/'.join(model.qtypes)} {kernels.best_path()}"
        self._ops = Ops(build.load())
        self._inv_freq = cfg.inv_freq(model.freq_factors)  # [rope_dim / 2] float32
        self._scale = float(cfg.head_dim) ** -0.5
        self._hf_loader, self._hf = hf_loader, None
        self._buffers: dict[int, _Buffers] = {}

    # ---- the protocol -------------------------------------------------------------------------
    def new_cache(self, capacity: int) -> NativeKVCache:
        c = self.config
        return NativeKVCache(c.n_layers, c.n_kv_heads, c.head_dim, capacity)

    @torch.inference_mode()
    def forward(self, ids, positions, cache: NativeKVCache, attn_mask) -> torch.Tensor:
        return self.forward_hidden(ids, positions, cache, attn_mask)[0]

    @torch.inference_mode()
    def forward_hidden(self, ids, positions, cache: NativeKVCache, attn_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` plus the last hidden states [1, q, H] (after the final norm)."""
        rows = self._tree_rows(ids, positions, cache, attn_mask)
        h = self._body(rows)
        cache.length += ids.shape[1]
        return self._logits(h)[None], h[None]

    @torch.inference_mode()
    def forward_rows(self, ids: torch.Tensor, positions: torch.Tensor, caches: list[NativeKVCache]) -> torch.Tensor:
        """B requests at one new token each (ids, positions [B, 1]), each on its own cache at
        slot ``seq_len``; returns logits [B, 1, V]."""
        b = ids.shape[0]
        lengths = [c.length for c in caches]
        for c in caches:
            c.reserve(c.length + 1)
        rows = _Rows(
            ids.reshape(b).to(torch.int64).numpy().copy(), positions.reshape(b).to(torch.int64).numpy().copy(),
            np.array([c.keys.ctypes.data for c in caches], np.int64), np.array([c.values.ctypes.data for c in caches], np.int64),
            np.array([c.capacity for c in caches], np.int64), np.array(lengths, np.int64),
            np.array(lengths, np.int64) + 1, np.ones((b, max(lengths) + 1), np.uint8),
        )
        h = self._body(rows)
        for c in caches:
            c.length += 1
        return self._logits(h)[:, None]

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, cache: NativeKVCache, chunk: int = PREFILL_CHUNK) -> None:
        """Append ``ids`` [1, L] to ``cache`` causally, ``chunk`` rows per forward (no logits)."""
        if ids.shape[0] != 1:
            raise ParadecError("the native backend runs one request per cache (batch 1)")
        toks = ids[0].to(torch.int64).numpy()
        for start in range(0, len(toks), chunk):
            piece = toks[start : start + chunk]
            q, past = len(piece), cache.length
            cache.reserve(past + q)
            mask = np.tril(np.ones((q, past + q), np.uint8), past)
            pos = np.arange(past, past + q)
            self._body(_rows_on(cache, piece, pos, pos, pos + 1, mask), final_norm=False)
            cache.length += q

    # ---- drafters that need the transformers model -----------------------------------------
    @property
    def model(self):
        """The transformers model of the same file (float32, loaded on first use): what
        ``head``, ``deer`` and ``qdraft``'s int8 copy build their drafters from. Verification
        still runs here, on the quantized weights."""
        if self._hf is None:
            if self._hf_loader is None:
                raise ParadecError("this drafter needs the transformers model, which this native target was loaded without")
            print("paradec: note: loading the transformers copy of the model for this drafter (verification stays native)", file=sys.stderr)
            self._hf = self._hf_loader()
        return self._hf

    # ---- the decoder --------------------------------------------------------------------------
    def _tree_rows(self, ids, positions, cache: NativeKVCache, attn_mask) -> _Rows:
        if ids.shape[0] != 1:
            raise ParadecError("the native backend runs one request per cache (batch 1); use forward_rows for several")
        q, base = ids.shape[1], cache.length
        if attn_mask.shape[-1] != base + q:
            raise ValueError(f"mask covers {attn_mask.shape[-1]} keys, cache + queries is {base + q}")
        cache.reserve(base + q)
        slots = np.arange(base, base + q)
        return _rows_on(cache, ids[0].to(torch.int64).numpy(), positions[0].to(torch.int64).numpy(), slots,
                        np.full(q, base + q), attn_mask[0].numpy())

    def _bufs(self, t: int) -> _Buffers:
        buf = self._buffers.get(t)
        if buf is None:
            if len(self._buffers) > 32:
                self._buffers.clear()
            buf = self._buffers[t] = _Buffers(t, self.config)
        return buf

    def _body(self, r: _Rows, final_norm: bool = True) -> torch.Tensor:
        """The decoder stack over the rows of ``r``: hidden states [T, H] after the final norm
        (before it with ``final_norm=False``); every row's key and value land in its cache slot
        (the caller then advances the caches' lengths)."""
        cfg, ops, m = self.config, self._ops, self.gguf
        t = len(r.tokens)
        d, hq, hkv, H, F = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.hidden, cfg.ffn
        nq, nk = hq * d, hkv * d
        b = self._bufs(t)
        b.h.copy_(torch.from_numpy(embed_rows(m, r.tokens)))
        h, x, qkv, attn = b.h, b.x, b.qkv, b.attn
        stride = nq + 2 * nk
        pa = lambda a: a.ctypes.data  # noqa: E731
        pos, kp, vp, cap, slot, nkeys, mask = map(pa, (r.positions, r.kptr, r.vptr, r.cap, r.slot, r.nkeys, r.mask))
        inv = pa(self._inv_freq)
        eps = cfg.eps
        neox = int(cfg.rope_neox)
        ph, px, pqkv, pat = h.data_ptr(), x.data_ptr(), qkv.data_ptr(), attn.data_ptr()
        for li, L in enumerate(m.layers):
            ops.rmsnorm(ph, addr(L.attn_norm), px, t, H, eps, 0.0)
            if L.qkv is not None:
                kernels.qmatmul(x, L.qkv, out=qkv)
            else:
                for w, lo, hi in ((L.q, 0, nq), (L.k, nq, nq + nk), (L.v, nq + nk, stride)):
                    qkv[:, lo:hi] = kernels.qmatmul(x, w)
            if L.qkv_bias is not None:
                qkv.add_(torch.from_numpy(L.qkv_bias))
            ops.rope(pqkv, t, hq, d, cfg.rope_dim, stride, pos, inv, 1.0, neox)
            ops.rope(pqkv + 4 * nq, t, hkv, d, cfg.rope_dim, stride, pos, inv, 1.0, neox)
            ops.kv_write(pqkv + 4 * nq, pqkv + 4 * (nq + nk), t, hkv, d, stride, kp, vp, cap, slot, li)
            ops.attention(pqkv, stride, pat, t, hq, hkv, d, kp, vp, cap, mask, r.mask.shape[1], nkeys, li, self._scale)
            kernels.qmatmul(attn, L.o, out=b.proj)
            h.add_(b.proj)
            ops.rmsnorm(ph, addr(L.ffn_norm), px, t, H, eps, 0.0)
            if L.gate_up is not None:
                kernels.qmatmul(x, L.gate_up, out=b.gu)
            else:
                b.gu[:, :F] = kernels.qmatmul(x, L.gate)
                b.gu[:, F:] = kernels.qmatmul(x, L.up)
            ops.act_mul(b.gu.data_ptr(), b.gu.data_ptr() + 4 * F, b.act.data_ptr(), t, F, 2 * F, 0)
            kernels.qmatmul(b.act, L.down, out=b.proj)
            h.add_(b.proj)
        if not final_norm:
            return h
        out = torch.empty_like(h)
        ops.rmsnorm(ph, addr(m.norm), out.data_ptr(), t, H, eps, 0.0)
        return out

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """[T, H] -> [T, V] float32 (the LM head on the quantized weights)."""
        return kernels.qmatmul(h, self.gguf.output)
