"""Quantized matrix kernels on the GGUF's own weights (Python side, through ctypes).

Interface (stable; the model forward builds on it):

- ``QuantWeight.from_gguf(raw, qtype, shape)``: one [N, K] matrix of a GGUF file. ``shape`` is
  (out_features N, in_features K) as torch orders it (the reverse of ``GGUFReader``'s
  ``tensor.shape``); ``qtype`` a name ("Q4_1") or GGML type number. The blocks are repacked once
  into the kernels' layout (see ``csrc/qgemm.h``), which changes no value:
  ``w.dequantize()`` equals ``quants.dequantize(raw, qtype, N, K, np.float32)`` exactly.
- ``qmatmul(x, w, path=None, out=None) -> torch.Tensor``: x float32 [M, K] (rows may be
  strided; any M: tiles of up to 4 (AVX2) or 8 (AVX512) rows share each weight tile of 16
  columns while it sits in registers), returns float32 [M, N] = x @ W^T. Activations are
  quantized per row in 32-blocks to int8 inside the kernel; the dots are exact int8 products.
  Batch invariant by construction: row i of the result depends only on row i of x, the weight
  and the path (not on M, the row's place or the thread count). The avx2 and avx512vnni paths
  use one arithmetic and agree bit for bit.
- ``paths()`` (what this CPU runs, worst first), ``best_path()`` (honours
  ``$PARADEC_NATIVE_PATH``, e.g. ``avx2``; qmatmul reads it once, at its first call),
  ``set_threads(n)`` / ``threads()`` (own pthread pool, default the CPUs this process may run
  on or ``$PARADEC_NATIVE_THREADS``; work is split over tiles of output columns only), ``available()`` and ``unavailable_reason()``, ``library()`` (the ctypes
  handle, for other kernels compiled into the same library).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ...errors import ParadecError
from . import build, quants

PATH_BITS = {"avx2": 1, "avx512vnni": 2, "amx": 4}  # csrc/qgemm.h PD_PATH_*, in order of preference
KIND_Q4, KIND_Q8 = 0, 1
_KIND = {"Q4_0": KIND_Q4, "Q4_1": KIND_Q4, "Q4_K": KIND_Q4, "Q8_0": KIND_Q8, "Q5_K": KIND_Q8, "Q6_K": KIND_Q8}
_ERRORS = {-1: "path not available on this CPU", -2: "bad arguments", -3: "out of memory"}


def _default_threads() -> int:
    env = os.environ.get("PARADEC_NATIVE_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ParadecError(f"PARADEC_NATIVE_THREADS must be a positive integer, got '{env}'") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def _state() -> tuple[ctypes.CDLL | None, tuple[str, ...], str | None]:
    """(library, paths this CPU runs, None) or (None or library, (), the reason it cannot run)."""
    lib = build.load()
    if lib is None:
        return None, (), build.unavailable_reason() or "native kernels: library not built"
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.pd_paths.restype = i
    lib.pd_paths.argtypes = []
    lib.pd_get_threads.restype = i
    lib.pd_get_threads.argtypes = []
    lib.pd_set_threads.restype = None
    lib.pd_set_threads.argtypes = [i]
    lib.pd_qgemm_desc.restype = i
    lib.pd_qgemm_desc.argtypes = [i, vp, vp, i, i, vp, i]
    lib.pd_get_amx_min_rows.restype = i
    lib.pd_get_amx_min_rows.argtypes = []
    lib.pd_set_amx_min_rows.restype = None
    lib.pd_set_amx_min_rows.argtypes = [i]
    bits = lib.pd_paths()
    if not bits & PATH_BITS["avx2"]:
        return lib, (), "native kernels need a CPU with AVX2, FMA and F16C"
    lib.pd_set_threads(_default_threads())
    return lib, tuple(name for name, bit in PATH_BITS.items() if bits & bit), None


def unavailable_reason() -> str | None:
    """None when the kernels can run here, else one line saying why not."""
    return _state()[2]


def available() -> bool:
    return _state()[2] is None


def library() -> ctypes.CDLL:
    """The loaded native library; ParadecError (one line) when it is unavailable."""
    lib, _, reason = _state()
    if reason is not None:
        raise ParadecError(reason)
    return lib


def paths() -> list[str]:
    """Kernel paths this CPU runs, worst first (empty when unavailable)."""
    return list(_state()[1])


def best_path() -> str:
    """The path qmatmul uses by default: ``$PARADEC_NATIVE_PATH`` if set, else the fastest here."""
    _, have, reason = _state()
    if reason is not None:
        raise ParadecError(reason)
    forced = os.environ.get("PARADEC_NATIVE_PATH")
    if forced:
        return _check_path(forced, have)
    return have[-1]


def _check_path(path: str, have: tuple[str, ...]) -> str:
    if path not in PATH_BITS:
        raise ParadecError(f"unknown native kernel path '{path}' (choose from {', '.join(PATH_BITS)})")
    if path not in have:
        raise ParadecError(f"native kernel path '{path}' is not supported by this CPU (it runs {', '.join(have) or 'none'})")
    return path


def set_threads(n: int) -> None:
    """Threads of the kernels' own pool (n < 1: the default)."""
    library().pd_set_threads(int(n) if n >= 1 else _default_threads())


