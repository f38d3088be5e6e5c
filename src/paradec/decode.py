"""The one decode loop: propose -> one target forward over the draft -> verify -> roll back.

Invariant: the target cache holds every committed token but the last one (the *root*), and
slot i holds position i. Each step feeds the root plus the draft tree in one forward, commits
the accepted path plus one target-sampled token, and rolls the cache back to the committed
prefix (truncate for chains, compact for trees). On a batch-invariant target the first step's
forward also carries the prompt's last tokens (up to ``MERGED_PROMPT_ROWS``), which the cache
then lacks until that forward: prefilled beside the first draft, they cost no pass of their own.

The loop body is split in two halves around the forward, ``Decoder.prepare`` (propose, build
the forward's inputs) and ``Decoder.commit`` (verify, roll back, emit), so a caller that owns
several requests can run their forwards together (the server batches plain decoding steps).
``decode`` is the loop for one request: prepare, forward, commit, until done.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from .cache import KVCache
from .errors import ParadecError
from .models.causal_lm import CausalLM, NativeLM, TailLogitsLM, backend_label
from .prefix import PrefixCache, reuses_prefixes
from .proposers.base import DraftsFlag, FusedProposer, ProposeContext, Proposer, StepResult
from .sampling import SamplingParams, target_probs
from .stats import DecodeStats
from .structured import Constraint, Guide
from .tree import DraftTree, attention_mask
from .verify import verify_greedy, verify_greedy_best, verify_sampling


@dataclass(frozen=True)
class DecodeConfig:
    max_new_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    eos_ids: frozenset[int] = frozenset()
    max_draft: int = 64  # hard cap on draft nodes per forward
    constraint: Constraint | None = None  # structured output: the grammar the output must match

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise ParadecError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens}")


@dataclass(frozen=True)
class ForwardInput:
    """One target forward: the root plus the draft tree, on ``cache`` (in a request's first step,
    after P = ``prompt_rows`` rows of the prompt's last tokens; P = 0 otherwise)."""

    ids: torch.Tensor  # [1, P+n+1] long
    positions: torch.Tensor  # [1, P+n+1] long
    mask: torch.Tensor  # [1, P+n+1, base+n+1] bool (base: the root's position)
    cache: KVCache
    fused: bool = False  # the proposer runs this forward itself (it drafts inside it)
    prompt_rows: int = 0  # P: leading rows that only fill the cache (no logits)

    @property
    def plain(self) -> bool:
        """A plain decoding step: one token, no draft (what the server batches across requests)."""
        return self.ids.shape[1] == 1 and not self.fused


# the prompt's last tokens prefilled in the first step's forward (TailLogitsLM), at most one
# prefill chunk: that forward then reads the weights for them and the first draft at once
MERGED_PROMPT_ROWS = 64


def decode(
    target: CausalLM,
    proposer: Proposer,
    prompt: Sequence[int],
    cfg: DecodeConfig,
    stats: DecodeStats | None = None,
    stop: Callable[[list[int]], bool] | None = None,
    prefixes: PrefixCache | None = None,
) -> Iterator[list[int]]:
    """Yield the tokens committed by each step (after stop handling). ``stats`` is filled in
    place. ``stop(generated)`` is asked after every token; True ends generation after it.
    ``prefixes``: kept prompt prefixes (see ``Decoder``)."""
    dec = Decoder(target, proposer, prompt, cfg, stats, stop, prefixes)
    try:
        while (emitted := dec.step()) is not None:
            yield emitted
    finally:
        dec.close()


@contextmanager
def _torch_single_threaded(on: bool) -> Iterator[None]:
    """Torch's ops on one thread while inside (when ``on``). Beside a native target the sampling
    ops over a 49k vocabulary would open torch's parallel regions, whose threads then spin on the
    cores the native kernels' own pool needs for the next forward (sampled ``ar`` on the native
    backend: 108 -> 142 tokens/s on 2 cores). The same samples either way (no op here depends
    on the thread count)."""
    n = torch.get_num_threads()
    if not on or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def context_room(n_prompt: int, max_context: int, model: str | None = None) -> int:
    """The new tokens that fit after a prompt of ``n_prompt`` tokens in a context window of
    ``max_context``; a ParadecError (naming ``model`` when given) when the prompt leaves no room
    for one. The one check of a prompt against the window: the decode loop, the engine and the
    server's scheduler all call it."""
    if n_prompt >= max_context:
        window = "the context window" if model is None else f"the context window of '{model}'"
        raise ParadecError(f"the prompt has {n_prompt} tokens; {window} is {max_context}")
    return max_context - n_prompt


class Decoder:
    """The state of one request's decode loop (see the module docstring). Each ``prepare`` that
    returns a forward must be followed by one ``commit`` with that forward's logits."""

    def __init__(
        self,
        target: CausalLM,
        proposer: Proposer,
        prompt: Sequence[int],
        cfg: DecodeConfig,
        stats: DecodeStats | None = None,
        stop: Callable[[list[int]], bool] | None = None,
        prefixes: PrefixCache | None = None,
    ) -> None:
        """``prefixes``: kept prompt prefixes to start from (and to keep this prompt in); used
        only on a target whose prefill is exact when split (``prefix.py``)."""
        self.stats = stats if stats is not None else DecodeStats()
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ParadecError("the prompt is empty")
        context_room(len(prompt), target.max_context)
        self.target, self.proposer, self.prompt, self.cfg, self.stop = target, proposer, prompt, cfg, stop
        self._prefixes = prefixes if reuses_prefixes(target) else None
        self.stats.method = proposer.name if isinstance(proposer, Proposer) else type(proposer).__name__
        self.stats.backend = backend_label(target)
        self._native = isinstance(target, NativeLM) and bool(target.native)  # its own thread pool (see commit)
        self.stats.prompt_tokens = len(prompt)
        self.tokens = list(prompt)
        self.generated: list[int] = []
        self.cache: KVCache | None = None  # made (and the prompt prefilled) by the first prepare()
        self.done = False
        self._draft, self._base = DraftTree(), 0
        self._t_start = time.perf_counter()
        sampling = cfg.sampling
        self._generator = None if sampling.greedy else sampling.generator(target.device)
        self._draft_generator = None if sampling.greedy else sampling.generator("cpu", stream=1)
        # a proposer that drafts inside the verifying forward (deer-fused) runs that forward
        self._fused = proposer.fused_forward if isinstance(proposer, FusedProposer) else None
        # total sequence length cap
        self._limit = min(target.max_context, len(prompt) + cfg.max_new_tokens)
        # structured output: shapes each draft, masks the verifier's rows, follows the output
        self.guide = None if cfg.constraint is None else Guide(cfg.constraint, cfg.eos_ids)
        self.stats.constrained = self.guide is not None
        self._eos = cfg.eos_ids if self.guide is None else cfg.eos_ids | {self.guide.eos}
        # ar, the baseline, takes no forced drafts
        self._forced = proposer.drafts if isinstance(proposer, DraftsFlag) else True
        # the prompt's last tokens ride the first step's forward (see _start), where that leaves
        # the same bits as a prefill (a batch-invariant target) and the loop runs the forward
        self._merge = reuses_prefixes(target) and isinstance(target, TailLogitsLM) and self._fused is None
        self._pending: list[int] = []  # prompt tokens to prefill in the first step's forward

    def _start(self) -> None:
        self.cache = self.target.new_cache(capacity=self._limit + self.cfg.max_draft + 1)
        head = self.prompt[:-1]  # the prompt's last token is the first step's root
        reused = 0 if self._prefixes is None or not head else self._prefixes.restore(head, self.cache)
        rest = head[reused:]
        if self._merge:  # up to one prefill chunk of it is prefilled in the first step's forward
            cut = len(rest) - min(len(rest), MERGED_PROMPT_ROWS)
            rest, self._pending = rest[:cut], rest[cut:]
        if rest:
            self.target.prefill(torch.tensor([rest]), self.cache)
        if self._prefixes is not None and head and not self._pending:
            self._prefixes.keep(head, self.cache)
        self.stats.cached_prompt_tokens = reused
        self.stats.prefill_s = time.perf_counter() - self._t_start
        self.proposer.begin(self.prompt, self.cfg.sampling)

    def prepare(self) -> ForwardInput | None:
        """Propose a draft and return the forward to run, or None when generation is over."""
        if self.done:
            return None
        if self.cache is None:
            self._start()
        room = self._limit - len(self.tokens)  # tokens we may still commit
        if room <= 0:
            new = len(self.tokens) - len(self.prompt)
            self.stats.stop_reason = "length" if new >= self.cfg.max_new_tokens else "context"
            self.close()
            return None
        t0 = time.perf_counter()
        max_nodes = min(self.cfg.max_draft, room - 1)
        draft = DraftTree()
        if max_nodes > 0:
            forced = None if self.guide is None else (self.guide.forced() if self._forced else ())
            ctx = ProposeContext(self.tokens, len(self.prompt), max_nodes, room - 1, self.cfg.sampling, self._draft_generator, forced)
            draft = self.proposer.propose(ctx).limit_depth(room - 1).truncated(max_nodes)
        if self.guide is not None:  # prune what the grammar rejects, add what it forces
            # (greedy verification computes the masks of the rows it reads itself)
            draft = self.guide.shape(draft, max(max_nodes, 0) if self._forced else 0, room - 1, not self.cfg.sampling.greedy)
            self.stats.pruned_nodes += self.guide.shaped.pruned
            self.stats.forced_tokens += self.guide.shaped.forced
            self.stats.likely_tokens += self.guide.shaped.likely
        self._draft = draft
        pending = self._pending  # the prompt's last tokens (first step only): P rows ahead of the root
        self._base = base = self.cache.seq_len + len(pending)  # == len(tokens) - 1; the root sits at position `base`
        mask = attention_mask(draft, base)  # [n+1, base+n+1]
        if pending:  # causal rows for them, and the tree's rows see them all
            start = base - len(pending)
            lead = torch.ones(len(pending), mask.shape[1], dtype=torch.bool)
            lead[:, start:] = torch.arange(mask.shape[1] - start)[None, :] <= torch.arange(len(pending))[:, None]
            mask = torch.cat([lead, mask])  # [P+n+1, base+n+1]
        step = ForwardInput(
            ids=torch.tensor([pending + draft.input_ids(self.tokens[-1])]),  # [1, P+n+1]
            positions=torch.tensor([list(range(base - len(pending), base)) + [base + o for o in draft.position_offsets()]]),
            mask=mask[None],  # [1, P+n+1, base+n+1]
            cache=self.cache,
            fused=self._fused is not None,
            prompt_rows=len(pending),
        )
        self.stats.draft_s += time.perf_counter() - t0
        return step

    def forward(self, step: ForwardInput) -> torch.Tensor:
        """Run ``step`` on the target: logits [n+1, V]. The cache gains exactly the step's inputs
        (the n+1 of the tree, after the prompt's last tokens in the first step)."""
        if self._fused is not None:
            return self._fused(self.target, step)
        if step.prompt_rows:
            return self.target.forward_tail(step.ids, step.positions, step.cache, step.mask, step.prompt_rows)[0]
        return self.target.forward(step.ids, step.positions, step.cache, step.mask)[0]

    def commit(self, logits: torch.Tensor, forward_s: float = 0.0) -> list[int]:
        """Verify the draft against ``logits`` [n+1, V] (the forward ``prepare`` returned, already
        run), roll the cache back, and return the tokens to emit (after stop handling)."""
        draft, cache, stats = self._draft, self.cache, self.stats
        t0 = time.perf_counter()
        base = self._base
        guide = self.guide
        if self.cfg.sampling.greedy:
            if guide is None:
                verdict = verify_greedy(draft, logits)
            else:  # the argmax of the constrained target's rows, masking only rows that need it
                verdict = verify_greedy_best(draft, guide.greedy_best(logits))
        else:
            rows = logits if guide is None else guide.mask(logits)  # [n+1, V] the (constrained) target
            with _torch_single_threaded(self._native):
                verdict = verify_sampling(draft, target_probs(rows, self.cfg.sampling), self._generator)
        if draft.is_chain:
            cache.truncate(base + 1 + len(verdict.accepted))
        else:
            cache.compact([base] + [base + 1 + i for i in verdict.accepted], offset=base)
        if self._pending:  # the first step prefilled the prompt's last tokens: their rows' share is prefill
            share = forward_s * len(self._pending) / (len(self._pending) + len(draft) + 1)
            stats.prefill_s += share
            forward_s -= share
            if self._prefixes is not None:
                self._prefixes.keep(self.prompt[:-1], cache)  # slots [0, len(prompt) - 1): the prompt's
            self._pending = []
        stats.forward_s += forward_s
        stats.verify_s += time.perf_counter() - t0
        stats.record_step(draft.depth, len(draft), len(verdict.accepted), verdict.bonus)
        new = verdict.tokens
        if guide is not None:
            stats.forced_accepted += guide.forced_accepted(verdict.accepted)
            stats.likely_accepted += guide.likely_accepted(verdict.accepted)
            new = guide.advance(new)  # cut after a complete match
        self.tokens.extend(new)
        self.proposer.observe(StepResult(draft, verdict, self.tokens, logits))

        # ---- emit, honouring EOS / stop strings inside the accepted block ----------------------
        emitted: list[int] = []
        for t in new:
            emitted.append(t)
            self.generated.append(t)
            if t in self._eos:
                stats.stop_reason = "eos"
            elif self.stop is not None and self.stop(self.generated):
                stats.stop_reason = "stop"
            if stats.stop_reason:
                self.close()
                break
        if guide is not None and not stats.stop_reason and guide.complete:
            stats.stop_reason = "eos"  # the grammar is complete: nothing may follow
            self.close()
        stats.new_tokens = len(self.generated)
        return emitted

    def step(self) -> list[int] | None:
        """One whole step (prepare, forward, commit): the tokens it emits, or None when done."""
        if (step := self.prepare()) is None:
            return None
        t0 = time.perf_counter()
        logits = self.forward(step)  # [n+1, V]
        return self.commit(logits, time.perf_counter() - t0)

    def close(self) -> None:
        if not self.done:
            self.done = True
            self.stats.total_s = time.perf_counter() - self._t_start
            if self.guide is not None:
                self.stats.mask_s = self.guide.mask_s
                # ended before the grammar accepted (length, context, a stop string): not valid
                self.stats.incomplete = not self.guide.accepting
