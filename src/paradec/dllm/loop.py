"""The one block-decoding loop for diffusion LMs, with pluggable policies.

Each step: one forward over the active sequences (full, or only the current window when a cache
is in use), then per sequence: pick the current block (block schedule), score the masked
positions inside it, commit what the commit rule selects (at least one token), optionally edit
committed tokens, and stop on its own (no mask left, or end-of-text: an EOS committed with every
position before it decoded, the rest is filled with EOS). Sequences are batched: every sequence
commits its own number of tokens per step and drops out of the forward when done, and nothing a
sequence decides depends on the others, so results do not depend on the batch size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import ParadecError
from .protocol import DiffusionLM
from .policies.blocks import BlockSchedule, FixedBlocks
from .policies.cache import CachePolicy
from .policies.commit import CommitPolicy, StepContext, TopK
from .policies.edit import EditPolicy
from .stats import DiffusionStats


@dataclass
class Settings:
    gen_length: int = 18
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
        if int(self.gen_length) < 1:
            raise ParadecError(f"generation length must be >= 1, got {self.gen_length}")
        self.blocks.check(self.gen_length)
        self.cache.check(model.spec.caches, getattr(model, "name", "model"))
        if self.temperature < 0:
            raise ParadecError(f"temperature must be >= 0, got {self.temperature}")
        if self.eos_reject is not None and not 0 <= self.eos_reject <= 1:
            raise ParadecError(f"eos_reject must be in [0, 1], got {self.eos_reject}")
        spec = model.spec
        if spec.attention == "block_causal":
            size = getattr(self.blocks, "size", None)
            if size != spec.block_size:
                raise ParadecError(f"a block-causal model decodes in its own blocks: use block size {spec.block_size}")


@dataclass
class Result:
    tokens: list[int]  # the answer region, as decoded (length gen_length)
    answer: list[int]  # tokens before the first EOS
    stats: DiffusionStats


def prepare(prompts: list[list[int]], gen_length: int, mask_id: int, pad_id: int, device=None):
    """Left-pad prompts and append ``gen_length`` masks. Returns ids [B, L], key_mask, P."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ParadecError("every prompt needs at least one token")
    P = max(len(p) for p in prompts)
    B = len(prompts)
    ids = torch.full((B, P + gen_length), pad_id, dtype=torch.long)
    km = torch.zeros(B, P + gen_length, dtype=torch.bool)
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


