"""Shared harness for the losslessness tests: run the decode loop on token ids, the prompts and
tiny-vocabulary settings, the exact enumerated target distribution, and the sampler."""

from __future__ import annotations

import itertools

import torch

from paradec.decode import DecodeConfig, decode
from paradec.sampling import SamplingParams, target_probs
from paradec.stats import DecodeStats

VOCAB = 80
PROMPTS = [
    [1, 5, 7, 9, 5, 7, 9, 11, 3, 5, 7],
    [1, 20, 21, 22, 23, 20, 21],
    [1, 40, 41, 40, 41, 40, 41, 40],
    [1, 60, 33, 12, 9, 70, 33, 12],
    [4],
]

# sampling: a tiny vocabulary, so every continuation can be enumerated exactly
SV = 6
S_PROMPT = [1, 2, 3, 1, 2, 3, 1, 2]
S_LEN = 3
S_TRIALS = 2500
# Fixed seeds make the chi-square checks deterministic. Threshold 1e-4 over all checks; the
# negative control in test_decode shows a lossy verifier lands near p = 1e-80.
P_MIN = 1e-4


def run(target, proposer, prompt, n=40, sampling=SamplingParams(), eos=frozenset(), stop=None):
    stats = DecodeStats()
    out = []
    cfg = DecodeConfig(max_new_tokens=n, sampling=sampling, eos_ids=frozenset(eos))
    for toks in decode(target, proposer, prompt, cfg, stats, stop):
        out.extend(toks)
    return out, stats


def exact_distribution(target, sampling):
    """P(continuation) for every S_LEN-token continuation of S_PROMPT, by enumeration."""
    probs = {}
    with torch.no_grad():
        for seq in itertools.product(range(SV), repeat=S_LEN):
            pr = 1.0
            for i in range(S_LEN):
                logits = target.model(torch.tensor([S_PROMPT + list(seq[:i])])).logits[0, -1]
                pr *= float(target_probs(logits, sampling)[seq[i]])
            probs[seq] = pr
    return probs


def sample_sequences(target, make, sampling, trials=S_TRIALS, seed=0):
    """``trials`` seeded samples of S_LEN tokens, each with a proposer from ``make()``."""
    out, drafted, accepted = [], 0, 0
    for i in range(trials):
        sp = SamplingParams(sampling.temperature, sampling.top_k, sampling.top_p, seed=seed * 100000 + i)
        toks, st = run(target, make(), S_PROMPT, n=S_LEN, sampling=sp)
        out.append(tuple(toks))
        drafted += st.drafted
        accepted += st.accepted
    return out, drafted, accepted


def assert_identical_to_ar(target, reference, make, label: str) -> int:
    """Greedy output with a proposer from ``make()`` equals plain AR on every prompt; returns
    the number of accepted draft tokens (callers assert it is > 0)."""
    accepted = 0
    for p in PROMPTS:
        out, stats = run(target, make(), p)
        assert out == reference[tuple(p)], f"{label} diverged from ar on prompt {p}"
        accepted += stats.accepted
    return accepted


def assert_sampling_lossless(s_target, make, sampling=SamplingParams(temperature=1.0)) -> None:
    """Sampled continuations with proposers from ``make()`` follow the exact target
    distribution (chi-square), and the run exercised both acceptance and rejection."""
    from helpers.stats import chi2_pvalue

    exact = exact_distribution(s_target, sampling)
    samples, drafted, accepted = sample_sequences(s_target, make, sampling)
    assert 0 < accepted < drafted, "the test must exercise both acceptance and rejection"
    assert chi2_pvalue(samples, exact) > P_MIN
