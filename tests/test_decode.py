"""The decode loop is lossless: greedy output identical to plain AR for every drafter, sampled
output distributed exactly as plain sampling, stop conditions honoured inside accepted blocks."""

import itertools
import random

import pytest
import torch

from helpers.tiny import tiny_llama
from paradec.models.torch.hf import HFCausalLM
from paradec.proposers import Models, make_proposer
from paradec.proposers.base import NoDraft
from paradec.proposers.draft_model import DraftModelConfig, DraftModelProposer
from paradec.models.torch.quantize import int8_copy
from paradec.proposers.pld import PLDConfig, PromptLookup
from paradec.proposers.qdraft import QDraftConfig, QuantizedSelfDraft
from paradec.sampling import SamplingParams
from paradec.tree import DraftTree
from helpers.lossless import P_MIN, PROMPTS, SV, VOCAB, exact_distribution, run, sample_sequences
from helpers.stats import chi2_pvalue

@pytest.fixture(scope="module")
def drafter_model():
    return HFCausalLM(tiny_llama(7, vocab=VOCAB, layers=1))


class Oracle:
    """Proposes the true greedy continuation (optionally hidden as the 2nd branch of a tree)."""

    name = "oracle"

    def __init__(self, ref: list[int], prompt_len: int, k: int = 5, as_second_branch: bool = False):
        self.ref, self.n0, self.k, self.second = ref, prompt_len, k, as_second_branch

    def begin(self, prompt, sampling):
        pass

    def propose(self, ctx):
        done = len(ctx.tokens) - self.n0
        good = self.ref[done : done + self.k]
        if not self.second:
            return DraftTree.chain(good)
        bad = [(t + 1) % VOCAB for t in good]
        return DraftTree.from_sequences([bad, good])

    def observe(self, result):
        pass


class Adversary(Oracle):
    """Proposes tokens the target never picks (the true token + 1)."""

    name = "adversary"

    def propose(self, ctx):
        done = len(ctx.tokens) - self.n0
        return DraftTree.chain([(t + 1) % VOCAB for t in self.ref[done : done + self.k]])


class RandomTree:
    """Random tree-shaped drafts (random tokens and shapes) from its own RNG."""

    name = "random-tree"

    def __init__(self, seed=0, vocab=VOCAB, nodes=12):
        self.rng, self.vocab, self.nodes = random.Random(seed), vocab, nodes

    def begin(self, prompt, sampling):
        pass

    def propose(self, ctx):
        n = self.rng.randint(0, min(self.nodes, ctx.max_nodes))
        parents = tuple(self.rng.randint(-1, i - 1) for i in range(n))
        # bias tokens towards recent context so some get accepted
        toks = tuple(self.rng.choice(ctx.tokens[-6:] + [self.rng.randrange(self.vocab)]) for _ in range(n))
        return DraftTree(toks, parents)

    def observe(self, result):
        pass


def test_ar_matches_transformers_generate(target):
    for p in PROMPTS:
        ours, stats = run(target, NoDraft(), p, n=30)
        hf = target.model.generate(
            torch.tensor([p]), max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(p) :].tolist()
        assert ours == hf
        assert stats.forwards == 30 and stats.mean_accepted == 1.0


DRAFTERS = {
    "pld-chain": lambda d: PromptLookup(PLDConfig(branches=1)),
    "pld-tree": lambda d: PromptLookup(PLDConfig(branches=4, draft_len=6, max_nodes=20)),
    "draft-chain": lambda d: DraftModelProposer(d, VOCAB, DraftModelConfig(min_confidence=0.0)),
    "draft-tree": lambda d: DraftModelProposer(d, VOCAB, DraftModelConfig(width=3, sibling_depth=3)),
    "random-tree": lambda d: RandomTree(),
    "qdraft": lambda d: QuantizedSelfDraft(_int8(0, VOCAB), VOCAB, QDraftConfig(backend="int8", lookup=12)),
}

_INT8 = {}


def _int8(seed, vocab, **kw):
    """An int8 weight-only copy of the tiny target with this seed (cached)."""
    key = (seed, vocab, tuple(sorted(kw.items())))
    if key not in _INT8:
        _INT8[key] = HFCausalLM(int8_copy(tiny_llama(seed, vocab=vocab, **kw)))
    return _INT8[key]


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_identical_to_ar(name, target, drafter_model, reference):
    accepted = 0
    for p in PROMPTS:
        out, stats = run(target, DRAFTERS[name](drafter_model), p)
        assert out == reference[tuple(p)], f"{name} diverged from ar on prompt {p}"
        accepted += stats.accepted
        assert stats.committed >= stats.new_tokens
    if name != "random-tree":
        assert accepted > 0, f"{name} never got a token accepted: the test would not exercise acceptance"


