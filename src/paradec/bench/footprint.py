"""Resident memory of the server's parts, measured from /proc (``tracemalloc`` cannot see torch).

``python -m paradec.bench.footprint`` loads, in a fresh process per method, what the default
server loads in turn (the imports, the target and its tokenizer, its weights paged in, the
server app, one ``pld`` request), then one request with the method, and prints the resident set
size after each step as markdown tables. Linux only.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
BASE_STEPS = 5  # the default server's steps, before the method's own request
METHODS = ["pld", "suffix", "recycle", "aded", "lookahead", "qdraft", "auto", "head", "deer", "deer-fused"]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _one(method: str, model: str | None, dtype: str, tokens: int) -> list[tuple[str, float]]:
    steps: list[tuple[str, float]] = []

    def mark(name: str) -> None:
        gc.collect()
        steps.append((name, rss_mib()))

    # paradec itself is imported already (this module is part of it; torch comes with it)
    import transformers  # noqa: F401

    mark("python, torch, transformers, paradec imported")
    from ..engine import Engine
    from ..models.loader import load_hf

    loaded = load_hf(model, dtype, "cpu")
    mark(f"target ({dtype}) and tokenizer loaded")
    for p in loaded.model.parameters():  # the weights are mapped from the cache file: page them in
        p.sum()
    mark("target weights read once (as the first forward does)")
    engine = Engine(loaded)
    from ..server.app import ServerConfig, create_app

    create_app(engine, ServerConfig())
    mark("server app and scheduler")
    engine.generate(PROMPT, method="pld", max_new_tokens=tokens)
    mark(f"one pld request ({tokens} tokens)")
    if method != "pld":
        t0 = time.perf_counter()
        engine.generate(PROMPT, method=method, max_new_tokens=tokens)
        mark(f"then one {method} request ({time.perf_counter() - t0:.0f} s)")
    return steps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(_one(a.one, a.model, a.dtype, a.tokens)))
        return
    base: list[tuple[str, float]] | None = None
    extra: dict[str, tuple[float, float]] = {}
    for m in a.methods:
        cmd = [sys.executable, "-m", "paradec.bench.footprint", "--one", m, "--dtype", a.dtype, "--tokens", str(a.tokens)]
        if a.model:
            cmd += ["--model", a.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        steps = json.loads(out)
        base = base or steps[:BASE_STEPS]
        if m != "pld":
            extra[m] = (steps[-1][1], steps[-1][1] - steps[BASE_STEPS - 1][1])
    assert base is not None
    print("| step | RSS MiB | + MiB |\n|---|---:|---:|")
    prev = 0.0
    for name, r in base:
        print(f"| {name} | {r:.0f} | {r - prev:+.0f} |")
        prev = r
    print("\n| method (first request, after the default server's pld request) | RSS MiB | + MiB |\n|---|---:|---:|")
    for m, (r, d) in extra.items():
        print(f"| {m} | {r:.0f} | {d:+.0f} |")


if __name__ == "__main__":
    main()
