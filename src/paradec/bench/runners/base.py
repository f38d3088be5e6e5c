"""What every benchmarked row (a paradec method or a peer) implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class RunOutput:
    """One generation. Token counting is the same for every row: the generated ids up to and
    including the first end-of-sequence token, at most ``max_new_tokens`` of them. ``seconds``
    is wall time from prompt ids to the last token, prefill included."""

    token_ids: list[int]
    seconds: float
    forwards: int | None = None  # target forwards that produced tokens (the first one included)
    forward_tokens: int | None = None  # tokens those forwards fed the target (1 + draft size each)
    committed: int | None = None  # tokens the forwards committed (before cutting at EOS)
    accept_lengths: list[int] = field(default_factory=list)  # tokens committed per forward
    draft_s: float | None = None
    forward_s: float | None = None
    verify_s: float | None = None
    prefill_s: float | None = None


class Runner:
    """A row of the benchmark. ``prepare`` loads what the row needs and raises on failure (the
    run loop records the reason and keeps the row); ``run`` generates for one prompt."""

    name: str = ""
    kind: str = "peer"  # "paradec" | "peer"
    description: str = ""
    quantization: str = ""  # the weights' quantization where the row runs its own (llama.cpp: "Q4_1")

    def prepare(self) -> None:
        pass

    def run(self, prompt_ids: list[int], max_new_tokens: int, temperature: float, seed: int) -> RunOutput:
        raise NotImplementedError

    def close(self) -> None:
        pass


def cut_at_eos(ids: Sequence[int], eos_ids: frozenset[int] | set[int], max_new_tokens: int) -> list[int]:
    """The first ``max_new_tokens`` ids, ending after the first EOS id if there is one."""
    out: list[int] = []
    for t in ids[:max_new_tokens]:
        out.append(int(t))
        if int(t) in eos_ids:
            break
    return out