def test_all_accept_branch(target, reference):
    p = PROMPTS[0]
    out, stats = run(target, Oracle(reference[tuple(p)], len(p), k=5), p)
    assert out == reference[tuple(p)]
    assert stats.accepted == stats.drafted  # every draft token kept
    assert stats.bonus == stats.forwards  # every step ended with a bonus token
    assert stats.forwards == 7  # 40 tokens at 6 per forward
    assert stats.per_position_acceptance == [1.0] * 5


def test_all_reject_branch(target, reference):
    p = PROMPTS[1]
    out, stats = run(target, Adversary(reference[tuple(p)], len(p), k=4), p)
    assert out == reference[tuple(p)]
    assert stats.accepted == 0
    assert stats.bonus == 1  # only the last step, which has no room left to draft
    assert stats.forwards == 40 and stats.mean_accepted == 1.0


def test_tree_compaction_when_accepted_path_is_not_a_prefix(target, reference):
    # the correct continuation is the second branch: accepted KV slots must be moved down
    p = PROMPTS[3]
    out, stats = run(target, Oracle(reference[tuple(p)], len(p), k=4, as_second_branch=True), p)
    assert out == reference[tuple(p)]
    # full trees while the budget allows (near the end the node cap cuts the second branch)
    assert stats.accept_lengths[:7] == [5] * 7


def test_eos_inside_accepted_block(target, reference):
    p = PROMPTS[0]
    ref = reference[tuple(p)]
    k = 3  # an EOS at index 3 sits inside the first accepted block of 5
    eos = ref[k]
    first = ref.index(eos)
    out, stats = run(target, Oracle(ref, len(p), k=5), p, eos={eos})
    assert out == ref[: first + 1]
    assert stats.stop_reason == "eos" and stats.new_tokens == first + 1


def test_max_new_tokens_inside_accepted_block(target, reference):
    p = PROMPTS[0]
    ref = reference[tuple(p)]
    out, stats = run(target, Oracle(ref, len(p), k=5), p, n=9)
    assert out == ref[:9] and stats.stop_reason == "length"


def test_stop_callback_inside_accepted_block(target, reference):
    p = PROMPTS[2]
    ref = reference[tuple(p)]
    out, stats = run(target, Oracle(ref, len(p), k=5), p, stop=lambda gen: len(gen) == 7)
    assert out == ref[:7] and stats.stop_reason == "stop"


def test_context_window_limits_generation():
    small = HFCausalLM(tiny_llama(0, vocab=VOCAB, max_pos=20))
    out, stats = run(small, PromptLookup(), PROMPTS[0], n=100)
    assert len(PROMPTS[0]) + len(out) == 20 and stats.stop_reason == "context"


# ---- sampling: distributions ----------------------------------------------------------------
@pytest.fixture(scope="module")
def s_drafter():
    return HFCausalLM(tiny_llama(4, vocab=SV, layers=1, std=0.15))


_tree_seeds = itertools.count()
SAMPLING_CASES = {
    "t1": SamplingParams(temperature=1.0),
    "t0.7-topk4-topp0.9": SamplingParams(temperature=0.7, top_k=4, top_p=0.9),
}
S_DRAFTERS = {
    "ar": lambda d: NoDraft(),
    "pld-tree": lambda d: PromptLookup(PLDConfig(branches=3, min_ngram=1)),
    "draft-chain": lambda d: DraftModelProposer(d, SV, DraftModelConfig(min_confidence=0.0)),
    "draft-tree": lambda d: DraftModelProposer(d, SV, DraftModelConfig(width=2, min_confidence=0.0)),
    "random-tree": lambda d: RandomTree(seed=next(_tree_seeds), vocab=SV, nodes=6),
    "qdraft": lambda d: QuantizedSelfDraft(_int8(3, SV, std=0.15), SV, QDraftConfig(min_confidence=0.0, backend="int8")),
}


@pytest.mark.parametrize("case", list(SAMPLING_CASES))
@pytest.mark.parametrize("name", list(S_DRAFTERS))
def test_sampling_is_lossless(name, case, s_target, s_drafter):
    sampling = SAMPLING_CASES[case]
    exact = exact_distribution(s_target, sampling)
    samples, drafted, accepted = sample_sequences(s_target, lambda: S_DRAFTERS[name](s_drafter), sampling)
    if name != "ar":
        assert 0 < accepted < drafted, "the test must exercise both acceptance and rejection"
    assert chi2_pvalue(samples, exact) > P_MIN


