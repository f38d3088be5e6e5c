"""The GGUF block formats the native backend reads, their exact dequantization, test quantizers.

Every supported type decodes to integers ``q`` with one scale ``a`` (and for some types one
offset ``b``) per group of ``g`` consecutive weights of a row: ``w = a * q + b``. The scale and
offset are products of the file's float16 numbers with small integers, so they are exact in
float32, and ``a * q + b`` is exact in float64: that is the reference value of a weight.
The kernels' repacked layout (``kernels.QuantWeight``) stores exactly these ``q``, ``a`` and ``b``.

The quantizers at the bottom exist for tests (any valid encoding will do: the reference is
always the dequantized value of the bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

from ...errors import ParadecError

QK_K = 256


@dataclass(frozen=True)
class BlockFormat:
    name: str
    qtype: int  # GGMLQuantizationType value
    block: int  # weights per block
    nbytes: int  # bytes per block
    group: int  # weights sharing one scale (and offset)
    signed: bool  # q is signed (int8) rather than unsigned
    bits: int  # bits of q
    has_offset: bool


FORMATS: dict[str, BlockFormat] = {
    f.name: f
    for f in (
        BlockFormat("Q4_0", int(GT.Q4_0), 32, 18, 32, False, 4, True),
        BlockFormat("Q4_1", int(GT.Q4_1), 32, 20, 32, False, 4, True),
        BlockFormat("Q8_0", int(GT.Q8_0), 32, 34, 32, True, 8, False),
        BlockFormat("Q4_K", int(GT.Q4_K), QK_K, 144, 32, False, 4, True),
        BlockFormat("Q5_K", int(GT.Q5_K), QK_K, 176, 32, False, 5, True),
        BlockFormat("Q6_K", int(GT.Q6_K), QK_K, 210, 16, True, 6, False),
        BlockFormat("F32", int(GT.F32), 1, 4, 1, True, 32, False),
        BlockFormat("F16", int(GT.F16), 1, 2, 1, True, 16, False),
    )
}
FLOAT_TYPES = ("F32", "F16")


def block_format(qtype: str | int) -> BlockFormat:
    """The format for a type given by name ("Q4_1") or GGML type number."""
    if isinstance(qtype, str):
        fmt = FORMATS.get(qtype.upper())
    else:
        fmt = next((f for f in FORMATS.values() if f.qtype == int(qtype)), None)
    if fmt is None:
        name = qtype if isinstance(qtype, str) else _gt_name(qtype)
        raise ParadecError(f"unsupported GGUF tensor type {name} (native backend reads {', '.join(FORMATS)})")
    return fmt


def _gt_name(qtype: int) -> str:
    try:
        return GT(int(qtype)).name
    except ValueError:
        return f"#{qtype}"


@dataclass(frozen=True)
class Unpacked:
    """A [N, K] matrix as integers with per-group scale/offset: w[n, k] = a[n, k//g] * q[n, k] + b[n, k//g]."""

    q: np.ndarray  # [N, K] int8 (signed types) or uint8
    a: np.ndarray  # [N, K // group] float32
    b: np.ndarray | None  # [N, K // group] float32, None where the type has no offset
    group: int

    def dequantize(self, dtype=np.float64) -> np.ndarray:
        """[N, K] in float64 (exact) or float32 (rounded once, as ggml does)."""
        rep = lambda v: np.repeat(v.astype(dtype), self.group, axis=1)  # noqa: E731
        w = rep(self.a) * self.q.astype(dtype)
        return w + rep(self.b) if self.b is not None else w


def _blocks(raw: bytes | np.ndarray, fmt: BlockFormat, n: int, k: int) -> np.ndarray:
    if k % fmt.block:
        raise ParadecError(f"{fmt.name} tensor row length {k} is not a multiple of its block size {fmt.block}")
    data = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else np.asarray(raw).view(np.uint8).reshape(-1)
    want = n * (k // fmt.block) * fmt.nbytes
    if data.size != want:
        raise ParadecError(f"{fmt.name} tensor [{n}, {k}] needs {want} bytes, got {data.size} (truncated or corrupt file)")
    return data.reshape(n * (k // fmt.block), fmt.nbytes)


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32).reshape(b.shape[0])


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """[B, 16] bytes of the 32-blocks -> [B, 32]: low nibbles are weights 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes of a Q4_K/Q5_K super-block -> 8 six-bit scales and 8 six-bit mins."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc, mn


def unpack(raw: bytes | np.ndarray, qtype: str | int, n: int, k: int) -> Unpacked:
    """Decode the bytes of an [n, k] GGUF tensor (rows of k weights) into q, a, b."""
    fmt = block_format(qtype)
    if fmt.name in FLOAT_TYPES:
        raise ParadecError(f"{fmt.name} is a float type: it has no quantized form")
    blk = _blocks(raw, fmt, n, k)
    nb = blk.shape[0]
    if fmt.name in ("Q4_0", "Q4_1"):
        d = _f16(blk[:, 0:2])
        q = _nibbles32(blk[:, -16:])
        b = -8.0 * d if fmt.name == "Q4_0" else _f16(blk[:, 2:4])
        a = d
    elif fmt.name == "Q8_0":
        a = _f16(blk[:, 0:2])
        q = blk[:, 2:].view(np.int8)
        b = None
    elif fmt.name in ("Q4_K", "Q5_K"):
        d, dmin = _f16(blk[:, 0:2]), _f16(blk[:, 2:4])
        sc, mn = _k_scales(blk[:, 4:16])
        a = (d[:, None] * sc.astype(np.float32)).reshape(-1)
        b = (-(dmin[:, None] * mn.astype(np.float32))).reshape(-1)
        qs = blk[:, -128:].reshape(nb, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        q = (qs & 0x0F).reshape(nb, 8, 32)
        if fmt.name == "Q5_K":
            qh = blk[:, 16:48].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
            q = q | ((qh & 1) << 4)
        q = q.reshape(nb * 8, 32)
    elif fmt.name == "Q6_K":
        ql = blk[:, 0:128].reshape(nb, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        ql = (ql & 0x0F).reshape(nb, 2, 4, 32)
        qh = blk[:, 128:192].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        qh = (qh & 0x03).reshape(nb, 2, 4, 32)
        q = ((ql | (qh << 4)).astype(np.int16) - 32).astype(np.int8).reshape(nb * 16, 16)
        sc = blk[:, 192:208].view(np.int8).astype(np.float32)
        a = (_f16(blk[:, 208:210])[:, None] * sc).reshape(-1)
        b = None
    else:  # pragma: no cover - FORMATS and this switch are kept in step
        raise ParadecError(f"unsupported GGUF tensor type {fmt.name}")
    g = fmt.group
    return Unpacked(
        q=np.ascontiguousarray(q.reshape(n, k)),
        a=np.ascontiguousarray(a.reshape(n, k // g), dtype=np.float32),
        b=None if b is None else np.ascontiguousarray(np.asarray(b).reshape(n, k // g), dtype=np.float32),
        group=g,
    )


def dequantize(raw: bytes | np.ndarray, qtype: str | int, n: int, k: int, dtype=np.float64) -> np.ndarray:
    """The [n, k] matrix the bytes hold: float64 exact, float32 as ggml rounds it; floats pass through."""
    fmt = block_format(qtype)
    if fmt.name in FLOAT_TYPES:
        blk = _blocks(raw, fmt, n, k)
        return blk.view(np.float32 if fmt.name == "F32" else np.float16).reshape(n, k).astype(dtype)
    return unpack(raw, fmt.name, n, k).dequantize(dtype)


def dequantize_gguf(raw: bytes | np.ndarray, qtype: str | int, n: int, k: int) -> np.ndarray:
    """The gguf package's own float32 dequantization (an independent check of ``dequantize``)."""
    fmt = block_format(qtype)
    return gq.dequantize(_blocks(raw, fmt, n, k).reshape(n, -1), GT(fmt.qtype)).reshape(n, k)


# ---------------------------------------------------------------- quantizers for tests


def quantize(w: np.ndarray, qtype: str | int) -> bytes:
    """Encode a float [N, K] matrix as the bytes of a GGUF tensor of this type (for tests)."""
    fmt = block_format(qtype)
    w = np.ascontiguousarray(w, dtype=np.float32)
    n, k = w.shape
    if k % fmt.block:
        raise ParadecError(f"{fmt.name} needs rows that are a multiple of {fmt.block} (got {k})")
    if fmt.name == "F32":
        return w.tobytes()
    if fmt.name == "F16":
        return w.astype(np.float16).tobytes()
    if fmt.name in ("Q4_0", "Q4_1", "Q8_0"):
        return gq.quantize(w, GT(fmt.qtype)).tobytes()
    blocks = w.reshape(-1, QK_K)
    return {"Q4_K": _quant_q4k, "Q5_K": _quant_q5k, "Q6_K": _quant_q6k}[fmt.name](blocks).tobytes()


def _h(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _k_min_scale(blocks: np.ndarray, levels: int):
    """Per 32-group six-bit scale/min codes and super-block d/dmin for w ~ d*sc*q - dmin*m."""
    g = blocks.reshape(-1, 8, 32)
    lo = np.minimum(g.min(axis=2), 0.0)  # [B, 8]: min <= 0 so that -dmin*m covers it with m >= 0
    step = (g.max(axis=2) - lo) / levels
    dmin = (-lo).max(axis=1) / 63
    d = step.max(axis=1) / 63
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(dmin[:, None] > 0, np.rint(-lo / dmin[:, None]), 0).clip(0, 63).astype(np.uint8)
        sc = np.where(d[:, None] > 0, np.ceil(step / d[:, None]), 0).clip(0, 63).astype(np.uint8)
    d16, dm16 = d.astype(np.float16).astype(np.float32), dmin.astype(np.float16).astype(np.float32)
    a = d16[:, None] * sc
    b = dm16[:, None] * m
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(a[:, :, None] > 0, np.rint((g + b[:, :, None]) / a[:, :, None]), 0).clip(0, levels).astype(np.uint8)
    packed = np.zeros((g.shape[0], 12), np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (m[:, :4] & 0x3F) | ((m[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return _h(d), _h(dmin), packed, q  # q: [B, 8, 32]


def _quant_q4k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _k_min_scale(blocks, 15)
    q = q.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d, dmin, scales, qs], axis=1)


def _quant_q5k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _k_min_scale(blocks, 31)
    lo = (q & 0x0F).reshape(-1, 4, 2, 32)
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128)
    hi = (q >> 4).astype(np.uint8)  # [B, 8, 32]
    qh = np.zeros((q.shape[0], 32), np.uint8)
    for j in range(8):
        qh |= hi[:, j] << j
    return np.concatenate([d, dmin, scales, qh, qs], axis=1)


def _quant_q6k(blocks: np.ndarray) -> np.ndarray:
    g = blocks.reshape(-1, 16, 16)
    amax = np.abs(g).max(axis=2)  # [B, 16]
    d = amax.max(axis=1) / (127 * 31)
    d16 = d.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d16[:, None] > 0, np.ceil(amax / 31 / d16[:, None]), 0).clip(-128, 127).astype(np.int8)
        a = d16[:, None] * sc
        q = np.where(a[:, :, None] > 0, np.rint(g / a[:, :, None]), 0).clip(-32, 31).astype(np.int16) + 32
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)  # [B, half, quarter, 32]
    lo = q & 0x0F
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2).reshape(-1, 128)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), _h(d)], axis=1)
