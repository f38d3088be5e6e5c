"""``NativeCausalLM``: a ``CausalLM`` target on the GGUF's own quantized weights.

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

import ctypes
import sys
from typing import Callable, Sequence

import numpy as np
import torch

from ...cache import compact_plan
from ...errors import ParadecError
from . import build, kernels
from .gguf_model import GGUFModel, embed_rows
from .ops import Layer, Model, Ops, addr

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

    @property
    def slot_bytes(self) -> int:
        """Bytes of keys and values per slot."""
        layers, heads, dim = self.dims
        return 2 * layers * heads * dim * 4

    def export_prefix(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """A copy of the first ``n`` slots' keys and values (``prefix.PrefixCache`` keeps it)."""
        if n > self.length:
            raise ValueError(f"cannot export {n} slots of a cache of {self.length}")
        return self.keys[:, :, :n].copy(), self.values[:, :, :n].copy()

    def import_prefix(self, payload: tuple[np.ndarray, np.ndarray], n: int) -> None:
        """Fill the first ``n`` slots from an ``export_prefix`` of at least ``n`` slots."""
        keys, values = payload
        if keys.shape[2] < n or keys.shape[:2] + keys.shape[3:] != (self.dims[0], self.dims[1], self.dims[2]):
            raise ValueError("a kept prefix of another shape")
        self.reserve(n)
        self.keys[:, :, :n] = keys[:, :, :n]
        self.values[:, :, :n] = values[:, :, :n]
        self.length = n

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


class _Rows:
    """Where each of T token rows reads and writes: its cache and slot, the slots it may see.
    One int64 array [6, T] holds, per row: position, the addresses of its cache's keys and
    values, the cache's capacity, the row's slot, and how many slots it sees (slots [0, nkeys)
    where ``mask`` [T, S] uint8 allows)."""

    FIELDS = ("positions", "kptr", "vptr", "cap", "slot", "nkeys")

    def __init__(self, tokens, positions, kptr, vptr, cap, slot, nkeys, mask) -> None:
        self.tokens = np.ascontiguousarray(tokens, dtype=np.int64)  # [T]
        t = len(self.tokens)
        self.meta = np.empty((6, t), np.int64)
        for i, v in enumerate((positions, kptr, vptr, cap, slot, nkeys)):
            self.meta[i] = v
        self.mask = np.ascontiguousarray(mask, dtype=np.uint8)
        base = self.meta.ctypes.data
        self.addrs = [base + 8 * t * i for i in range(6)]


def _rows_on(cache: NativeKVCache, tokens, positions, slots, nkeys, mask) -> _Rows:
    return _Rows(tokens, positions, cache.keys.ctypes.data, cache.values.ctypes.data, cache.capacity, slots, nkeys, mask)


def _wdesc(w) -> int:
    """The address of a ``QuantWeight``'s kernel descriptor (``pd_wdesc``)."""
    return w._desc[1]


def _layer_desc(L) -> Layer:
    ins = [L.qkv] if L.qkv is not None else [L.q, L.k, L.v]
    gus = [L.gate_up] if L.gate_up is not None else [L.gate, L.up]
    return Layer(addr(L.attn_norm), addr(L.ffn_norm), addr(L.qkv_bias) if L.qkv_bias is not None else None,
                 (ctypes.c_void_p * 3)(*[_wdesc(w) for w in ins]), _wdesc(L.o),
                 (ctypes.c_void_p * 2)(*[_wdesc(w) for w in gus]), _wdesc(L.down), len(ins), len(gus))


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
        self.ptrs = [a.data_ptr() for a in (self.x, self.qkv, self.attn, self.proj, self.gu, self.act)]