def threads() -> int:
    return library().pd_get_threads()


def set_amx_min_rows(rows: int) -> int:
    """From how many rows a product on the ``amx`` path runs AMX tiles (below: the AVX512-VNNI
    kernels, the same bits); returns the previous value. For measurements and tests."""
    lib = library()
    old = lib.pd_get_amx_min_rows()
    lib.pd_set_amx_min_rows(int(rows))
    return old


class _WDesc(ctypes.Structure):  # csrc/qgemm.h pd_wdesc
    _fields_ = [(f, ctypes.c_int) for f in ("kind", "n", "k", "kp", "group", "half", "biased")] + [
        (f, ctypes.c_void_p) for f in ("q", "a", "off")
    ]


TILE = 16  # columns interleaved in one tile (csrc/qgemm.h PD_TILE_COLS)


@dataclass(frozen=True)
class QuantWeight:
    """One quantized [N, K] matrix in the kernels' layout (values exactly as in the file).

    Columns are interleaved in tiles of 16 (N padded with zero columns), each 32-block as 8
    chunks of 4 weights per column; see csrc/qgemm.h for the byte order."""

    qtype: str  # "Q4_1", ...
    n: int  # out_features
    k: int  # in_features
    kind: int  # KIND_Q4 (nibbles) or KIND_Q8 (bytes)
    kp: int  # K rounded up to 32
    group: int  # weights per scale: 32, or 16 (Q6_K)
    biased: bool  # Q8 bytes hold q + 128 (signed types)
    q: np.ndarray  # uint8 [T, nb, 4, 16, 4] (Q4: chunks j | j+4 << 4) or [T, nb, 8, 16, 4] (Q8)
    a: np.ndarray  # [T, nb, 32 // group, 16] float32, or float16 where every scale is one exactly
    off: np.ndarray | None  # [T, nb, 16], the dtype of a, or None
    _desc: tuple = field(init=False, repr=False, compare=False)  # (pd_wdesc, its address)

    def __post_init__(self):
        for arr in (self.q, self.a) + ((self.off,) if self.off is not None else ()):
            if not arr.flags.c_contiguous:
                raise ParadecError("QuantWeight arrays must be C-contiguous")
        if self.off is not None and self.off.dtype != self.a.dtype:
            raise ParadecError("QuantWeight scales and offsets must share one dtype")
        ptr = lambda arr: arr.ctypes.data if arr is not None else None  # noqa: E731
        half = int(self.a.dtype == np.float16)
        desc = _WDesc(self.kind, self.n, self.k, self.kp, self.group, half, int(self.biased), ptr(self.q), ptr(self.a), ptr(self.off))
        object.__setattr__(self, "_desc", (desc, ctypes.addressof(desc)))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.k)

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.a.nbytes + (self.off.nbytes if self.off is not None else 0)

    @classmethod
    def from_gguf(cls, raw: bytes | np.ndarray, qtype: str | int, shape: tuple[int, int]) -> QuantWeight:
        fmt = quants.block_format(qtype)
        if fmt.name not in _KIND:
            raise ParadecError(f"{fmt.name} weights have no quantized kernel (native backend: {', '.join(_KIND)})")
        n, k = (int(s) for s in shape)
        u = quants.unpack(raw, fmt.name, n, k)
        kp = -(-k // 32) * 32
        nb, npad, t = kp // 32, -(-n // TILE) * TILE, -(-n // TILE)
        kind, biased = _KIND[fmt.name], fmt.signed
        q = np.zeros((npad, kp), dtype=np.int16)
        q[:n, :k] = u.q
        if biased:
            q += 128  # zero padding stays a zero weight: its scale is zero
        q = q.astype(np.uint8).reshape(t, TILE, nb, 8, 4).transpose(0, 2, 3, 1, 4)  # [T, nb, chunk, col, 4]
        if kind == KIND_Q4:
            q = q[:, :, :4] | (q[:, :, 4:] << 4)
        g = 32 // u.group
        a = np.zeros((npad, nb * g), dtype=np.float32)
        a[:n, : u.a.shape[1]] = u.a
        a = a.reshape(t, TILE, nb, g).transpose(0, 2, 3, 1)
        off = None
        if u.b is not None:
            off = np.zeros((npad, nb), dtype=np.float32)
            off[:n, : u.b.shape[1]] = u.b
            off = off.reshape(t, TILE, nb).transpose(0, 2, 1)
        dt = np.float16 if _exact_half(a) and (off is None or _exact_half(off)) else np.float32  # fewer bytes, same values
        q, a = np.ascontiguousarray(q), np.ascontiguousarray(a, dtype=dt)
        off = None if off is None else np.ascontiguousarray(off, dtype=dt)
        return cls(fmt.name, n, k, kind, kp, u.group, biased, q, a, off)

    def int_values(self) -> np.ndarray:
        """The integers q [N, K] (int8 or uint8, as the type stores them)."""
        q = self.q
        if self.kind == KIND_Q4:
            q = np.concatenate([q & 0x0F, q >> 4], axis=2)
        t, nb = q.shape[0], q.shape[1]
        q = q.transpose(0, 3, 1, 2, 4).reshape(t * TILE, nb * 32)[: self.n, : self.k]
        if self.biased:
            return (q.astype(np.int16) - 128).astype(np.int8)
        return q.view(np.int8) if quants.FORMATS[self.qtype].signed else q

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """[N, K]: float32 rounds as ggml does (a * q + b), float64 is exact."""
        t, nb, g = self.a.shape[0], self.a.shape[1], self.a.shape[2]
        a = self.a.transpose(0, 3, 1, 2).reshape(t * TILE, nb * g)[: self.n].astype(dtype)
        w = np.repeat(a, self.group, axis=1)[:, : self.k] * self.int_values().astype(dtype)
        if self.off is not None:
            off = self.off.transpose(0, 2, 1).reshape(t * TILE, nb)[: self.n].astype(dtype)
            w = w + np.repeat(off, 32, axis=1)[:, : self.k]
        return w


@lru_cache(maxsize=1)
def _default_code() -> int:
    """qmatmul's default path (``best_path()`` when first used: the override is read once)."""
    return PATH_BITS[best_path()]


def _exact_half(v: np.ndarray) -> bool:
    with np.errstate(over="ignore"):
        h = v.astype(np.float16)
    return bool(np.array_equal(h.astype(np.float32), v) and np.array_equal(np.signbit(h), np.signbit(v)))


def qmatmul(x: torch.Tensor, w: QuantWeight, path: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """x float32 [M, K] contiguous -> float32 [M, N] = x @ W^T (into ``out`` when given)."""
    lib, have, reason = _state()
    if reason is not None:
        raise ParadecError(reason)
    code = _default_code() if path is None else PATH_BITS[_check_path(path, have)]
    if type(x) is not torch.Tensor or x.dtype != torch.float32 or x.dim() != 2 or x.device.type != "cpu":
        raise ParadecError("qmatmul needs x as a float32 CPU tensor [M, K]")
    m, k = x.shape
    if k != w.k:
        raise ParadecError(f"qmatmul: x has {k} columns, the weight {w.k} inputs")
    if x.stride(1) != 1 or x.stride(0) < k:
        x = x.contiguous()
    if out is None:
        out = torch.empty((m, w.n), dtype=torch.float32)
    elif out.dtype != torch.float32 or out.shape != (m, w.n) or not out.is_contiguous() or out.device.type != "cpu":
        raise ParadecError(f"qmatmul: out must be a contiguous float32 CPU tensor [{m}, {w.n}]")
    rc = lib.pd_qgemm_desc(code, w._desc[1], x.data_ptr(), m, max(x.stride(0), k), out.data_ptr(), w.n)
    if rc != 0:
        raise ParadecError(f"qmatmul failed: {_ERRORS.get(rc, rc)}")
    return out
