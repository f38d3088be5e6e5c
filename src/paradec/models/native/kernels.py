"""Quantized matrix kernels on the GGUF's own weights (Python side, through ctypes).

Interface (stable; the model forward builds on it):

- ``QuantWeight.from_gguf(raw, qtype, shape)``: one [N, K] matrix of a GGUF file. ``shape`` is
  (out_features N, in_features K) as torch orders it (the reverse of ``GGUFReader``'s
  ``tensor.shape``); ``qtype`` a name ("Q4_1") or GGML type number. The blocks are repacked once
  into the kernels' layout (see ``csrc/qgemm.h``), which changes no value:
  ``w.dequantize()`` equals ``quants.dequantize(raw, qtype, N, K, np.float32)`` exactly.
- ``qmatmul(x, w, path=None, out=None) -> torch.Tensor``: x float32 [M, K] contiguous (any M;
  tiles of 4 or 8 rows share each weight block), returns float32 [M, N] = x @ W^T. Activations are
  quantized per row in 32-blocks to int8 inside the kernel; the dots are int8 products.
  Batch invariant by construction: row i of the result depends only on row i of x, the weight
  and the path (not on M, the row's place or the thread count). The avx2 and avx512vnni paths
  use one arithmetic and agree bit for bit.
- ``paths()`` (what this CPU runs, in order of preference), ``best_path()`` (honours
  ``$PARADEC_NATIVE_PATH``, e.g. ``avx2``; qmatmul reads it once, at its first call), ``set_threads(n)`` / ``threads()`` (own pthread pool,
  default the CPUs this process may run on or ``$PARADEC_NATIVE_THREADS``; work is split over
  output columns only), ``available()`` and ``unavailable_reason()``, ``library()`` (the ctypes
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

PATH_BITS = {"avx2": 1, "avx512vnni": 2}  # csrc/qgemm.h PD_PATH_*, in order of preference
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
    lib.pd_qgemm.restype = i
    lib.pd_qgemm.argtypes = [i, i, i, i, i, i, i, vp, vp, vp, vp, i, i, vp, i]
    lib.pd_qgemm_desc.restype = i
    lib.pd_qgemm_desc.argtypes = [i, vp, vp, i, i, vp, i]
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


class _WDesc(ctypes.Structure):  # csrc/qgemm.h pd_wdesc
    _fields_ = [(f, ctypes.c_int) for f in ("kind", "n", "k", "kp", "group", "half")] + [
        (f, ctypes.c_void_p) for f in ("q", "a", "off")
    ]


@dataclass(frozen=True)
class QuantWeight:
    """One quantized [N, K] matrix in the kernels' layout (values exactly as in the file)."""

    qtype: str  # "Q4_1", ...
    n: int  # out_features
    k: int  # in_features
    kind: int  # KIND_Q4 (nibbles) or KIND_Q8 (int8)
    kp: int  # K rounded up to 64
    group: int  # weights per scale: 32, or 16 (Q6_K)
    q: np.ndarray  # uint8 [N, kp // 2] (Q4, two 32-blocks per 32 bytes) or [N, kp] (Q8, int8 bits)
    a: np.ndarray  # [N, kp // group] float32, or float16 where every scale is one exactly
    off: np.ndarray | None  # [N, nbp] (nbp = kp / 32 rounded up to 8), same dtype as a, or None
    _desc: tuple = field(init=False, repr=False, compare=False)  # (pd_wdesc, its address)

    def __post_init__(self):
        for arr in (self.q, self.a) + ((self.off,) if self.off is not None else ()):
            if not arr.flags.c_contiguous:
                raise ParadecError("QuantWeight arrays must be C-contiguous")
        if self.off is not None and self.off.dtype != self.a.dtype:
            raise ParadecError("QuantWeight scales and offsets must share one dtype")
        ptr = lambda arr: arr.ctypes.data if arr is not None else None  # noqa: E731
        half = int(self.a.dtype == np.float16)
        desc = _WDesc(self.kind, self.n, self.k, self.kp, self.group, half, ptr(self.q), ptr(self.a), ptr(self.off))
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
        kp = -(-k // 64) * 64
        nb = kp // 32
        nbp = -(-nb // 8) * 8
        q = np.zeros((n, kp), dtype=np.uint8)
        q[:, :k] = u.q.view(np.uint8)
        kind = _KIND[fmt.name]
        if kind == KIND_Q4:
            pairs = q.reshape(n, kp // 64, 2, 32)
            q = np.ascontiguousarray((pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, kp // 2))
        a = np.zeros((n, kp // u.group), dtype=np.float32)
        a[:, : u.a.shape[1]] = u.a
        off = None
        if u.b is not None:
            off = np.zeros((n, nbp), dtype=np.float32)
            off[:, : u.b.shape[1]] = u.b
        if _exact_half(a) and (off is None or _exact_half(off)):  # fewer bytes, the same values
            a = a.astype(np.float16)
            off = None if off is None else off.astype(np.float16)
        return cls(fmt.name, n, k, kind, kp, u.group, q, a, off)

    def int_values(self) -> np.ndarray:
        """The integers q [N, K] (int8 or uint8, as the type stores them)."""
        if self.kind == KIND_Q4:
            packed = self.q.reshape(self.n, self.kp // 64, 1, 32)
            q = (packed >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
            return q.reshape(self.n, self.kp)[:, : self.k]
        q = self.q.view(np.int8)[:, : self.k]
        return q if quants.FORMATS[self.qtype].signed else q.view(np.uint8)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """[N, K]: float32 rounds as ggml does (a * q + b), float64 is exact."""
        g = self.group
        a = np.repeat(self.a.astype(dtype), g, axis=1)[:, : self.k]
        w = a * self.int_values().astype(dtype)
        if self.off is not None:
            w = w + np.repeat(self.off.astype(dtype), 32, axis=1)[:, : self.k]
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
