"""OneOptions frozen config per decoding method: its ``--opt`` options (name, type, default) as fields,
and how they make the method's commit rule, block schedule, editing and EOS handling.

``CommonOptions`` holds the options every method takes; each method's config adds its own. The one
typed parser (``paradec.options``: ``from_text`` then ``build``) turns ``key=value`` text into a
config, so an unknown option or a value of the wrong type is a one-line error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ParadecError
from .blocks import AdaBlock, BlockSchedule, FixedBlocks
from .commit import CommitPolicy, Credit, Entropy, Factor, LocalLeap, Margin, Prophet, RandomK, Threshold, TopK
from .edit import EditPolicy

OFF = math.nan  # eos_reject's default: no EOS early rejection (a given value must be finite)


@dataclass(frozen=True)
class CommonOptions:
    """Options of every method. ``eos_stop`` and ``measure_agreement`` are integers read as
    booleans (0 = off), as they always were."""

    block_size: int = 0  # fixed semi-AR blocks (0: one block)
    cache: str = "none"  # none, prefix or dual
    refresh: int = 0  # refresh the cache every n steps (0: at block starts only)
    eos_stop: int = 1
    eos_reject: float = OFF  # 0..1: EOS confidence x (g + (1 - g) * progress)
    temperature: float = 0.0
    seed: int = 0
    gen_length: int = 18  # the answer length (the caller's default when not given)
    measure_agreement: int = 0

    def commit(self, filter_model=None) -> CommitPolicy:
        return TopK(k=1)

    def blocks(self, eos_id: int) -> BlockSchedule:
        return FixedBlocks(self.block_size or None)

    def edit(self) -> EditPolicy | None:
        return None

    def reject(self) -> float | None:
        """EOS early rejection's gamma (None: off)."""
        return None if math.isnan(self.eos_reject) else self.eos_reject

    def extra(self) -> dict:
        """What a method needs beyond Settings (FreeDaveOptions's depth)."""
        return {}


@dataclass(frozen=True)
class OneOptions(CommonOptions):
    def extra(self) -> dict:
        return {"depth": 4}


@dataclass(frozen=True)
class FreeDaveOptions(CommonOptions):
    depth: int = 4

    def extra(self) -> dict:
        return {"depth": self.depth}


@dataclass(frozen=True)
class TopKOptions(CommonOptions):
    steps: int = 4

    def commit(self, filter_model=None) -> CommitPolicy:
        return TopK(steps=self.steps)


@dataclass(frozen=True)
class RandomOptions(CommonOptions):
    k: int = 2

    def commit(self, filter_model=None) -> CommitPolicy:
        return RandomK(k=self.k)


@dataclass(frozen=True)
class AscendingOptions(CommonOptions):
    def commit(self, filter_model=None) -> CommitPolicy:
        return TopK(schedule="ascending")


@dataclass(frozen=True)
class EoserOptions(AscendingOptions):
    gamma: float = 0.1  # EOS early rejection, unless eos_reject is given

    def reject(self) -> float | None:
        return self.gamma if math.isnan(self.eos_reject) else self.eos_reject


@dataclass(frozen=True)
class ThresholdOptions(CommonOptions):
    tau: float = 0.9

    def commit(self, filter_model=None) -> CommitPolicy:
        return Threshold(self.tau)


@dataclass(frozen=True)
class FactorOptions(CommonOptions):
    f: float = 1.0

    def commit(self, filter_model=None) -> CommitPolicy:
        return Factor(self.f)


@dataclass(frozen=True)
class MarginOptions(CommonOptions):
    tau: float = 0.8

    def commit(self, filter_model=None) -> CommitPolicy:
        return Margin(self.tau)


@dataclass(frozen=True)
class EntropyOptions(CommonOptions):
    tau: float = 0.3

    def commit(self, filter_model=None) -> CommitPolicy:
        return Entropy(self.tau)


@dataclass(frozen=True)
class ProphetOptions(CommonOptions):
    def commit(self, filter_model=None) -> CommitPolicy:
        return Prophet()


@dataclass(frozen=True)
class LocalLeapOptions(CommonOptions):
    anchor: float = 0.9
    local: float = 0.6
    radius: int = 3

    def commit(self, filter_model=None) -> CommitPolicy:
        return LocalLeap(self.anchor, self.local, self.radius)


@dataclass(frozen=True)
class CreditOptions(CommonOptions):
    tau: float = 0.9
    gamma: float = 0.7
    alpha: float = 1.0

    def commit(self, filter_model=None) -> CommitPolicy:
        return Credit(self.tau, self.gamma, self.alpha)


@dataclass(frozen=True)
class AdaBlockOptions(ThresholdOptions):
    size: int = 6
    delim_tau: float = 0.5

    def blocks(self, eos_id: int) -> BlockSchedule:
        if self.block_size:
            raise ParadecError("adablock chooses its own block sizes: use size=N, not block_size")
        return AdaBlock(size=self.size, tau=self.delim_tau, delimiters=(eos_id,))


@dataclass(frozen=True)
class EditOptions(CommonOptions):
    tau: float = 0.7
    edit_tau: float = 0.9

    def commit(self, filter_model=None) -> CommitPolicy:
        return Threshold(self.tau)

    def edit(self) -> EditPolicy | None:
        return EditPolicy(tau=self.edit_tau)


@dataclass(frozen=True)
class Learn2PDOptions(CommonOptions):
    tau: float = 0.9

    def commit(self, filter_model=None) -> CommitPolicy:
        from .learned import Learned

        if filter_model is None:
            raise ParadecError("learn2pd needs a model shipped with a trained filter (filter.safetensors)")
        return Learned(filter_model, self.tau)


CONFIGS: dict[str, type[CommonOptions]] = {
    "one": OneOptions, "topk": TopKOptions, "random": RandomOptions, "ascending": AscendingOptions, "eoser": EoserOptions,
    "threshold": ThresholdOptions, "factor": FactorOptions, "margin": MarginOptions, "entropy": EntropyOptions,
    "prophet": ProphetOptions, "localleap": LocalLeapOptions, "credit": CreditOptions, "adablock": AdaBlockOptions,
    "edit": EditOptions, "learn2pd": Learn2PDOptions, "freedave": FreeDaveOptions,
}
