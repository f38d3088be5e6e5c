"""Benchmark figures from the raw samples: pure functions, so they can be tested on hand-made data.

Definitions (the same for every row):
- tokens/s: generated tokens over wall time, summed over the samples (prefill included);
- speedup: tokens/s over the baseline's tokens/s on the same samples (paradec ``ar``, and
  transformers ``hf`` greedy);
- mean accepted: tokens committed per target forward (draft tokens accepted + the target's own
  token; 1 for plain decoding). paradec counts committed tokens; a peer, whose internals are not
  visible, counts generated tokens over the forwards its model was called for;
- forwards per token: target forwards over generated tokens;
- draft share: time spent drafting over total time (paradec methods only);
- time per forward (paradec methods): drafting, the target forward, verification and the rest
  of the loop ("other": rollback, proposers' bookkeeping, Python), in ms per target forward,
  with the prefill apart;
- identity: generated token ids equal to ``ar``'s on the same prompt ids (greedy only).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

OVERALL = "overall"


@dataclass
class Sample:
    """One generation of one row on one prompt turn (one repeat)."""

    runner: str
    category: str
    prompt_id: str
    turn: int
    repeat: int
    prompt_tokens: int
    new_tokens: int
    seconds: float
    forwards: int | None = None
    forward_tokens: int | None = None
    committed: int | None = None
    accept_lengths: list[int] = field(default_factory=list)
    draft_s: float | None = None
    forward_s: float | None = None
    verify_s: float | None = None
    prefill_s: float | None = None
    identical: bool | None = None
    token_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Summary:
    runner: str
    category: str
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    speedup_vs_ar: float | None = None
    speedup_vs_hf: float | None = None
    mean_accepted: float | None = None
    forwards_per_token: float | None = None
    mean_forward_tokens: float | None = None  # tokens fed per forward: 1 + draft size
    draft_share: float | None = None
    identical: int = 0
    compared: int = 0
    identity_rate: float | None = None
    ideal_speedup: float | None = None  # from the roofline probe (overall rows only)
    step_ms: dict[str, float] | None = None  # ms per target forward: draft, forward, verify, other
    prefill_share: float | None = None  # prefill time over total time

    def to_dict(self) -> dict:
        return asdict(self)


STEP_PARTS = ("draft", "forward", "verify", "other")


def aggregate(samples: list[Sample], runner: str, category: str) -> Summary:
    """Sum one row's samples (``category`` = OVERALL takes all of them)."""
    ss = [s for s in samples if s.runner == runner and (category == OVERALL or s.category == category)]
    out = Summary(runner, category, samples=len(ss))
    if not ss:
        return out
    out.tokens = sum(s.new_tokens for s in ss)
    out.seconds = sum(s.seconds for s in ss)
    out.tokens_per_s = out.tokens / out.seconds if out.seconds > 0 else 0.0
    if all(s.forwards for s in ss):
        forwards = sum(s.forwards for s in ss)
        committed = sum(s.committed for s in ss) if all(s.committed is not None for s in ss) else out.tokens
        out.mean_accepted = committed / forwards
        out.forwards_per_token = forwards / out.tokens if out.tokens else None
        if all(s.forward_tokens is not None for s in ss):
            out.mean_forward_tokens = sum(s.forward_tokens for s in ss) / forwards
    if all(s.draft_s is not None for s in ss) and out.seconds > 0:
        out.draft_share = sum(s.draft_s for s in ss) / out.seconds
    timed = ("draft_s", "forward_s", "verify_s", "prefill_s")
    if out.mean_accepted is not None and out.seconds > 0 and all(getattr(s, k) is not None for s in ss for k in timed):
        forwards = sum(s.forwards for s in ss)
        draft, forward, verify, prefill = (sum(getattr(s, k) for s in ss) for k in timed)
        other = out.seconds - draft - forward - verify - prefill
        out.step_ms = {k: 1000.0 * v / forwards for k, v in zip(STEP_PARTS, (draft, forward, verify, other))}
        out.prefill_share = prefill / out.seconds
    judged = [s.identical for s in ss if s.identical is not None]
    out.compared, out.identical = len(judged), sum(judged)
    out.identity_rate = out.identical / out.compared if judged else None
    return out


def summarize(
    samples: list[Sample], runners: list[str], categories: list[str], baseline: str = "ar", hf: str = "hf"
) -> dict[str, dict[str, Summary]]:
    """runner -> category (and OVERALL) -> Summary, with speedups against ``baseline`` and ``hf``."""
    table = {r: {c: aggregate(samples, r, c) for c in [*categories, OVERALL]} for r in runners}
    for r in runners:
        for c, s in table[r].items():
            for ref, attr in ((baseline, "speedup_vs_ar"), (hf, "speedup_vs_hf")):
                base = table.get(ref, {}).get(c)
                if base is not None and base.tokens_per_s > 0 and s.samples:
                    setattr(s, attr, s.tokens_per_s / base.tokens_per_s)
    return table


def identical_to(reference: list[int] | None, token_ids: list[int]) -> bool | None:
    """Identity against the reference (``ar`` greedy) output; None when there is none."""
    return None if reference is None else list(token_ids) == list(reference)


def accept_histogram(samples: list[Sample], runner: str) -> dict[int, int]:
    """How many forwards committed 1, 2, 3, ... tokens."""
    c: Counter[int] = Counter()
    for s in samples:
        if s.runner == runner:
            c.update(s.accept_lengths)
    return dict(sorted(c.items()))
