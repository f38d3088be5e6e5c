"""FreeDave: lossless draft-and-verify for diffusion LMs.

The reference is static one-token-per-step decoding: each step commits the single most
confident masked position of the current block (fixed semi-AR blocks; ties to the lower
position), stopping at end-of-text. From one forward's logits FreeDave drafts the next ``depth``
states of that decoder (commit the 1st, 2nd, ... most confident candidates in turn), verifies all
of them in ONE batched forward, and keeps the longest prefix of states that the reference decoder
would have reached: state j+1 is kept only if the reference's choice on state j (from state j's
own logits) is exactly draft j+1. The kept state's logits are already computed, so the next
round drafts from them. Every round keeps at least one token, and the output equals the
reference's token for token (tests/test_diffusion_loop.py). The price is compute: each
forward call evaluates up to ``depth`` sequences per input sequence (stats.rows).
"""

from __future__ import annotations

import time

import torch

from ..errors import ParadecError
from .protocol import DiffusionLM
from .loop import Result, Settings, end_of_text, prepare, scores
from .policies.blocks import FixedBlocks
from .policies.commit import ranked
from .stats import DiffusionStats


def _block(xg: torch.Tensor, mask_id: int, size: int | None):
    """Current block [lo, hi) of one answer region: the fixed block holding the first mask."""
    G = xg.shape[0]
    m = (xg == mask_id).nonzero()
    if len(m) == 0:
        return None
    lo = int(m[0])
    return lo, (G if not size else min(G, (lo // size + 1) * size))


def _choices(xg, conf, mask_id, size, eos_reject_conf=None):
    """Reference order of commits on this state's logits: candidates of the current block,
    most confident first (ties to the lower position)."""
    blk = _block(xg, mask_id, size)
    if blk is None:
        return []
    lo, hi = blk
    G = xg.shape[0]
    pos = torch.arange(G, device=xg.device)
    cand = (xg == mask_id) & (pos >= lo) & (pos < hi)
    r = ranked(conf[None], cand[None])[0]
    n = int(cand.sum())
    return [int(p) for p in torch.argsort(r)[:n]]


def decode(model: DiffusionLM, prompts: list[list[int]], settings: Settings, depth: int = 4, row_offset: int = 0) -> list[Result]:
    s = settings
    s.check(model)
    if not isinstance(s.blocks, FixedBlocks) or s.edit is not None or s.cache.kind != "none" or s.temperature > 0:
        raise ParadecError("freedave reproduces greedy one-token-per-step decoding: fixed blocks, no cache, no editing, temperature 0")
    if depth < 1:
        raise ParadecError(f"freedave depth must be >= 1, got {depth}")
    spec = model.spec
    mask_id, eos_id, G, size = spec.mask_id, spec.eos_id, s.gen_length, s.blocks.size
    t0 = time.perf_counter()
    x, km, P = prepare(prompts, G, mask_id, spec.pad_id, model.device)
    B = x.shape[0]
    stats = [DiffusionStats(method=s.method or "freedave", prompt_tokens=len(p), gen_length=G, batch_size=B) for p in prompts]
    calls = 0

    def conf_of(logits_gen, xg):
        _, pred, conf = scores(logits_gen[None], 0.0, [], mask_id)
        pred, conf = pred[0], conf[0]
        if s.eos_reject is not None:
            prog = 1.0 - float((xg == mask_id).sum()) / G
            g = s.eos_reject
            conf = torch.where(pred == eos_id, conf * (g + (1 - g) * prog), conf)
        return pred, conf

    def finished(xg):
        if not (xg == mask_id).any():
            return True
        return s.eos_stop and bool(end_of_text(xg[None], mask_id, eos_id)[0])

    # initial forward
    logits, _ = model.forward(x, km)
    calls += 1
    cur = [logits[b, P:] for b in range(B)]
    done = [False] * B
    for b in range(B):
        stats[b].forwards += 1
        stats[b].rows += 1
        stats[b].accept_lengths.append(0)
    while not all(done):
        act = [b for b in range(B) if not done[b]]
        drafts: dict[int, list] = {}
        batch_x, batch_km, owner = [], [], []
        for b in act:
            xg = x[b, P:]
            pred, conf = conf_of(cur[b], xg)
            order = _choices(xg, conf, mask_id, size)[:depth]
            states, y = [], xg.clone()
            for p in order:
                y = y.clone()
                y[p] = pred[p]
                states.append(y)
                if finished(y):
                    break
            drafts[b] = [(p, int(pred[p])) for p in order[: len(states)]]
            for y in states:
                row = x[b].clone()
                row[P:] = y
                batch_x.append(row)
                batch_km.append(km[b])
                owner.append(b)
        out, _ = model.forward(torch.stack(batch_x), torch.stack(batch_km))
        calls += 1
        i = 0
        for b in act:
            n = len(drafts[b])
            rows = list(range(i, i + n))
            i += n
            kept = 1  # state 1 is the reference's next state by construction
            while kept < n:
                y = batch_x[rows[kept - 1]][P:]
                if finished(y):
                    break
                pred, conf = conf_of(out[rows[kept - 1], P:], y)
                nxt = _choices(y, conf, mask_id, size)
                if not nxt or (nxt[0], int(pred[nxt[0]])) != drafts[b][kept]:
                    break
                kept += 1
            y = batch_x[rows[kept - 1]][P:]
            x[b, P:] = y
            cur[b] = out[rows[kept - 1], P:]
            st = stats[b]
            st.forwards += 1
            st.rows += n
            st.committed += kept
            st.steps += kept
            st.accept_lengths.append(kept)
            if finished(y):
                done[b] = True
                if s.eos_stop and (y == mask_id).any():
                    st.filled += int((y == mask_id).sum())
                    x[b, P:][x[b, P:] == mask_id] = eos_id
        for b in act:
            stats[b].model_calls = calls
    total = time.perf_counter() - t0
    res = []
    for b in range(B):
        toks = x[b, P:].tolist()
        ans = toks[: toks.index(eos_id)] if eos_id in toks else toks
        st = stats[b]
        st.new_tokens = min(len(ans) + 1, G)
        st.total_s = total
        st.stop_reason = "eos" if eos_id in toks else "length"
        res.append(Result(toks, ans, st))
    return res


def generate(model, prompts, settings: Settings, depth: int = 4, batch_size: int = 16) -> list[Result]:
    out: list[Result] = []
    for i in range(0, len(prompts), batch_size):
        out.extend(decode(model, prompts[i : i + batch_size], settings, depth=depth, row_offset=i))
    return out
