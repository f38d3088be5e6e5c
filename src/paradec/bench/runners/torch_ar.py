"""paradec's plain decoding on the torch backend, as a row beside a native target: the same
GGUF dequantized into transformers weights (float32 or bfloat16), through the same decode loop.
It shows what the native backend gains over the path paradec took before it."""

from __future__ import annotations

import time

from .base import RunOutput, Runner


class TorchARRunner(Runner):
    MODES = {
        "torch-ar": "paradec ar on the torch backend (the GGUF dequantized, float32)",
        "torch-ar-bf16": "paradec ar on the torch backend (the GGUF dequantized, bfloat16)",
    }

    def __init__(self, engine, name: str) -> None:
        self.engine, self.name = engine, name
        self.description = self.MODES[name]
        self.dtype = "bfloat16" if name.endswith("-bf16") else "float32"
        self.inner = None

    def prepare(self) -> None:
        if self.engine.backend != "native":
            raise RuntimeError("the target already runs on the torch backend (row ar is this row)")
        from ...engine import load

        self.inner = load(self.engine.name, dtype=self.dtype, device="cpu", backend="torch")

    def run(self, prompt_ids, max_new_tokens, temperature, seed) -> RunOutput:
        t0 = time.perf_counter()
        g = self.inner.generate(list(prompt_ids), method="ar", max_new_tokens=max_new_tokens, temperature=temperature,
                                seed=seed if temperature > 0 else None)
        s = g.stats
        return RunOutput(token_ids=list(g.token_ids), seconds=time.perf_counter() - t0, forwards=s.forwards,
                         forward_tokens=s.forwards + s.drafted, committed=s.committed,
                         accept_lengths=list(s.accept_lengths), prefill_s=s.prefill_s)

    def close(self) -> None:
        self.inner = None
