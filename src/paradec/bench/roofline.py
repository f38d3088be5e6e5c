"""Roofline probe: how long one target forward takes for k = 1, 2, 4, ..., 64 new tokens on a
real KV cache, and the speedup a method's acceptance would give if drafting were free.

A method that commits ``a`` tokens per forward while feeding ``k`` tokens per forward (the
root plus its draft) would run at ``a / t(k)`` tokens/s with free drafting and verification,
against ``1 / t(1)`` for plain decoding, so its ideal speedup is ``a * t(1) / t(k)``.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from .runners import LlamaCppRunner, TorchARRunner

KS = (1, 2, 4, 8, 16, 32, 64)


def probe(target, prompt_ids: list[int], ks=KS, repeats: int = 5) -> dict[int, float]:
    """Fastest of ``repeats`` timed forwards of k new tokens after ``prompt_ids`` sit in the cache.
    The k values take turns (one forward of each per round, after a warm-up round), and the
    minimum is kept: a burst of other work on a shared machine then spoils no single k."""
    ks = [k for k in ks if len(prompt_ids) + k < target.max_context]
    cache = target.new_cache(capacity=len(prompt_ids) + max(ks) + 1)
    target.prefill(torch.tensor([prompt_ids]), cache)
    base = cache.seq_len
    sync = torch.cuda.synchronize if target.device.type == "cuda" else (lambda: None)
    filler = prompt_ids[-1]
    inputs = {
        k: (torch.full((1, k), filler, dtype=torch.long), torch.arange(base, base + k)[None],
            torch.ones(k, base + k, dtype=torch.bool).tril_(base)[None])
        for k in ks
    }
    best = {k: float("inf") for k in ks}
    for r in range(repeats + 1):  # round 0 warms every shape up
        for k in ks:
            ids, pos, mask = inputs[k]
            sync()
            t0 = time.perf_counter()
            target.forward(ids, pos, cache, mask)
            sync()
            if r:
                best[k] = min(best[k], time.perf_counter() - t0)
            cache.truncate(base)
    return best


def forward_time(curve: dict[int, float], k: float) -> float:
    """t(k), piecewise linear between the probed points (linear extrapolation past the last)."""
    pts = sorted(curve.items())
    if k <= pts[0][0]:
        return pts[0][1]
    for (k0, t0), (k1, t1) in zip(pts, pts[1:]):
        if k <= k1:
            return t0 + (t1 - t0) * (k - k0) / (k1 - k0)
    (k0, t0), (k1, t1) = pts[-2:] if len(pts) > 1 else (pts[-1], pts[-1])
    return t1 if k1 == k0 else t1 + (t1 - t0) * (k - k1) / (k1 - k0)


def ideal_speedup(curve: dict[int, float], mean_accepted: float | None, mean_forward_tokens: float | None) -> float | None:
    if not curve or not mean_accepted or not mean_forward_tokens:
        return None
    return mean_accepted * forward_time(curve, 1) / forward_time(curve, mean_forward_tokens)


def probe_llama(llm, prompt_ids: list[int], ks=KS, repeats: int = 5) -> dict[int, float]:
    """The same probe on a llama-cpp-python ``Llama``: fastest of ``repeats`` evaluations of k
    new tokens after ``prompt_ids`` (its KV cache is cut back to the prompt before each)."""
    ks = [k for k in ks if len(prompt_ids) + k < llm.n_ctx()]
    llm.reset()
    llm.eval(list(prompt_ids))
    base = llm.n_tokens
    filler = [int(prompt_ids[-1])]
    best = {k: float("inf") for k in ks}
    for r in range(repeats + 1):
        for k in ks:
            llm.n_tokens = base  # eval drops the cache past n_tokens before it appends
            t0 = time.perf_counter()
            llm.eval(filler * k)
            if r:
                best[k] = min(best[k], time.perf_counter() - t0)
    llm.reset()
    return best


def read_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: the fastest of ``repeats`` sums over an ``mb`` MB float32
    array (far larger than any cache), on torch's threads."""
    x = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def _torch_targets(engine, rows) -> dict[str, object]:
    """{label: CausalLM} of the torch backend beside a native target: the torch rows' own
    targets where they run, else loaded here (float32 and bfloat16)."""
    from ..engine import load

    have = {r.runner.dtype: r.runner.inner for r in rows if isinstance(r.runner, TorchARRunner) and r.runner.inner is not None}
    return {f"torch {dtype}": (have.get(dtype) or load(engine.name, dtype=dtype, device="cpu", backend="torch")).target
            for dtype in ("float32", "bfloat16")}


def backend_curves(engine, rows, prompt_ids: list[int], ks: list[int], repeats: int) -> dict:
    """Beside a native target: the same probe on the torch backend (float32, bfloat16) and on
    llama.cpp (the same GGUF; the bench's llama.cpp rows' ``Llama``), the measured read
    bandwidth and the GGUF's bytes, so that one plot shows every backend against the memory
    limit. Empty for any other target; a backend that fails leaves a one-line note."""
    if engine.backend != "native":
        return {}
    curves: dict[str, list[float | None]] = {}
    try:
        for label, target in _torch_targets(engine, rows).items():
            c = probe(target, prompt_ids, ks=ks, repeats=repeats)
            curves[label] = [c.get(k) for k in ks]
    except Exception as e:  # noqa: BLE001 - a missing curve is reported, not fatal
        print(f"paradec: note: no torch curve in the roofline ({e})", file=sys.stderr)
    llamas = {r.name: r.runner.llm for r in rows
              if r.status == "ok" and isinstance(r.runner, LlamaCppRunner) and r.runner.llm is not None}
    llm = llamas.get("llama.cpp-pld") or llamas.get("llama.cpp")  # -pld keeps every position's logits
    if llm is not None:
        try:
            c = probe_llama(llm, prompt_ids, ks=ks, repeats=repeats)
            curves["llama.cpp"] = [c.get(k) for k in ks]
        except Exception as e:  # noqa: BLE001
            print(f"paradec: note: no llama.cpp curve in the roofline ({e})", file=sys.stderr)
    out: dict = {"curves": curves, "bandwidth_gbs": read_bandwidth_gbs()}
    if engine.models.gguf_path:
        out["weight_bytes"] = os.path.getsize(engine.models.gguf_path)
    return out
