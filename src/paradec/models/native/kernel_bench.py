"""Time the native matrix kernels on a GGUF's own weights: one forward's matmuls at M rows.

    python -m paradec.models.native.kernel_bench [--model NAME_OR_GGUF] [--rows 1,2,4,8,16,32,64]
        [--path avx2|avx512vnni|amx] [--amx-min-rows N] [--threads N] [--repeat 5] [--cpu-time]

Per distinct weight shape it prints the median time of one call at each M, and for the whole
set of a forward's matmuls (every layer's, plus the output head) the time per forward, the
weight bytes read and the bandwidth that implies at M = 1. The weights are checked against the
gguf package's dequantization first (exact), so the timing runs on the values the file holds.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch

from ...errors import ParadecError
from . import kernels, quants


def gguf_path(name: str | None) -> str:
    from ..loader import resolve

    src = resolve(name)
    if src.kind != "gguf":
        raise ParadecError(f"{name}: not a GGUF model")
    return src.path


def load_matrices(path: str) -> list[tuple[str, kernels.QuantWeight]]:
    """Every 2-D quantized tensor of the file as a QuantWeight (names as in the file)."""
    from gguf import GGUFReader

    out = []
    for t in GGUFReader(path).tensors:
        if len(t.shape) != 2 or t.tensor_type.name in quants.FLOAT_TYPES:
            continue
        k, n = (int(s) for s in t.shape)
        w = kernels.QuantWeight.from_gguf(np.asarray(t.data), t.tensor_type.name, (n, k))
        out.append((t.name, w))
    return out


_CLOCK = time.perf_counter


def _time(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = _CLOCK()
        fn()
        ts.append(_CLOCK() - t0)
    return float(np.median(ts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--rows", default="1,2,4,8,16,32,64")
    ap.add_argument("--path", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--amx-min-rows", type=int, default=0, help="amx path: tiles from this many rows (default: the library's)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-check", action="store_true", help="skip the exactness check of the weights")
    ap.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time (the work, on a busy machine)")
    a = ap.parse_args(argv)
    global _CLOCK
    if a.cpu_time:
        _CLOCK, a.threads = time.thread_time, 1
    try:
        rows = [int(r) for r in a.rows.split(",")]
        path = a.path or kernels.best_path()
        kernels.set_threads(a.threads)
        if a.amx_min_rows > 0:
            kernels.set_amx_min_rows(a.amx_min_rows)
        gguf = gguf_path(a.model)
        mats = load_matrices(gguf)
    except (ParadecError, ValueError) as e:
        print(f"error: {e}")
        return 2
    if not a.no_check:
        from gguf import GGUFReader

        raw = {t.name: t for t in GGUFReader(gguf).tensors}
        for name, w in mats[:: max(1, len(mats) // 8)]:
            t = raw[name]
            ref = quants.dequantize_gguf(np.asarray(t.data), t.tensor_type.name, w.n, w.k)
            if not np.array_equal(w.dequantize(), ref):
                print(f"error: {name}: repacked weights differ from the file's values")
                return 1
    mb = sum(w.nbytes for _, w in mats) / 1e6
    clock = "CPU time of one thread" if a.cpu_time else "wall time"
    print(f"{gguf}: {len(mats)} matrices, {mb:.1f} MB in the kernels' layout; path {path}, {kernels.threads()} threads, {clock}")
    shapes = Counter((w.qtype, w.n, w.k) for _, w in mats)
    first = {}
    for name, w in mats:
        first.setdefault((w.qtype, w.n, w.k), w)
    print("per call, median ms:  " + "  ".join(f"M={m:<5d}" for m in rows))
    for key, count in shapes.items():
        w = first[key]
        times = []
        for m in rows:
            x, out = torch.randn(m, w.k), torch.empty(m, w.n)
            kernels.qmatmul(x, w, path=path, out=out)
            times.append(_time(lambda: kernels.qmatmul(x, w, path=path, out=out), max(a.repeat, 20)))
        print(f"{key[0]} {key[1]:>6d}x{key[2]:<5d} x{count:<3d} " + "  ".join(f"{t * 1e3:7.3f}" for t in times))
    print("one forward's matmuls (all layers + head), median ms:")
    fwd = []
    for m in rows:
        xs = {k: torch.randn(m, k) for k in {w.k for _, w in mats}}
        outs = [torch.empty(m, w.n) for _, w in mats]

        def forward():
            for (_, w), o in zip(mats, outs):
                kernels.qmatmul(xs[w.k], w, path=path, out=o)

        forward()
        fwd.append(_time(forward, a.repeat))
    print("  " + "  ".join(f"M={m}: {t * 1e3:.2f}" for m, t in zip(rows, fwd)))
    if rows[0] == 1:
        print(f"  M=1 reads {mb:.1f} MB: {mb / 1e3 / fwd[0]:.1f} GB/s; " + ", ".join(f"M={m}/M=1 {t / fwd[0]:.2f}x" for m, t in zip(rows[1:], fwd[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
