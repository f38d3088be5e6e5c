"""Per-sequence statistics of a diffusion decode: the AR engine's DecodeStats fields where they
apply (forwards, committed, new_tokens, accept_lengths = tokens committed per forward,
mean_accepted = tokens per forward, tokens_per_s), plus what only diffusion decoding has."""

from __future__ import annotations

from dataclasses import dataclass

from ..stats import DecodeStats


@dataclass
class DiffusionStats(DecodeStats):
    steps: int = 0  # decoding steps (forwards this sequence took part in)
    edits: int = 0  # committed tokens later replaced (token editing)
    filled: int = 0  # answer positions filled with EOS by the end-of-text stop, not decoded
    gen_length: int = 0
    cache_checks: int = 0  # cached steps compared with a full forward (measure_agreement)
    cache_agree: int = 0  # ... whose argmax over the candidates matched exactly
    batch_size: int = 1
    model_calls: int = 0  # model calls of the whole batch while this sequence was decoding
    rows: int = 0  # sequences computed by those calls for this one (FreeDave verifies several)

    @property
    def cache_agreement(self) -> float:
        return self.cache_agree / self.cache_checks if self.cache_checks else 1.0

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["cache_agreement"] = self.cache_agreement
        d["tokens_per_forward"] = self.mean_accepted
        return d
