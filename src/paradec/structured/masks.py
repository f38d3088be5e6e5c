"""Token bitmasks: one int32 word per 32 tokens (bit ``t % 32`` of word ``t // 32`` set when
token ``t`` is allowed), the engine's native format."""

from __future__ import annotations

import numpy as np
import torch


def words(vocab: int) -> int:
    return (vocab + 31) // 32


def new_rows(n: int, vocab: int) -> torch.Tensor:
    """Zeroed bitmask rows: [n, words] int32."""
    return torch.zeros(n, words(vocab), dtype=torch.int32)


def fill(matcher, rows: torch.Tensor, i: int) -> None:
    """Write ``matcher``'s mask (the tokens allowed next) into ``rows[i]``."""
    fill_numpy(matcher, rows[i].numpy())


def fill_numpy(matcher, row: np.ndarray) -> None:
    """``fill`` into a numpy row [words] int32 (contiguous)."""
    matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)


def allowed(row: torch.Tensor, token: int) -> bool:
    """Whether bitmask ``row`` [words] allows ``token``."""
    w = token >> 5
    return 0 <= w < row.shape[0] and (int(row[w]) >> (token & 31)) & 1 == 1


def only_numpy(row: np.ndarray) -> int | None:
    """The one token a bitmask row [words] int32 allows, or None (none or several)."""
    nz = np.flatnonzero(row)
    if len(nz) != 1:
        return None
    w = int(row[nz[0]]) & 0xFFFFFFFF
    return None if w & (w - 1) else 32 * int(nz[0]) + w.bit_length() - 1


def count(row: torch.Tensor) -> int:
    """How many tokens bitmask ``row`` allows."""
    return int(unpack(row[None], row.shape[0] * 32).sum())


def unpack_numpy(rows: np.ndarray, vocab: int) -> np.ndarray:
    """``unpack`` in numpy: bitmask rows [r, words] int32 -> bool [r, vocab] (a new array)."""
    raw = np.ascontiguousarray(rows).astype("<i4", copy=False).view(np.uint8)  # [r, words * 4]
    bits = np.unpackbits(raw, axis=1, bitorder="little").view(np.bool_)  # [r, words * 32], 0/1 bytes
    if bits.shape[1] >= vocab:
        return bits[:, :vocab]
    return np.concatenate([bits, np.zeros((bits.shape[0], vocab - bits.shape[1]), np.bool_)], 1)


def unpack(rows: torch.Tensor, vocab: int) -> torch.Tensor:
    """Bitmask rows [r, words] -> bool [r, vocab] (tokens past the bitmask: not allowed)."""
    # little-endian words: byte 0 holds tokens 0-7, lowest bit first
    return torch.from_numpy(np.ascontiguousarray(unpack_numpy(rows.contiguous().numpy(), vocab)))


def apply(logits: torch.Tensor, allow: torch.Tensor) -> torch.Tensor:
    """logits [r, V] with every token ``allow`` [r, V] (bool) rules out set to -inf (a new tensor)."""
    return logits.masked_fill(~allow.to(logits.device), float("-inf"))
