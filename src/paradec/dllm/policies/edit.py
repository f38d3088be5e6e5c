"""Token editing (LLaDA2.1-style token-to-token editing): an already committed answer token is
replaced when the model now predicts a different token with probability >= ``tau``. Combined with
a low mask-to-token threshold this is the "speedy mode": commit aggressively, repair later."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ParadecError


@dataclass
class EditPolicy:
    tau: float = 0.9
    max_edits: int = 2  # per position, so decoding cannot oscillate forever
    scope: str = "block"  # "block": committed tokens of the current block; "all": the whole answer

    def __post_init__(self) -> None:
        if not 0 < float(self.tau) <= 1:
            raise ParadecError(f"edit threshold must be in (0, 1], got {self.tau}")
        if self.scope not in ("block", "all"):
            raise ParadecError(f"edit scope must be 'block' or 'all', got '{self.scope}'")
