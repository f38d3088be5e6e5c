"""The proposer protocol: every drafter proposes a tree (a chain is a degenerate tree).

Proposers never touch the target's KV cache. A proposer with its own model keeps its own cache
and follows the accepted prefix by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from ..sampling import SamplingParams
from ..tree import DraftTree
from ..verify import Verdict


@dataclass
class ProposeContext:
    tokens: list[int]  # prompt + every committed token; tokens[-1] is the step's root
    n_prompt: int
    max_nodes: int  # draft-size budget this step (the loop truncates to it anyway)
    max_depth: int  # no use drafting past the remaining token budget
    sampling: SamplingParams
    generator: torch.Generator | None = None  # for drafters that sample their tokens
    # structured output: the tokens the grammar forces after the root (the loop adds them to the
    # draft for free; () when it forces none); None when the output is not constrained
    forced: tuple[int, ...] | None = None


@dataclass
class StepResult:
    draft: DraftTree
    verdict: Verdict
    tokens: list[int]  # committed sequence after this step (prompt included)
    logits: torch.Tensor | None = field(default=None, repr=False)  # [n+1, V] target logits


@runtime_checkable
class Proposer(Protocol):
    name: str

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        """A new request starts (reset per-request state unless configured to keep it)."""

    def propose(self, ctx: ProposeContext) -> DraftTree:
        """A draft tree continuing ``ctx.tokens``."""
        ...

    def observe(self, result: StepResult) -> None:
        """What the target accepted (adaptive drafters learn from it)."""


# The optional members of a proposer, one protocol each. They do not extend ``Proposer``: the loop
# also runs a proposer without a ``name`` (its stats then name its class).


@runtime_checkable
class FusedProposer(Protocol):
    """A proposer that runs the verifying forward itself and drafts from what it sees there
    (``head`` reads the hidden states, ``deer-fused`` adds mask blocks; ``auto`` when it takes a
    head). The decode loop hands it each step's forward instead of calling the target."""

    def fused_forward(self, target, step) -> torch.Tensor:
        """Run ``step`` (the loop's ``ForwardInput``: ids, positions, mask, cache) on ``target``;
        return the target's logits [n+1, V]."""
        ...


@runtime_checkable
class TimedProposer(Protocol):
    """A model drafter that reports how its last proposal's time splits, so ``auto`` learns its
    drafting and catch-up costs exactly: (seconds of the first drafter call, which reads the
    tokens committed since it last ran; seconds of the whole proposal; one-token feeds after
    the first call), or None while it has none to report."""

    last_times: tuple[float, float, int] | None


@runtime_checkable
class DraftsFlag(Protocol):
    """A proposer that says whether it drafts at all: ``ar`` (``drafts = False``) takes not even
    a grammar's forced tokens. Any other proposer drafts."""

    drafts: bool


class NoDraft:
    """``ar``: plain autoregressive decoding through the same loop (the baseline)."""

    name = "ar"
    drafts = False  # the baseline drafts nothing, not even a grammar's forced tokens

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        pass

    def propose(self, ctx: ProposeContext) -> DraftTree:
        return DraftTree()

    def observe(self, result: StepResult) -> None:
        pass
