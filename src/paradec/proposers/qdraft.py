"""``qdraft``: the target drafts for itself through a cheaper copy of its own weights.

The copy is the target with every linear layer in int8 (weight-only, per-channel scales), so it
agrees with the target on most tokens while reading a quarter (float32) or half (bfloat16) of
the weight bytes per forward. It drafts like ``draft`` (its own KV cache, adaptive length); the
full-precision target verifies, so the output is exactly the target's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .draft_model import DraftModelConfig, DraftModelProposer


@dataclass(frozen=True)
class QDraftConfig(DraftModelConfig):
    max_len: int = 6  # the copy agrees with the target often: longer chains pay
    min_confidence: float = 0.2


class QuantizedSelfDraft(DraftModelProposer):
    name = "qdraft"
