"""Task accuracy and speed of a decoding method on held-out task instances, and greedy decoding
with the AR reference (same size, same tasks)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .. import freedave
from ..loop import generate
from ..methods import make_settings
from ..protocol import TinyDLM
from ..result import DllmResult
from .tasks import (
    EOS,
    GEN_LENGTH,
    HELDOUT_SEED,
    TASKS,
    Instance,
    correct,
    dataset,
    decode_answer,
)


def heldout(n_per_task: int, tasks=TASKS, seed: int = HELDOUT_SEED) -> list[Instance]:
    return [inst for t in tasks for inst in dataset(t, n_per_task, seed)]


@dataclass
class Score:
    label: str
    method: str
    options: dict
    n: int = 0
    accuracy: float = 0.0
    by_task: dict = field(default_factory=dict)
    forwards: float = 0.0  # mean forwards per sequence
    tokens_per_forward: float = 0.0  # decoded answer positions / forwards
    answer_tokens_per_forward: float = 0.0  # answer + its EOS / forwards
    tokens_per_s: float = 0.0  # answer tokens (+EOS) per second of wall time, whole batch
    model_calls: int = 0
    rows_per_forward: float = 1.0  # sequences a forward computes per input sequence (FreeDave > 1)
    cache_agreement: float | None = None
    edits: int = 0
    wall_s: float = 0.0
    agree_one: float | None = None  # share of outputs equal to one-token-per-step's

    def row(self) -> dict:
        return dict(self.__dict__)


def score(label, method, options, insts, results: list[DllmResult], wall, calls) -> Score:
    outs = [decode_answer(r.tokens) for r in results]
    ok = [correct(i, o) for i, o in zip(insts, outs)]
    by = {}
    for t in dict.fromkeys(i.task for i in insts):
        idx = [k for k, i in enumerate(insts) if i.task == t]
        by[t] = sum(ok[k] for k in idx) / len(idx)
    st = [r.stats for r in results]
    fw = sum(s.forwards for s in st)
    checks = sum(s.cache_checks for s in st)
    return Score(
        label=label, method=method, options=dict(options), n=len(insts), accuracy=sum(ok) / len(ok), by_task=by,
        forwards=fw / len(st), tokens_per_forward=sum(s.committed for s in st) / fw,
        answer_tokens_per_forward=sum(s.new_tokens for s in st) / fw, tokens_per_s=sum(s.new_tokens for s in st) / wall,
        model_calls=calls, rows_per_forward=sum(s.rows for s in st) / fw,
        cache_agreement=(sum(s.cache_agree for s in st) / checks) if checks else None,
        edits=sum(s.edits for s in st), wall_s=wall,
    )


def decode_all(model, method: str, prompts, settings, extra: dict, batch_size: int = 64):
    """Decode ``prompts`` with a diffusion method's settings (FreeDave has its own entry point)."""
    if method == "freedave":
        return freedave.generate(model, prompts, settings, depth=extra["depth"], batch_size=batch_size)
    return generate(model, prompts, settings, batch_size=batch_size)


def run_method(model, method: str, options: dict, insts, batch_size: int = 64, label: str | None = None, filter_model=None):
    s, extra = make_settings(method, options, gen_length=GEN_LENGTH, eos_id=EOS, filter_model=filter_model)
    prompts = [i.prompt_ids for i in insts]
    t0 = time.perf_counter()
    res = decode_all(model, method, prompts, s, extra, batch_size)
    wall = time.perf_counter() - t0
    calls = sum(max(r.stats.model_calls for r in res[i : i + batch_size]) for i in range(0, len(res), batch_size))
    sc = score(label or method, method, options, insts, res, wall, calls)
    return sc, res


@torch.no_grad()
def ar_generate(model, prompts: list[list[int]], max_new_tokens: int = GEN_LENGTH, batch_size: int = 64):
    """Greedy decoding with the AR reference (a causal TinyTransformer): one token per forward.
    Returns (answers as token lists incl. EOS, forwards per sequence)."""
    outs, fws = [], []
    tm = model.model if isinstance(model, TinyDLM) else model  # the TinyTransformer itself
    for i in range(0, len(prompts), batch_size):
        ps = prompts[i : i + batch_size]
        P = max(len(p) for p in ps)
        B = len(ps)
        ids = torch.zeros(B, P + max_new_tokens, dtype=torch.long)
        km = torch.zeros(B, P + max_new_tokens, dtype=torch.bool)
        for b, p in enumerate(ps):
            ids[b, P - len(p) : P] = torch.tensor(p)
            km[b, P - len(p) : P] = True
        gen = [[] for _ in range(B)]
        live = list(range(B))
        for j in range(max_new_tokens):
            rows = torch.tensor(live)
            logits, _ = tm(ids[rows, : P + j], km[rows, : P + j])
            nxt = logits[:, -1].argmax(-1)
            ids[rows, P + j] = nxt
            km[rows, P + j] = True
            keep = []
            for r, t in zip(live, nxt.tolist()):
                gen[r].append(t)
                if t != EOS:
                    keep.append(r)
            live = keep
            if not live:
                break
        outs.extend(gen)
        fws.extend(len(g) for g in gen)
    return outs, fws


def run_ar(model, insts, batch_size: int = 64) -> Score:
    t0 = time.perf_counter()
    outs, fws = ar_generate(model, [i.prompt_ids for i in insts], batch_size=batch_size)
    wall = time.perf_counter() - t0
    texts = [decode_answer(o) for o in outs]
    ok = [correct(i, o) for i, o in zip(insts, texts)]
    by = {}
    for t in dict.fromkeys(i.task for i in insts):
        idx = [k for k, i in enumerate(insts) if i.task == t]
        by[t] = sum(ok[k] for k in idx) / len(idx)
    n_tok = sum(fws)
    return Score(
        label="AR reference", method="ar", options={}, n=len(insts), accuracy=sum(ok) / len(ok), by_task=by,
        forwards=n_tok / len(insts), tokens_per_forward=1.0, answer_tokens_per_forward=1.0,
        tokens_per_s=n_tok / wall, model_calls=0, wall_s=wall,
    )
