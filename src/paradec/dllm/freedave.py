"""FreeDave: lossless draft-and-verify for diffusion LMs.

The reference is static one-token-per-step decoding: each step commits the single most
confident masked position of the current block (fixed semi-AR blocks; ties to the lower
position), stopping at end-of-text. From one forward's logits FreeDave drafts the next ``depth``
states of that decoder (commit the 1st, 2nd, ... most confident candidates in turn), verifies all
of them in ONE batched forward, and keeps the longest prefix of states that the reference decoder
would have reached: state j+1 is kept only if the reference's choice on state j (from state j's
own logits) is exactly draft j+1. The kept state's logits are already computed, so the next
round drafts from them. Every round keeps at least one token, and the output equals the
reference's token for token (test_freedave_reproduces_one_token_per_step in
tests/test_diffusion_loop.py). The price is compute: each forward call evaluates up to
``depth`` sequences per input sequence (stats.rows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..errors import ParadecError
from .protocol import DiffusionLM
from .loop import Settings, end_of_text, prepare, reject_eos, scores
from .policies.blocks import FixedBlocks
from .policies.commit import ranked
from .result import DllmResult, fill_with_eos, new_stats, results
from .stats import DiffusionStats


@dataclass(frozen=True)
class Reference:
    """The reference decoder's choices on one answer region [G] (greedy, one token per step)."""

    mask_id: int
    eos_id: int
    max_new_tokens: int
    blocks: FixedBlocks
    eos_stop: bool
    eos_reject: float | None

    def predict(self, logits_gen: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred [G], conf [G]) from one state's logits [G, V] (after EOS early rejection)."""
        _, pred, conf = scores(logits_gen[None], 0.0, [], self.mask_id)
        if self.eos_reject is not None:
            progress = 1.0 - (xg == self.mask_id).sum()[None].to(torch.float64) / self.max_new_tokens
            conf = reject_eos(pred, conf, progress, self.eos_reject, self.eos_id)
        return pred[0], conf[0]

    def finished(self, xg: torch.Tensor) -> bool:
        if not (xg == self.mask_id).any():
            return True
        return self.eos_stop and bool(end_of_text(xg[None], self.mask_id, self.eos_id)[0])

    def order(self, xg: torch.Tensor, conf: torch.Tensor) -> list[int]:
        """Reference order of commits on this state: candidates of the current block (the fixed
        block holding the first mask), most confident first (ties to the lower position)."""
        masked = xg == self.mask_id
        m = masked.nonzero()
        if len(m) == 0:
            return []
        G, lo = xg.shape[0], int(m[0])
        hi = self.blocks.end(lo, None, conf, G)
        pos = torch.arange(G, device=xg.device)
        cand = masked & (pos >= lo) & (pos < hi)
        r = ranked(conf[None], cand[None])[0]
        return [int(p) for p in torch.argsort(r)[: int(cand.sum())]]

    def draft(self, xg: torch.Tensor, logits_gen: torch.Tensor, depth: int):
        """The next ``depth`` reference states drafted from one state's logits (fewer if one
        finishes): (the drafted (position, token) pairs, the states [G] after each)."""
        pred, conf = self.predict(logits_gen, xg)
        drafts, states, y = [], [], xg
        for p in self.order(xg, conf)[:depth]:
            y = y.clone()
            y[p] = pred[p]
            drafts.append((p, int(pred[p])))
            states.append(y)
            if self.finished(y):
                break
        return drafts, states

    def kept(self, drafts: list[tuple[int, int]], states: list[torch.Tensor], logits: torch.Tensor) -> int:
        """How many drafted states the reference reaches: state j+1 counts only if the reference's
        choice on state j (from its verified logits [n, G, V]) is draft j+1. At least 1."""
        kept = 1  # state 1 is the reference's next state by construction
        while kept < len(drafts):
            y = states[kept - 1]
            if self.finished(y):
                break
            pred, conf = self.predict(logits[kept - 1], y)
            nxt = self.order(y, conf)
            if not nxt or (nxt[0], int(pred[nxt[0]])) != drafts[kept]:
                break
            kept += 1
        return kept