class NativeCausalLM:
    """The ``CausalLM`` protocol (``causal_lm.py``) on a ``GGUFModel``, batch-invariant by
    construction. ``hf_loader`` makes the transformers model on demand, for drafters that
    build their own copy of the target from it (``head``, ``deer``, ``qdraft`` int8)."""

    native = True  # the ``NativeLM`` marker: its own thread pool, no transformers forward (deer-fused needs one)
    prefill_splits_exactly = True  # batch-invariant: a prompt prefilled in parts leaves the same bits (prefix.py)

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
        self._model_desc = Model(cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn, cfg.rope_dim,
                                 int(cfg.rope_neox), kernels.PATH_BITS[kernels.best_path()], cfg.eps, self._scale,
                                 addr(self._inv_freq))
        self._model_desc_ptr = ctypes.addressof(self._model_desc)
        self._layers = (Layer * cfg.n_layers)(*(_layer_desc(L) for L in model.layers))
        self._layers_ptr = ctypes.addressof(self._layers)
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
        h = self._step(ids, positions, cache, attn_mask)
        return self._logits(h)[None], h[None]

    @torch.inference_mode()
    def forward_tail(self, ids, positions, cache: NativeKVCache, attn_mask, start: int) -> torch.Tensor:
        """``forward`` with the LM head run on rows ``start``.. only: [1, q - start, V]. Every
        row's keys and values land in the cache as ``forward`` leaves them (the rows before
        ``start``: prompt tokens prefilled in the same pass, bit-identical to ``prefill``)."""
        return self._logits(self._step(ids, positions, cache, attn_mask)[start:])[None]

    def _step(self, ids, positions, cache: NativeKVCache, attn_mask) -> torch.Tensor:
        """The stack over one request's step (batch 1): hidden states [q, H] after the final
        norm; the cache gains the q rows."""
        h = self._body(self._tree_rows(ids, positions, cache, attn_mask))
        cache.length += ids.shape[1]
        return h

    @torch.inference_mode()
    def forward_rows(self, ids: torch.Tensor, positions: torch.Tensor, caches: list[NativeKVCache]) -> torch.Tensor:
        """B requests at one new token each (ids, positions [B, 1]), each on its own cache at
        slot ``seq_len``; returns logits [B, 1, V]."""
        b = ids.shape[0]
        lengths = [c.length for c in caches]
        for c in caches:
            c.reserve(c.length + 1)
        lens = np.array(lengths, np.int64)
        rows = _Rows(
            ids.reshape(b).numpy(), positions.reshape(b).numpy(), [c.keys.ctypes.data for c in caches],
            [c.values.ctypes.data for c in caches], [c.capacity for c in caches], lens, lens + 1,
            np.ones((b, max(lengths) + 1), np.uint8),
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
            print("paradec: note: loading the transformers copy of the model (a drafter or peer builds on it; the target stays native)", file=sys.stderr)
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
        return _rows_on(cache, ids[0].numpy(), positions[0].numpy(), slots, base + q, attn_mask[0].numpy())

    def _bufs(self, t: int) -> _Buffers:
        buf = self._buffers.get(t)
        if buf is None:
            if len(self._buffers) > 32:
                self._buffers.clear()
            buf = self._buffers[t] = _Buffers(t, self.config)
        return buf

    def _body(self, r: _Rows, final_norm: bool = True) -> torch.Tensor:
        """The decoder stack over the rows of ``r`` (one C call): hidden states [T, H] after the
        final norm (before it with ``final_norm=False``); every row's key and value land in its
        cache slot (the caller then advances the caches' lengths)."""
        t = len(r.tokens)
        b = self._bufs(t)
        h = b.h
        h.copy_(torch.from_numpy(embed_rows(self.gguf, r.tokens)))
        rc = self._ops.decoder(
            self._model_desc_ptr, self._layers_ptr, h.data_ptr(), t, *r.addrs, r.mask.ctypes.data, r.mask.shape[1],
            *b.ptrs,
        )
        if rc != 0:
            raise ParadecError(f"native forward failed (kernel error {rc})")
        if not final_norm:
            return h
        out = torch.empty_like(h)
        self._ops.rmsnorm(h.data_ptr(), addr(self.gguf.norm), out.data_ptr(), t, self.config.hidden, self.config.eps, 0.0)
        return out

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """[T, H] -> [T, V] float32 (the LM head on the quantized weights)."""
        return kernels.qmatmul(h, self.gguf.output)