def test_sampling_check_detects_a_lossy_verifier(s_target, s_drafter, monkeypatch):
    """Negative control: a verifier that always accepts the first draft token is lossy, and the
    same check must reject it (so the tests above can fail)."""
    import paradec.decode as dec
    from paradec.verify import Verdict

    def accept_first(tree, probs, generator):
        kids = tree.children()[0]
        if not kids:
            return Verdict((), (), int(torch.multinomial(probs[0], 1, generator=generator)), True)
        c = kids[0]
        return Verdict((c,), (tree.tokens[c],), int(torch.multinomial(probs[c + 1], 1, generator=generator)), False)

    monkeypatch.setattr(dec, "verify_sampling", accept_first)
    sampling = SAMPLING_CASES["t1"]
    exact = exact_distribution(s_target, sampling)
    samples, _, _ = sample_sequences(
        s_target, lambda: DraftModelProposer(s_drafter, SV, DraftModelConfig(min_confidence=0.0)), sampling, trials=1500
    )
    assert chi2_pvalue(samples, exact) < 1e-6


def test_make_proposer_errors():
    from paradec.errors import ParadecError

    models = Models(HFCausalLM(tiny_llama(0, vocab=VOCAB)))
    with pytest.raises(ParadecError, match="unknown method"):
        make_proposer("nope", models)
    with pytest.raises(ParadecError, match="needs a draft model"):
        make_proposer("draft", models)
    with pytest.raises(ParadecError, match="unknown option"):
        make_proposer("pld", models, options={"bogus": 1})
    with pytest.raises(ParadecError, match="expects int"):
        make_proposer("pld", models, options={"draft_len": "many"})
    with pytest.raises(ParadecError, match="expects int"):  # strict: text is parsed only from --opt
        make_proposer("pld", models, options={"draft_len": "5"})
    assert make_proposer("pld", models, options={"draft_len": 5}).config.draft_len == 5


def test_draft_with_lookup_is_identical_to_ar_and_uses_the_batched_check(target, drafter_model, reference):
    """``lookup``: the drafter scores a suffix-lookup chain in one pass and keeps what it agrees
    with; the output stays the target's."""
    calls = {"score": 0}
    for p in PROMPTS:
        prop = DraftModelProposer(drafter_model, VOCAB, DraftModelConfig(lookup=8, min_confidence=0.0))
        orig = prop.drafter.score

        def counting(tokens, chain, orig=orig):
            calls["score"] += 1
            return orig(tokens, chain)

        prop.drafter.score = counting
        out, _ = run(target, prop, p)
        assert out == reference[tuple(p)]
    assert calls["score"] > 0


def test_hf_drafter_score_matches_one_token_feeding(drafter_model):
    from paradec.models.drafter import HFDrafter

    a, b = HFDrafter(drafter_model), HFDrafter(drafter_model)
    a.reset(64)
    b.reset(64)
    tokens, chain = [1, 5, 7, 9, 5], [7, 9, 11]
    scored = a.score(tokens, chain)  # [4, V]
    stepwise = [b.logits_after(tokens)] + [b.feed(t) for t in chain]
    assert torch.allclose(scored, torch.stack(stepwise), atol=1e-9)
    a.truncate(len(tokens) + 1)  # keep tokens + chain[:1]
    assert torch.allclose(a.feed(chain[1]), stepwise[2], atol=1e-9)


class _NativeFlagged:
    """The tiny target, flagged as running on its own thread pool (as the native backend is)."""

    native = True

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_sampling_runs_torch_single_threaded_beside_a_native_target(target, monkeypatch):
    """Beside a native target the sampling step runs torch on one thread (its parallel regions'
    spinning threads would take the native pool's cores), restores the count after, and draws
    the same samples; beside any other target the thread count is left alone."""
    import paradec.decode as decode_mod

    seen = []
    real = decode_mod.verify_sampling

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(decode_mod, "verify_sampling", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = SamplingParams(temperature=0.9, seed=3)
        plain, _ = run(target, NoDraft(), PROMPTS[0], n=12, sampling=s)
        assert seen and set(seen) == {2}
        seen.clear()
        flagged, _ = run(_NativeFlagged(target), NoDraft(), PROMPTS[0], n=12, sampling=s)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2 and flagged == plain
    finally:
        torch.set_num_threads(before)
