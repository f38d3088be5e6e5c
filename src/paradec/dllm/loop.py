"""The one block-decoding loop for diffusion LMs, with pluggable policies.

Each step: one forward over the active sequences (full, or only the current window when a cache
is in use), then per sequence: pick the current block (block schedule), score the masked
positions inside it, commit what the commit rule selects (at least one token), optionally edit
committed tokens, and stop on its own (no mask left, or end-of-text: an EOS committed with every
position before it decoded, the rest is filled with EOS). Sequences are batched: every sequence
commits its own number of tokens per step and drops out of the forward when done, and nothing a
sequence decides depends on the others, so results do not depend on the batch size.

A batch's per-sequence state is one ``LoopState``; a step is ``_forward`` (full or cached window
rows), ``_observe`` (scores, new blocks, the commit rule's context), ``_commit``, ``_edit`` and
``_advance`` (write, count, stop, close blocks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import ParadecError
from .protocol import DiffusionLM, DiffusionSpec, Named
from .policies.blocks import BlockSchedule, FixedBlocks
from .policies.cache import CachePolicy
from .policies.commit import CommitPolicy, StepContext, TopK
from .policies.edit import EditPolicy
from .result import DllmResult, fill_with_eos, new_stats, results
from .stats import DiffusionStats


@dataclass
class Settings:
    max_new_tokens: int = 18  # the answer region's length
    commit: CommitPolicy = field(default_factory=lambda: TopK(k=1))
    blocks: BlockSchedule = field(default_factory=FixedBlocks)
    cache: CachePolicy = field(default_factory=CachePolicy)
    edit: EditPolicy | None = None
    eos_stop: bool = True  # end-of-text: stop once an EOS is committed with everything before it decoded
    eos_reject: float | None = None  # EOS early rejection: EOS confidence x (g + (1 - g) * progress)
    temperature: float = 0.0
    seed: int = 0
    method: str = ""

    def check(self, model: DiffusionLM) -> None:
        model.spec.check()
        if int(self.max_new_tokens) < 1:
            raise ParadecError(f"generation length must be >= 1, got {self.max_new_tokens}")
        self.blocks.check(self.max_new_tokens)
        self.cache.check(model.spec.caches, model.name if isinstance(model, Named) else "model")
        if self.temperature < 0:
            raise ParadecError(f"temperature must be >= 0, got {self.temperature}")
        if self.eos_reject is not None and not 0 <= self.eos_reject <= 1:
            raise ParadecError(f"eos_reject must be in [0, 1], got {self.eos_reject}")
        spec = model.spec
        if spec.attention == "block_causal" and self.blocks.size != spec.block_size:
            raise ParadecError(f"a block-causal model decodes in its own blocks: use block size {spec.block_size}")


def prepare(prompts: list[list[int]], max_new_tokens: int, mask_id: int, pad_id: int, device=None):
    """Left-pad prompts and append ``max_new_tokens`` masks. Returns ids [B, L], key_mask, P."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ParadecError("every prompt needs at least one token")
    P = max(len(p) for p in prompts)
    B = len(prompts)
    ids = torch.full((B, P + max_new_tokens), pad_id, dtype=torch.long)
    km = torch.zeros(B, P + max_new_tokens, dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids[b, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        km[b, P - len(p) :] = True
    ids[:, P:] = mask_id
    return ids.to(device), km.to(device), P


def end_of_text(x_gen: torch.Tensor, mask_id: int, eos_id: int) -> torch.Tensor:
    """[B] bool: an EOS is committed and every answer position before the first one is decoded."""
    is_eos = x_gen == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(is_eos[:, 0], x_gen.shape[1], dtype=torch.long))
    before = torch.arange(x_gen.shape[1], device=x_gen.device)[None] < first[:, None]
    return is_eos.any(1) & ~((x_gen == mask_id) & before).any(1)


def _window(lo: torch.Tensor, hi: torch.Tensor, P: int, L: int, kind: str) -> torch.Tensor:
    """Query positions [B, W] per row: the block (dual) or block..end (prefix). Rows with shorter
    windows repeat their last position (computed twice, identical; no dependence on the batch)."""
    starts = P + lo
    ends = P + hi if kind == "dual" else torch.full_like(lo, L)
    W = int((ends - starts).max())
    idx = starts[:, None] + torch.arange(W, device=lo.device)[None]
    return torch.minimum(idx, (ends - 1)[:, None])


def scores(logits_gen: torch.Tensor, temperature: float, gens: list, mask_id: int | None = None):
    """probs, pred, conf from [B, G, V] logits (greedy, or sampled with per-row generators).
    The mask token itself is never a prediction."""
    lf = logits_gen.to(torch.float64)
    if mask_id is not None:
        lf = lf.clone()
        lf[..., mask_id] = float("-inf")
    if temperature > 0:
        lf = lf / temperature
    probs = torch.softmax(lf, dim=-1)
    if temperature > 0:
        u = torch.stack([torch.rand(probs.shape[1:], generator=g, dtype=torch.float64) for g in gens]).to(probs.device)
        pred = (lf - torch.log(-torch.log(u.clamp(1e-300, 1.0)))).argmax(-1)
    else:
        pred = probs.argmax(-1)
    conf = probs.gather(-1, pred[..., None])[..., 0]
    return probs, pred, conf


def reject_eos(pred: torch.Tensor, conf: torch.Tensor, progress: torch.Tensor, gamma: float, eos_id: int) -> torch.Tensor:
    """EOS early rejection: the confidence [B, G] of an EOS prediction scaled by
    gamma + (1 - gamma) * progress (progress [B]: share of the answer region decoded)."""
    return torch.where(pred == eos_id, conf * (gamma + (1 - gamma) * progress)[:, None], conf)


@dataclass
class LoopState:
    """Everything the loop tracks for one batch; every tensor has one row per sequence (B)."""

    x: torch.Tensor  # [B, L] left-padded prompt, then the answer region (mask_id until committed)
    key_mask: torch.Tensor  # [B, L] bool, False = left padding
    P: int  # the answer region starts at column P
    gens: list  # [B] torch.Generator, seeded per sequence (sampling, random remasking)
    stats: list[DiffusionStats]  # [B]
    done: torch.Tensor  # [B] bool: stopped
    lo: torch.Tensor  # [B] long: start of the current block in the answer region (-1: pick a new one)
    hi: torch.Tensor  # [B] long: its end (exclusive)
    block_step: torch.Tensor  # [B] long: steps taken in the current block
    since: torch.Tensor  # [B] long: steps since the sequence's last full forward (cache refresh)
    edits_at: torch.Tensor  # [B, G] long: edits so far per answer position
    have_kv: torch.Tensor  # [B] bool: the sequence's cache rows hold its keys/values
    kv: list | None = None  # per layer (K, V) with B rows, allocated at the first cached full forward
    calls: int = 0  # model calls of the whole batch so far

    @classmethod
    def start(cls, model: DiffusionLM, prompts: list[list[int]], s: Settings, row_offset: int) -> "LoopState":
        spec, G = model.spec, s.max_new_tokens
        x, km, P = prepare(prompts, G, spec.mask_id, spec.pad_id, model.device)
        B, L = x.shape
        if L > spec.max_len:
            raise ParadecError(f"prompt + generation length = {L} exceeds the model's {spec.max_len} positions")
        dev = x.device
        count = torch.zeros(B, dtype=torch.long, device=dev)
        return cls(
            x=x, key_mask=km, P=P,
            gens=[torch.Generator().manual_seed(s.seed * 1_000_003 + row_offset + b) for b in range(B)],
            stats=new_stats(prompts, s.method, G), done=torch.zeros(B, dtype=torch.bool, device=dev),
            lo=torch.full((B,), -1, dtype=torch.long, device=dev), hi=count.clone(), block_step=count.clone(),
            since=count.clone(), edits_at=torch.zeros(B, G, dtype=torch.long, device=dev),
            have_kv=torch.zeros(B, dtype=torch.bool, device=dev),
        )


@dataclass
class Step:
    """One step's view of the active sequences (A of them): what the model says and where."""

    act: torch.Tensor  # [A] row of each active sequence in the LoopState
    xg: torch.Tensor  # [A, G] their answer regions before this step
    ctx: StepContext  # predictions, confidences, candidates (what the commit rule sees)
    in_block: torch.Tensor  # [A, G] bool: inside the current block


def _full_forward(model: DiffusionLM, st: LoopState, act: torch.Tensor, use_cache: bool) -> torch.Tensor:
    """Logits [A, L, V] of a full forward over the given rows; with a cache, also (re)fills
    their cache rows (a refresh)."""
    out, new_kv = model.forward(st.x[act], st.key_mask[act], want_cache=use_cache)
    st.calls += 1
    if use_cache:
        if st.kv is None:
            B = st.x.shape[0]
            dev = st.x.device
            st.kv = [tuple(torch.zeros((B,) + t.shape[1:], dtype=t.dtype, device=dev) for t in layer) for layer in new_kv]
        for (K, V), (k, v) in zip(st.kv, new_kv):
            K[act], V[act] = k, v
        st.have_kv[act] = True
        st.since[act] = 0
    return out


def _window_forward(model: DiffusionLM, s: Settings, st: LoopState, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the cached rows at their window's query positions: (logits [A, W, V], q [A, W])."""
    L = st.x.shape[1]
    q = _window(st.lo[rows], st.hi[rows], st.P, L, s.cache.kind)
    cache_rows = [(K[rows], V[rows]) for K, V in st.kv]
    out, _ = model.forward(st.x[rows], st.key_mask[rows], query=q, cache=cache_rows)
    st.calls += 1
    return out, q


def _forward(model: DiffusionLM, s: Settings, st: LoopState, act: torch.Tensor):
    """Logits [A, L, V] for the active rows: a full forward for rows without a cache (no cache
    policy, a new block, a refresh due), a window forward over the cache for the others.
    Also returns (window rows, their full-forward logits) when measuring cache agreement."""
    A, L = len(act), st.x.shape[1]
    dev = st.x.device
    use_cache = s.cache.kind != "none"
    if use_cache:
        every = s.cache.refresh_every
        full = (~st.have_kv[act]) | (st.lo[act] < 0) | ((st.since[act] >= every) & (every > 0))
    else:
        full = torch.ones(A, dtype=torch.bool, device=dev)
    logits = torch.zeros(A, L, model.spec.vocab_size, dtype=model.dtype, device=dev)
    check = None
    if full.any():
        f = full.nonzero()[:, 0]
        logits[f] = _full_forward(model, st, act[f], use_cache)
    if (~full).any():
        w = (~full).nonzero()[:, 0]
        out, q = _window_forward(model, s, st, act[w])
        logits[w] = logits[w].scatter(1, q[..., None].expand(-1, -1, out.shape[-1]), out)
        if s.cache.measure_agreement:
            ref, _ = model.forward(st.x[act[w]], st.key_mask[act[w]])
            check = (w, ref)
    return logits, check


def _observe(model: DiffusionLM, s: Settings, st: LoopState, act: torch.Tensor, logits: torch.Tensor) -> Step:
    """Score the answer regions, open a block for rows that need one, and build the step's context."""
    spec, G, P = model.spec, s.max_new_tokens, st.P
    gens = [st.gens[int(r)] for r in act]
    probs, pred, conf = scores(logits[:, P:], s.temperature, gens, spec.mask_id)
    xg = st.x[act, P:]
    masked = xg == spec.mask_id
    progress = 1.0 - masked.sum(1).to(torch.float64) / G
    if s.eos_reject is not None:
        conf = reject_eos(pred, conf, progress, s.eos_reject, spec.eos_id)
    for i in (st.lo[act] < 0).nonzero()[:, 0].tolist():  # a new block starts at the first mask
        r = int(act[i])
        start = int(masked[i].float().argmax())
        st.lo[r], st.hi[r] = start, s.blocks.end(start, pred[i], conf[i], G)
        st.block_step[r] = 0
    pos = torch.arange(G, device=xg.device)[None]
    lo, hi = st.lo[act], st.hi[act]
    in_block = (pos >= lo[:, None]) & (pos < hi[:, None])
    ctx = StepContext(
        pred=pred, conf=conf, probs=probs, cand=masked & in_block, masked=masked, block_lo=lo, block_hi=hi,
        block_step=st.block_step[act], progress=progress, rows=act, gens=gens, eos_id=spec.eos_id,
    )
    return Step(act, xg, ctx, in_block)


def _record_agreement(st: LoopState, step: Step, check, mask_id: int) -> None:
    """measure_agreement: did the cached step's predictions over the candidates match a full forward's?"""
    w, ref = check
    _, rpred, _ = scores(ref[:, st.P :], 0.0, [], mask_id)
    same = ((rpred == step.ctx.pred[w]) | ~step.ctx.cand[w]).all(1)
    for i, ok in zip(w.tolist(), same.tolist()):
        stats = st.stats[int(step.act[i])]
        stats.cache_checks += 1
        stats.cache_agree += int(ok)


def _commit(s: Settings, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
    """(committed mask [A, G], new answer regions [A, G]): the commit rule's choice, at least the
    most confident candidate per sequence (the loop's progress guarantee)."""
    ctx = step.ctx
    choice = s.commit.select(ctx)
    sel = choice.mask & ctx.masked
    tokens = ctx.pred if choice.tokens is None else choice.tokens
    none = ~sel.any(1) & ctx.cand.any(1)
    if none.any():
        best = ctx.conf.masked_fill(~ctx.cand, -1.0).argmax(1)
        sel[none.nonzero()[:, 0], best[none]] = True
    return sel, torch.where(sel, tokens, step.xg)


def _edit(e: EditPolicy, st: LoopState, step: Step, sel: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Token editing: committed tokens (in scope, not committed this step) the model now predicts
    differently with confidence >= tau are replaced, at most max_edits times per position."""
    ctx, act = step.ctx, step.act
    scope = ~ctx.masked & ~sel
    if e.scope == "block":
        scope &= step.in_block
    ed = scope & (ctx.pred != step.xg) & (ctx.conf >= e.tau) & (st.edits_at[act] < e.max_edits)
    st.edits_at[act] += ed.long()
    for i, n in enumerate(ed.sum(1).tolist()):
        st.stats[int(act[i])].edits += n
    return torch.where(ed, ctx.pred, new)


def _advance(s: Settings, st: LoopState, step: Step, sel: torch.Tensor, new: torch.Tensor, spec: DiffusionSpec) -> None:
    """Write the new answer regions, count the step, stop finished sequences (no mask left, or
    end-of-text: the rest is filled with EOS) and close blocks without masks."""
    act, P = step.act, st.P
    st.x[act, P:] = new
    for i, n in enumerate(sel.sum(1).tolist()):
        stats = st.stats[int(act[i])]
        stats.forwards += 1
        stats.steps += 1
        stats.committed += n
        stats.accept_lengths.append(n)
    still = new == spec.mask_id
    fin = ~still.any(1)
    if s.eos_stop:
        eot = end_of_text(new, spec.mask_id, spec.eos_id) & ~fin
        for i in eot.nonzero()[:, 0].tolist():
            r = int(act[i])
            st.stats[r].filled += fill_with_eos(st.x[r, P:], spec.mask_id, spec.eos_id)
        fin = fin | eot
    st.done[act[fin]] = True
    blk_open = (still & step.in_block).any(1)
    st.lo[act[~blk_open]] = -1
    st.block_step[act] += 1
    st.since[act] += 1
    for r in act.tolist():
        st.stats[r].model_calls = st.calls
        st.stats[r].rows += 1


def _step(model: DiffusionLM, s: Settings, st: LoopState) -> None:
    """One decoding step of every active sequence."""
    act = (~st.done).nonzero()[:, 0]
    logits, check = _forward(model, s, st, act)
    step = _observe(model, s, st, act, logits)
    if check is not None:
        _record_agreement(st, step, check, model.spec.mask_id)
    sel, new = _commit(s, step)
    if s.edit is not None:
        new = _edit(s.edit, st, step, sel, new)
    _advance(s, st, step, sel, new, model.spec)


def unmask_batch(model: DiffusionLM, prompts: list[list[int]], settings: Settings, row_offset: int = 0) -> list[DllmResult]:
    """Decode a batch of prompts together. ``row_offset``: index of the first prompt in the
    caller's list (seeds each sequence's generator, so splitting into batches changes nothing).

    Step bound: every step commits at least one masked position of every active sequence (the
    block of an active sequence always holds a mask, and ``_commit`` forces its most confident
    candidate), and nothing is ever re-masked (editing replaces committed tokens with tokens), so
    ``max_new_tokens`` steps decode every position. A loop that has not finished by then broke
    that guarantee (e.g. a block schedule that returned an empty block): it raises instead of
    spinning."""
    s = settings
    s.check(model)
    t0 = time.perf_counter()
    st = LoopState.start(model, prompts, s, row_offset)
    s.commit.reset(len(prompts), s.max_new_tokens, model.spec.vocab_size, st.x.device)
    for _ in range(s.max_new_tokens):
        _step(model, s, st)
        if bool(st.done.all()):
            break
    else:
        raise ParadecError("decoding did not finish (internal step limit)")
    return results(st.x[:, st.P :], model.spec.eos_id, st.stats, time.perf_counter() - t0)


def generate(model: DiffusionLM, prompts: list[list[int]], settings: Settings, batch_size: int = 16) -> list[DllmResult]:
    """Decode ``prompts`` in batches of ``batch_size`` (the results do not depend on it)."""
    if batch_size < 1:
        raise ParadecError(f"batch size must be >= 1, got {batch_size}")
    settings.check(model)
    out: list[DllmResult] = []
    for i in range(0, len(prompts), batch_size):
        out.extend(unmask_batch(model, prompts[i : i + batch_size], settings, row_offset=i))
    return out