def _check(s: Settings, depth: int) -> None:
    if not isinstance(s.blocks, FixedBlocks) or s.edit is not None or s.cache.kind != "none" or s.temperature > 0:
        raise ParadecError("freedave reproduces greedy one-token-per-step decoding: fixed blocks, no cache, no editing, temperature 0")
    if depth < 1:
        raise ParadecError(f"freedave depth must be >= 1, got {depth}")


@dataclass
class Rows:
    """The batch FreeDave decodes: one row per sequence."""

    x: torch.Tensor  # [B, L] left-padded prompt, then the answer region
    key_mask: torch.Tensor  # [B, L] bool
    P: int  # the answer region starts at column P
    cur: list[torch.Tensor]  # [B] logits [G, V] of each row's current state (drafts start there)
    stats: list[DiffusionStats]  # [B]


def _keep(ref: Reference, rows: Rows, b: int, kept: int, n: int) -> bool:
    """Book row ``b``'s round (``kept`` of ``n`` drafted states); True when the row is finished
    (end-of-text fills its remaining masks with EOS)."""
    st = rows.stats[b]
    st.forwards += 1
    st.rows += n
    st.committed += kept
    st.steps += kept
    st.accept_lengths.append(kept)
    x_gen = rows.x[b, rows.P :]
    if not ref.finished(x_gen):
        return False
    if ref.eos_stop:
        st.filled += fill_with_eos(x_gen, ref.mask_id, ref.eos_id)
    return True


def _round(model: DiffusionLM, ref: Reference, rows: Rows, act: list[int], depth: int) -> list[int]:
    """One round over the active rows: draft from each row's current logits, verify every draft
    in one batched forward, keep each row's reference prefix. Returns the rows that finished."""
    x, P = rows.x, rows.P
    drafted = {b: ref.draft(x[b, P:], rows.cur[b], depth) for b in act}
    batch_x, batch_km = [], []
    for b in act:
        for y in drafted[b][1]:
            row = x[b].clone()
            row[P:] = y
            batch_x.append(row)
            batch_km.append(rows.key_mask[b])
    out, _ = model.forward(torch.stack(batch_x), torch.stack(batch_km))  # [sum of n, L, V]
    finished, i = [], 0
    for b in act:
        drafts, states = drafted[b]
        n = len(drafts)
        kept = ref.kept(drafts, states, out[i : i + n, P:])
        x[b, P:] = states[kept - 1]
        rows.cur[b] = out[i + kept - 1, P:]
        i += n
        if _keep(ref, rows, b, kept, n):
            finished.append(b)
    return finished


def draft_verify_batch(model: DiffusionLM, prompts: list[list[int]], settings: Settings, depth: int = 4) -> list[DllmResult]:
    """FreeDave over one batch (greedy: no random numbers, so no per-row seeds)."""
    s = settings
    s.check(model)
    _check(s, depth)
    spec, G = model.spec, s.max_new_tokens
    ref = Reference(spec.mask_id, spec.eos_id, G, s.blocks, s.eos_stop, s.eos_reject)
    t0 = time.perf_counter()
    x, km, P = prepare(prompts, G, spec.mask_id, spec.pad_id, model.device)
    logits, _ = model.forward(x, km)  # the first round drafts from the initial forward
    calls = 1
    rows = Rows(x, km, P, [logits[b, P:] for b in range(x.shape[0])], new_stats(prompts, s.method or "freedave", G))
    for st in rows.stats:
        st.forwards += 1
        st.rows += 1
        st.accept_lengths.append(0)
    active = list(range(x.shape[0]))
    while active:  # every round keeps >= 1 token of every active row, so this ends
        finished = _round(model, ref, rows, active, depth)
        calls += 1
        for b in active:
            rows.stats[b].model_calls = calls
        active = [b for b in active if b not in finished]
    return results(x[:, P:], spec.eos_id, rows.stats, time.perf_counter() - t0)


def generate(model, prompts, settings: Settings, depth: int = 4, batch_size: int = 16) -> list[DllmResult]:
    out: list[DllmResult] = []
    for i in range(0, len(prompts), batch_size):
        out.extend(draft_verify_batch(model, prompts[i : i + batch_size], settings, depth=depth))
    return out
