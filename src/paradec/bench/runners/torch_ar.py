"""paradec's plain decoding on the torch backend, as a row beside a native target: the same
GGUF dequantized into transformers weights (float32 or bfloat16), through the same decode loop.
It shows what the native backend gains over the path paradec took before it."""

from __future__ import annotations

from .base import RunOutput, Runner
from .paradec_runner import ParadecRunner


class TorchARRunner(Runner):
    MODES = {
        "torch-ar": "paradec ar on the torch backend (the GGUF dequantized, float32)",
        "torch-ar-bf16": "paradec ar on the torch backend (the GGUF dequantized, bfloat16)",
    }

    def __init__(self, engine, name: str) -> None:
        self.engine, self.name = engine, name
        self.description = self.MODES[name]
        self.dtype = "bfloat16" if name.endswith("-bf16") else "float32"
        self.inner = None  # the torch-backend Engine, once prepared
        self._ar: ParadecRunner | None = None

    def prepare(self) -> None:
        if self.engine.backend != "native":
            raise RuntimeError("the target already runs on the torch backend (row ar is this row)")
        from ...engine import load

        self.inner = load(self.engine.name, dtype=self.dtype, device="cpu", backend="torch")
        self._ar = ParadecRunner(self.inner, "ar")

    def run(self, prompt_ids, max_new_tokens, temperature, seed) -> RunOutput:
        return self._ar.run(prompt_ids, max_new_tokens, temperature, seed)

    def close(self) -> None:
        self.inner = self._ar = None
