"""The one decode loop: propose -> one target forward over the draft -> verify -> roll back.

Invariant: the target cache holds every committed token but the last one (the *root*), and
slot i holds position i. Each step feeds the root plus the draft tree in one forward, commits
the accepted path plus one target-sampled token, and rolls the cache back to the committed
prefix (truncate for chains, compact for trees).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from .errors import ParadecError
from .models.adapter import CausalLM
from .proposers.base import ProposeContext, Proposer, StepResult
from .sampling import SamplingParams, target_probs
from .stats import DecodeStats
from .tree import DraftTree, attention_mask
from .verify import verify_greedy, verify_sampling


@dataclass(frozen=True)
class DecodeConfig:
    max_new_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    eos_ids: frozenset[int] = frozenset()
    max_draft: int = 64  # hard cap on draft nodes per forward

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise ParadecError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens}")


def decode(
    target: CausalLM,
    proposer: Proposer,
    prompt: Sequence[int],
    cfg: DecodeConfig,
    stats: DecodeStats | None = None,
    stop: Callable[[list[int]], bool] | None = None,
) -> Iterator[list[int]]:
    """Yield the tokens committed by each step (after stop handling). ``stats`` is filled in
    place. ``stop(generated)`` is asked after every token; True ends generation after it."""
    stats = stats if stats is not None else DecodeStats()
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ParadecError("the prompt is empty")
    if len(prompt) >= target.max_context:
        raise ParadecError(f"the prompt has {len(prompt)} tokens; the model's context window is {target.max_context}")
    stats.method, stats.prompt_tokens = getattr(proposer, "name", type(proposer).__name__), len(prompt)
    t_start = time.perf_counter()
    try:
        yield from _steps(target, proposer, prompt, cfg, stats, stop, t_start)
    finally:
        stats.total_s = time.perf_counter() - t_start


def _steps(target, proposer, prompt, cfg, stats, stop, t_start) -> Iterator[list[int]]:
    sampling, device = cfg.sampling, target.device
    greedy = sampling.greedy
    generator = None if greedy else sampling.generator(device)
    draft_generator = None if greedy else sampling.generator("cpu", stream=1)
    limit = min(target.max_context, len(prompt) + cfg.max_new_tokens)  # total sequence length cap
    cache = target.new_cache(capacity=limit + cfg.max_draft + 1)
    if len(prompt) > 1:
        target.prefill(torch.tensor([prompt[:-1]]), cache)
    stats.prefill_s = time.perf_counter() - t_start
    proposer.begin(prompt, sampling)
    tokens = list(prompt)
    generated: list[int] = []

    while True:
        room = limit - len(tokens)  # tokens we may still commit
        if room <= 0:
            stats.stop_reason = "length" if len(tokens) - len(prompt) >= cfg.max_new_tokens else "context"
            break
        t0 = time.perf_counter()
        max_nodes = min(cfg.max_draft, room - 1)
        draft = DraftTree()
        if max_nodes > 0:
            ctx = ProposeContext(tokens, len(prompt), max_nodes, room - 1, sampling, draft_generator)
            draft = proposer.propose(ctx).limit_depth(room - 1).truncated(max_nodes)
        t1 = time.perf_counter()

        # ---- one target forward over root + draft ------------------------------------------
        base = cache.seq_len  # == len(tokens) - 1; the root sits at position `base`
        ids = torch.tensor([draft.input_ids(tokens[-1])])  # [1, n+1]
        positions = torch.tensor([[base + o for o in draft.position_offsets()]])  # [1, n+1]
        mask = attention_mask(draft, base)[None]  # [1, n+1, base+n+1]
        logits = target.forward(ids, positions, cache, mask)[0]  # [n+1, V]
        t2 = time.perf_counter()

        # ---- verify, then roll the cache back to the committed prefix -------------------------
        if greedy:
            verdict = verify_greedy(draft, logits)
        else:
            verdict = verify_sampling(draft, target_probs(logits, sampling), generator)
        if draft.is_chain:
            cache.truncate(base + 1 + len(verdict.accepted))
        else:
            cache.compact([base] + [base + 1 + i for i in verdict.accepted], offset=base)
        t3 = time.perf_counter()

        stats.draft_s += t1 - t0
        stats.forward_s += t2 - t1
        stats.verify_s += t3 - t2
        stats.record_step(draft.depth, len(draft), len(verdict.accepted), verdict.bonus)
        new = verdict.tokens
        tokens.extend(new)
        proposer.observe(StepResult(draft, verdict, tokens, logits))

        # ---- emit, honouring EOS / stop strings inside the accepted block ----------------------
        emitted: list[int] = []
        for t in new:
            emitted.append(t)
            generated.append(t)
            if t in cfg.eos_ids:
                stats.stop_reason = "eos"
            elif stop is not None and stop(generated):
                stats.stop_reason = "stop"
            if stats.stop_reason:
                break
        stats.new_tokens = len(generated)
        if emitted:
            yield emitted
        if stats.stop_reason:
            break
