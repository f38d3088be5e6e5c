"""Cache policies (Fast-dLLM style) for models that support them.

- ``none``: every step is a full forward.
- ``prefix``: keys/values of everything before the current block come from the last full
  forward; the block and everything after it are recomputed each step.
- ``dual``: keys/values of everything outside the current block come from the cache; only the
  block is recomputed.

A full forward (refresh) happens at the start of every block and, with ``refresh_every=n``, every
n steps. With bidirectional attention cached keys/values go stale as tokens are committed, so
prefix and dual caches are approximate; ``refresh_every=1`` gives exactly the no-cache result.
``measure_agreement=True`` also runs a full forward on every cached step (not counted) and
records whether the argmax over the candidates matched (stats.cache_agreement).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ParadecError
from ..protocol import CACHES


@dataclass
class CachePolicy:
    kind: str = "none"
    refresh_every: int = 0  # 0: only at block starts
    measure_agreement: bool = False

    def __post_init__(self) -> None:
        if self.kind not in CACHES:
            raise ParadecError(f"unknown cache '{self.kind}' (one of {', '.join(CACHES)})")
        if int(self.refresh_every) < 0:
            raise ParadecError(f"refresh_every must be >= 0, got {self.refresh_every}")
        self.refresh_every = int(self.refresh_every)

    def check(self, supported: tuple[str, ...], model_name: str = "model") -> None:
        if self.kind not in supported:
            raise ParadecError(f"{model_name} does not support the '{self.kind}' cache (supported: {', '.join(supported)})")
