"""``qdraft``: the target drafts for itself through a cheaper copy of its own weights
("Speculative Decoding Meets Quantization").

Two backends:
- ``llama.cpp``: the model's own quantized GGUF file run by llama.cpp (``llama-cpp-python``),
  the fastest drafter on a CPU; used automatically when the target was loaded from a GGUF and
  llama-cpp-python is installed;
- ``int8``: the target with every linear layer in int8 (weight-only, per-channel scales).
Either copy agrees with the target on most tokens. It drafts like ``draft`` (its own cache,
adaptive length); the full-precision target verifies, so the output is exactly the target's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .draft_model import DraftModelConfig, DraftModelProposer

BACKENDS = ("auto", "llama.cpp", "int8")


@dataclass(frozen=True)
class QDraftConfig(DraftModelConfig):
    max_len: int = 6  # the copy agrees with the target often: longer chains pay
    min_confidence: float = 0.2
    lookup: int = 0  # greedy: suffix-lookup tokens checked by the copy in one pass (off: see docs/benchmarks.md)
    backend: str = "auto"  # auto = llama.cpp when available for a GGUF target, else int8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise ValueError(f"qdraft backend must be one of {', '.join(BACKENDS)}")


class QuantizedSelfDraft(DraftModelProposer):
    name = "qdraft"
