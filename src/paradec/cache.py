"""A preallocated KV cache that speculative decoding can roll back.

``truncate(n)`` drops everything after the first ``n`` slots (rejected chain tokens);
``compact(indices)`` keeps only the listed slots, in order (the accepted path of a tree).
Storage is preallocated per layer as [batch, kv_heads, capacity, head_dim] and written in
place; it grows (by doubling) only when a request outruns the reserved capacity, so the decode
loop never reallocates in steady state.

The class plugs into Hugging Face models as their ``past_key_values`` (it is a
``transformers.Cache``), so any HF causal LM writes its keys and values here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


def compact_plan(indices: Sequence[int], offset: int, length: int) -> tuple[list[int], int, int]:
    """Check a ``compact(indices, offset)`` of a cache of ``length`` slots; return (indices,
    how many of them already sit in place (the identity prefix), the new length)."""
    idx = [int(i) for i in indices]
    if any(b <= a for a, b in zip(idx, idx[1:])):
        raise ValueError("compact indices must be strictly increasing")
    if idx and (idx[0] < offset or idx[-1] >= length):
        raise ValueError(f"compact index out of range [{offset}, {length})")
    if offset > length:
        raise ValueError(f"compact offset {offset} beyond a cache of {length} slots")
    keep = 0
    while keep < len(idx) and idx[keep] == offset + keep:
        keep += 1
    return idx, keep, offset + len(idx)


def reusable_prefix(cached: list[int], tokens: list[int]) -> int:
    """How many leading cached tokens a cache following ``tokens`` keeps: their common prefix,
    never the last token (it is always fed again, so its logits are fresh)."""
    limit, n = min(len(cached), len(tokens) - 1), 0
    while n < limit and cached[n] == tokens[n]:
        n += 1
    return n


class SlotLayer(CacheLayerMixin):
    """One layer's keys/values in a preallocated buffer with a fill pointer."""

    is_sliding = False
    is_compileable = False
    is_croppable = True

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = max(int(capacity), 1)
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, dk = key_states.shape
        dv = value_states.shape[-1]
        self.dtype, self.device = key_states.dtype, key_states.device
        # Normal tensors even when the forward runs under ``torch.inference_mode`` (the models
        # do): rollback (``compact``) writes into them outside it.
        with torch.inference_mode(False):
            self.keys = torch.empty(b, h, self.capacity, dk, dtype=key_states.dtype, device=key_states.device)
            self.values = torch.empty(b, h, self.capacity, dv, dtype=value_states.dtype, device=value_states.device)
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        cap = self.capacity
        while cap < needed:
            cap *= 2
        for name in ("keys", "values"):
            old = getattr(self, name)
            with torch.inference_mode(False):  # see lazy_initialization
                new = old.new_empty(*old.shape[:2], cap, old.shape[-1])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = cap

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states: [B, H, q, D]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        end = self.length + q
        if end > self.capacity:
            self._grow(end)
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0

    def crop(self, tokens_to_remove: int) -> None:
        # HF convention: a negative count removes that many tokens, a positive one is a length.
        self.length = self.length + tokens_to_remove if tokens_to_remove < 0 else min(self.length, tokens_to_remove)


class KVCache(Cache):
    """KV cache for one model, with chain rollback (truncate) and tree rollback (compact)."""

    def __init__(self, num_layers: int, capacity: int = 256) -> None:
        super().__init__(layers=[SlotLayer(capacity) for _ in range(num_layers)])

    @property
    def seq_len(self) -> int:
        return self.layers[0].length if self.layers else 0

    def __len__(self) -> int:  # number of layers, as in transformers
        return len(self.layers)

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` slots."""
        if n < 0 or n > self.seq_len:
            raise ValueError(f"cannot truncate a cache of {self.seq_len} slots to {n}")
        for layer in self.layers:
            layer.length = n

    def compact(self, indices: Sequence[int], offset: int = 0) -> None:
        """Keep slots ``[0, offset)`` and then exactly the slots ``indices`` (strictly increasing,
        all >= offset), moved down in order. ``compact(indices)`` keeps only ``indices``.

        Only the part after the longest identity prefix is copied, so rolling a tree back to its
        accepted path costs a copy of a few slots, not of the whole cache.
        """
        idx, keep, end = compact_plan(indices, offset, self.seq_len)
        if keep < len(idx):
            for layer in self.layers:
                if not layer.is_initialized:
                    continue
                src = torch.tensor(idx[keep:], device=layer.keys.device)
                # index_select copies first, so overlapping source/destination is safe
                layer.keys[:, :, offset + keep : end] = layer.keys.index_select(2, src)
                layer.values[:, :, offset + keep : end] = layer.values.index_select(2, src)
        for layer in self.layers:
            layer.length = end

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` slots up front (no reallocation while decoding)."""
        for layer in self.layers:
            if layer.is_initialized and layer.capacity < capacity:
                layer._grow(capacity)
            elif not layer.is_initialized:
                layer.capacity = max(layer.capacity, capacity)