def decode(
    model: DiffusionLM,
    prompts: list[list[int]],
    settings: Settings,
    row_offset: int = 0,
) -> list[Result]:
    """Decode a batch of prompts together. ``row_offset``: index of the first prompt in the
    caller's list (seeds each sequence's generator, so splitting into batches changes nothing)."""
    s = settings
    s.check(model)
    spec = model.spec
    mask_id, eos_id = spec.mask_id, spec.eos_id
    G = s.gen_length
    t0 = time.perf_counter()
    x, km, P = prepare(prompts, G, mask_id, spec.pad_id, model.device)
    B, L = x.shape
    if L > spec.max_len:
        raise ParadecError(f"prompt + generation length = {L} exceeds the model's {spec.max_len} positions")
    dev = x.device
    gens = [torch.Generator().manual_seed(s.seed * 1_000_003 + row_offset + b) for b in range(B)]
    s.commit.reset(B, G, spec.vocab_size, dev)
    stats = [DiffusionStats(method=s.method, prompt_tokens=len(p), gen_length=G, batch_size=B) for p in prompts]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    lo = torch.full((B,), -1, dtype=torch.long, device=dev)
    hi = torch.zeros(B, dtype=torch.long, device=dev)
    block_step = torch.zeros(B, dtype=torch.long, device=dev)
    since = torch.zeros(B, dtype=torch.long, device=dev)
    edits_at = torch.zeros(B, G, dtype=torch.long, device=dev)
    use_cache = s.cache.kind != "none"
    kv = None
    have_kv = torch.zeros(B, dtype=torch.bool, device=dev)
    calls = 0

    for _ in range(4 * G + 8):
        act = (~done).nonzero()[:, 0]
        if len(act) == 0:
            break
        xa, kma = x[act], km[act]
        # ---- forward: full rows (no cache, refresh, new block) and window rows (cached) ----
        if use_cache:
            full = (~have_kv[act]) | (lo[act] < 0) | ((since[act] >= s.cache.refresh_every) & (s.cache.refresh_every > 0))
        else:
            full = torch.ones(len(act), dtype=torch.bool, device=dev)
        logits = torch.zeros(len(act), L, spec.vocab_size, dtype=model.dtype, device=dev)
        check_rows = None
        if full.any():
            f = full.nonzero()[:, 0]
            out, new_kv = model.forward(xa[f], kma[f], want_cache=use_cache)
            calls += 1
            logits[f] = out
            if use_cache:
                if kv is None:
                    kv = [tuple(torch.zeros((B,) + t.shape[1:], dtype=t.dtype, device=dev) for t in layer) for layer in new_kv]
                rows = act[f]
                for (K, V), (k, v) in zip(kv, new_kv):
                    K[rows], V[rows] = k, v
                have_kv[rows] = True
                since[rows] = 0
        if (~full).any():
            w = (~full).nonzero()[:, 0]
            rows = act[w]
            q = _window(lo[rows], hi[rows], P, L, s.cache.kind)
            cache_rows = [(K[rows], V[rows]) for K, V in kv]
            out, _ = model.forward(xa[w], kma[w], query=q, cache=cache_rows)
            calls += 1
            logits[w] = logits[w].scatter(1, q[..., None].expand(-1, -1, out.shape[-1]), out)
            if s.cache.measure_agreement:
                ref, _ = model.forward(xa[w], kma[w])
                check_rows = (w, ref)
        gens_a = [gens[int(r)] for r in act]
        probs, pred, conf = scores(logits[:, P:], s.temperature, gens_a, mask_id)
        xg = xa[:, P:]
        masked = xg == mask_id
        progress = 1.0 - masked.sum(1).to(torch.float64) / G
        if s.eos_reject is not None:
            g = s.eos_reject
            conf = torch.where(pred == eos_id, conf * (g + (1 - g) * progress)[:, None], conf)
        # ---- block bounds for sequences starting a new block ----
        for i in (lo[act] < 0).nonzero()[:, 0].tolist():
            r = int(act[i])
            start = int(masked[i].float().argmax())
            lo[r], hi[r] = start, s.blocks.end(start, pred[i], conf[i], G)
            block_step[r] = 0
        pos = torch.arange(G, device=dev)[None]
        cand = masked & (pos >= lo[act][:, None]) & (pos < hi[act][:, None])
        ctx = StepContext(
            pred=pred, conf=conf, probs=probs, cand=cand, masked=masked, block_lo=lo[act], block_hi=hi[act],
            block_step=block_step[act], progress=progress, rows=act, gens=gens_a, eos_id=eos_id,
        )
        if check_rows is not None:
            w, ref = check_rows
            _, rpred, _ = scores(ref[:, P:], 0.0, [], mask_id)
            same = ((rpred == pred[w]) | ~cand[w]).all(1)
            for i, ok in zip(w.tolist(), same.tolist()):
                st = stats[int(act[i])]
                st.cache_checks += 1
                st.cache_agree += int(ok)
        sel = s.commit.select(ctx)
        tokens = pred
        if isinstance(sel, tuple):
            sel, tokens = sel
        sel = sel & masked
        # at least one token per sequence: the most confident candidate
        none = ~sel.any(1) & cand.any(1)
        if none.any():
            best = conf.masked_fill(~cand, -1.0).argmax(1)
            sel[none.nonzero()[:, 0], best[none]] = True
        new = torch.where(sel, tokens, xg)
        if s.edit is not None:
            e = s.edit
            scope = ~masked & ~sel
            if e.scope == "block":
                scope &= (pos >= lo[act][:, None]) & (pos < hi[act][:, None])
            ed = scope & (pred != xg) & (conf >= e.tau) & (edits_at[act] < e.max_edits)
            new = torch.where(ed, pred, new)
            edits_at[act] += ed.long()
            for i, n in enumerate(ed.sum(1).tolist()):
                stats[int(act[i])].edits += n
        x[act, P:] = new
        n_sel = sel.sum(1).tolist()
        for i, n in enumerate(n_sel):
            st = stats[int(act[i])]
            st.forwards += 1
            st.steps += 1
            st.committed += n
            st.accept_lengths.append(n)
        # ---- stopping, block completion ----
        still = new == mask_id
        fin = ~still.any(1)
        if s.eos_stop:
            eot = end_of_text(new, mask_id, eos_id) & ~fin
            if eot.any():
                for i in eot.nonzero()[:, 0].tolist():
                    r = int(act[i])
                    stats[r].filled += int(still[i].sum())
                    row = x[r, P:]
                    row[row == mask_id] = eos_id
                fin = fin | eot
        done[act[fin]] = True
        blk_open = (still & (pos >= lo[act][:, None]) & (pos < hi[act][:, None])).any(1)
        lo[act[~blk_open]] = -1
        block_step[act] += 1
        since[act] += 1
        for r in act.tolist():
            stats[r].model_calls = calls
            stats[r].rows += 1
    else:
        raise ParadecError("decoding did not finish (internal step limit)")

    total = time.perf_counter() - t0
    out = []
    for b in range(B):
        toks = x[b, P:].tolist()
        ans = []
        for t in toks:
            if t == eos_id:
                break
            ans.append(t)
        st = stats[b]
        st.new_tokens = min(len(ans) + 1, G)
        st.total_s = total
        st.stop_reason = "eos" if eos_id in toks else "length"
        out.append(Result(toks, ans, st))
    return out


def generate(model: DiffusionLM, prompts: list[list[int]], settings: Settings, batch_size: int = 16) -> list[Result]:
    """Decode ``prompts`` in batches of ``batch_size`` (the results do not depend on it)."""
    if batch_size < 1:
        raise ParadecError(f"batch size must be >= 1, got {batch_size}")
    settings.check(model)
    out: list[Result] = []
    for i in range(0, len(prompts), batch_size):
        out.extend(decode(model, prompts[i : i + batch_size], settings, row_offset=i))
    return out
