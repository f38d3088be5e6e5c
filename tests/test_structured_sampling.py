"""Sampling under a constraint is lossless: sampled outputs under each drafter (chains and trees,
sampled and deterministic drafts) follow the exactly enumerated constrained distribution; the
same check fails a verifier that does not mask the draft rows, and one that keeps sampled draft
distributions unrestricted."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers.tiny import tiny_llama
from helpers.structured import S_FORMAT, VOCAB, constraint, exact_constrained, pvalue, sample_outputs
from test_decode import RandomTree

from paradec.models.torch.hf import HFCausalLM
from paradec.proposers import Models, make_proposer
from paradec.proposers.base import NoDraft
from paradec.proposers.draft_model import DraftModelConfig, DraftModelProposer
from paradec.sampling import SamplingParams
from paradec.tree import DraftTree

TRIALS = 1200
P_MIN = 1e-4


@pytest.fixture(scope="module")
def st():
    return HFCausalLM(tiny_llama(3, vocab=VOCAB, std=0.15))


@pytest.fixture(scope="module")
def sd():
    return HFCausalLM(tiny_llama(4, vocab=VOCAB, layers=1, std=0.15))


@pytest.fixture(scope="module")
def sc():
    return constraint(S_FORMAT)


_seeds = itertools.count()
S_DRAFTERS = {
    "ar": lambda t, d: NoDraft(),
    "pld-tree": lambda t, d: make_proposer("pld", Models(t), {"branches": 3, "min_ngram": 1}),
    "draft-chain": lambda t, d: DraftModelProposer(d, VOCAB, DraftModelConfig(min_confidence=0.0)),
    "draft-tree": lambda t, d: DraftModelProposer(d, VOCAB, DraftModelConfig(width=2, min_confidence=0.0)),
    "random-tree": lambda t, d: RandomTree(seed=next(_seeds), vocab=VOCAB, nodes=6),
}
CASES = {"t1": SamplingParams(temperature=1.0), "t0.8-topp0.9": SamplingParams(temperature=0.8, top_p=0.9)}


RUNS = [(name, "t1") for name in S_DRAFTERS] + [("draft-tree", "t0.8-topp0.9"), ("random-tree", "t0.8-topp0.9")]


@pytest.mark.parametrize("name,case", RUNS)
def test_constrained_sampling_is_lossless(name, case, st, sd, sc):
    sampling = CASES[case]
    exact = exact_constrained(st, sc, sampling)
    samples, drafted, accepted, pruned = sample_outputs(st, lambda: S_DRAFTERS[name](st, sd), sc, sampling, TRIALS)
    if name != "ar":
        assert 0 < accepted < drafted, "the test must exercise both acceptance and rejection"
    if name in ("draft-chain", "draft-tree", "random-tree"):
        assert pruned > 0, "the test must exercise pruning"
    assert pvalue(samples, exact) > P_MIN


class Skewed:
    """Samples a 2-token chain from a fixed distribution: most mass on "a", the rest on tokens
    the grammar mostly rejects (so the restriction to the grammar's tokens matters)."""

    name = "skewed"

    def __init__(self):
        self.q = torch.full((VOCAB,), 0.5 / VOCAB, dtype=torch.float64)
        self.q[24] += 0.45  # "a"
        self.q[25] += 0.05  # "b"

    def begin(self, prompt, sampling):
        pass

    def propose(self, ctx):
        toks = torch.multinomial(self.q, 2, replacement=True, generator=ctx.generator).tolist()
        return DraftTree.chain(toks, torch.stack([self.q, self.q]))

    def observe(self, result):
        pass


def test_skewed_drafter_is_lossless(st, sc):
    exact = exact_constrained(st, sc, CASES["t1"])
    samples, drafted, accepted, pruned = sample_outputs(st, Skewed, sc, CASES["t1"], TRIALS)
    assert 0 < accepted < drafted and pruned > 0
    assert pvalue(samples, exact) > P_MIN


def test_check_fails_without_masking_the_draft_rows(st, sd, sc, monkeypatch):
    """Negative control: mask only the root's row (the draft rows verified unmasked)."""
    from paradec.structured.guide import Guide

    full = Guide.mask

    def root_only(self, logits):
        out = full(self, logits)
        out[1:] = logits[1:]
        return out

    monkeypatch.setattr(Guide, "mask", root_only)
    sampling = CASES["t1"]
    exact = exact_constrained(st, sc, sampling)
    samples, *_ = sample_outputs(st, lambda: DraftModelProposer(sd, VOCAB, DraftModelConfig(min_confidence=0.0)), sc, sampling, 1000)
    assert pvalue(samples, exact) < 1e-6


def test_check_fails_with_unrestricted_draft_distributions(st, sd, sc, monkeypatch):
    """Negative control: pruning sampled nodes but verifying against their unrestricted draft
    distribution (the renormalization over the grammar's tokens left out) is lossy too."""
    import dataclasses

    import paradec.structured.draft as draft_mod

    shape = draft_mod.shape_draft

    def unrestricted(matcher, draft, max_nodes, max_depth, vocab, tokenize=None, with_masks=True):
        s = shape(matcher, draft, max_nodes, max_depth, vocab, tokenize, with_masks)
        if draft.q is None or not s.kept:
            return s
        kept = [i for i in range(len(draft)) if draft.tokens[i] in s.tree.tokens[: s.kept]]
        q = s.tree.q.clone()
        src = {}
        for i in kept:  # the proposer's own rows, for the kept nodes (matched in order)
            src.setdefault(draft.tokens[i], []).append(i)
        for j in range(s.kept):
            q[j] = draft.q[src[s.tree.tokens[j]].pop(0)]
        from paradec.tree import DraftTree

        return dataclasses.replace(s, tree=DraftTree(s.tree.tokens, s.tree.parents, q))

    monkeypatch.setattr("paradec.structured.guide.shape_draft", unrestricted)
    sampling = CASES["t1"]
    exact = exact_constrained(st, sc, sampling)
    samples, *_ = sample_outputs(st, Skewed, sc, sampling, 1000)
    assert pvalue(samples, exact) < 1e-6
