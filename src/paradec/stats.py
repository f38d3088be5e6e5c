"""Statistics every generation returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DecodeStats:
    method: str = ""
    backend: str = ""  # what ran the target ("native Q4_1 avx512vnni", "torch float32 (lean)")
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose keys and values came from a kept prefix (not prefilled)
    new_tokens: int = 0  # tokens returned to the caller (after stop handling)
    forwards: int = 0  # target forwards while decoding (prefill not counted)
    committed: int = 0  # tokens produced by verification (accepted + bonus/recovered), before truncation
    drafted: int = 0  # draft tokens sent to the target
    accepted: int = 0  # draft tokens the target kept
    bonus: int = 0  # steps whose last token was a bonus (no rejection)
    # acceptance by draft depth: proposed_at[d] steps had a draft token at depth d+1,
    # accepted_at[d] of them accepted one there
    proposed_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)
    accept_lengths: list[int] = field(default_factory=list)  # tokens committed per forward
    prefill_s: float = 0.0
    draft_s: float = 0.0
    forward_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0
    stop_reason: str = ""  # "length", "eos", "stop", "context"
    # structured output (a response_format): forced draft tokens the grammar added (and how many
    # of them were accepted), likely ones (the forced bytes' spelling past the forced tokens),
    # proposer nodes it pruned, time in the grammar engine and masking, and whether generation
    # ended before the grammar accepted (the output is then not valid)
    constrained: bool = False
    forced_tokens: int = 0
    forced_accepted: int = 0
    likely_tokens: int = 0
    likely_accepted: int = 0
    pruned_nodes: int = 0
    mask_s: float = 0.0
    incomplete: bool = False

    @property
    def mean_accepted(self) -> float:
        """Mean tokens committed per target forward, bonus/recovered token included (ar = 1)."""
        return self.committed / self.forwards if self.forwards else 0.0

    @property
    def tokens_per_s(self) -> float:
        """End-to-end: new tokens over the whole generation time (prefill included)."""
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        return [a / p if p else 0.0 for a, p in zip(self.accepted_at, self.proposed_at)]

    def record_step(self, depths_proposed: int, n_drafted: int, n_accepted: int, bonus: bool) -> None:
        self.forwards += 1
        self.drafted += n_drafted
        self.accepted += n_accepted
        self.committed += n_accepted + 1
        self.bonus += int(bonus)
        self.accept_lengths.append(n_accepted + 1)
        while len(self.proposed_at) < depths_proposed:
            self.proposed_at.append(0)
            self.accepted_at.append(0)
        for d in range(depths_proposed):
            self.proposed_at[d] += 1
        for d in range(n_accepted):
            self.accepted_at[d] += 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            mean_accepted=self.mean_accepted,
            tokens_per_s=self.tokens_per_s,
            acceptance_rate=self.acceptance_rate,
            per_position_acceptance=self.per_position_acceptance,
        )
        return d
