"""``auto``: lossless whatever it picks, learns its cost model online, falls back to plain
decoding when no draft pays."""

import time

import pytest
import torch

from helpers.tiny import tiny_llama
from helpers.lossless import PROMPTS, SV, VOCAB, assert_identical_to_ar, assert_sampling_lossless, run
from paradec.models.torch.hf import HFCausalLM
from paradec.proposers import Models, make_proposer
from paradec.proposers.base import NoDraft, ProposeContext, StepResult
from paradec.proposers.auto import AutoConfig, AutoDrafter, AutoMemory, Ema, context_class, size_bucket
from paradec.proposers.draft_model import DraftModelConfig, DraftModelProposer
from paradec.sampling import SamplingParams
from paradec.tree import DraftTree
from paradec.verify import verify_greedy


@pytest.fixture(scope="module")
def drafter_model():
    return HFCausalLM(tiny_llama(7, vocab=VOCAB, layers=1))


class Scripted:
    """A model drafter stand-in: proposes the true continuation (``good``) or tokens the target
    never picks, optionally slowly; counts its calls."""

    name = "scripted"

    def __init__(self, ref, n0, good=True, k=5, delay=0.0):
        self.ref, self.n0, self.good, self.k, self.delay = ref, n0, good, k, delay
        self.calls = self.observed = 0

    def begin(self, prompt, sampling):
        pass

    def propose(self, ctx):
        self.calls += 1
        time.sleep(self.delay)
        done = len(ctx.tokens) - self.n0
        toks = self.ref[done : done + self.k]
        return DraftTree.chain(toks if self.good else [(t + 1) % VOCAB for t in toks])

    def observe(self, result):
        self.observed += 1


def test_auto_without_model_is_identical_to_ar(target, reference):
    assert assert_identical_to_ar(target, reference, lambda: AutoDrafter(None), "auto") > 0


def test_auto_with_draft_model_is_identical_to_ar(target, reference, drafter_model):
    make = lambda: AutoDrafter(DraftModelProposer(drafter_model, VOCAB, DraftModelConfig()), AutoConfig(explore_every=3))
    assert assert_identical_to_ar(target, reference, make, "auto+draft") > 0


@pytest.mark.parametrize("good", [True, False])
def test_auto_with_scripted_model_is_identical_to_ar(good, target, reference):
    for p in PROMPTS:
        ref = reference[tuple(p)]
        out, _ = run(target, AutoDrafter(Scripted(ref, len(p), good=good)), p)
        assert out == ref


def test_auto_prefers_an_accurate_model_drafter(target, reference):
    p = PROMPTS[3]
    ref = reference[tuple(p)]
    model = Scripted(ref, len(p), good=True, k=6)
    auto = AutoDrafter(model)
    out, stats = run(target, auto, p, n=40)
    assert out == ref
    assert auto.choices["model"] >= stats.forwards - 2  # almost every step
    assert model.observed == model.calls  # the model drafter learns only from its own drafts
    assert stats.mean_accepted > 5


def test_auto_falls_back_to_plain_decoding_when_drafting_does_not_pay(target, reference):
    p = PROMPTS[3]
    ref = reference[tuple(p)]
    model = Scripted(ref, len(p), good=False, delay=0.01)  # slow and always wrong
    cfg = AutoConfig(explore_every=8)
    auto = AutoDrafter(model, cfg)
    out, stats = run(target, auto, p, n=40)
    assert out == ref
    # tried at the start, then only when exploring: at most once per explore_every steps
    assert model.calls <= 1 + stats.forwards // cfg.explore_every + 1
    # (the last step drafts nothing: no room left)
    assert auto.choices["none"] + auto.choices["lookup"] + model.calls >= stats.forwards - 1


def test_lookup_acceptance_is_learned_counterfactually(target, reference):
    p = PROMPTS[2]  # a repetitive prompt: the suffix draft would be right
    ref = reference[tuple(p)]
    model = Scripted(ref, len(p), good=True, k=2)
    auto = AutoDrafter(model, AutoConfig(explore_every=1))  # the model drafts every step
    run(target, auto, p, n=30)
    assert auto.choices["lookup"] == 0
    learned = [e.value for e in auto.lookup_accept.values() if e.value is not None]
    assert learned, "the lookup draft was never scored against the committed tokens"


def test_auto_sampling_is_lossless(s_target):
    s_drafter = HFCausalLM(tiny_llama(4, vocab=SV, layers=1, std=0.15))
    make = lambda: AutoDrafter(
        DraftModelProposer(s_drafter, SV, DraftModelConfig(min_confidence=0.0)), AutoConfig(explore_every=2)
    )
    assert_sampling_lossless(s_target, make, SamplingParams(temperature=1.0))


def test_forward_time_model():
    auto = AutoDrafter(None, AutoConfig(growth=1.5))
    assert auto.forward_time(1) > 0  # a positive prior before any measurement
    e = Ema(1.0)
    e.add(0.02)
    auto.fwd[size_bucket(1)] = e
    assert auto.forward_time(1) == pytest.approx(0.02)
    assert auto.forward_time(2) == pytest.approx(0.03)  # one doubling up
    assert auto.forward_time(9) == pytest.approx(0.02 * 1.5**3)
    e2 = Ema(1.0)
    e2.add(0.05)
    auto.fwd[size_bucket(9)] = e2
    assert auto.forward_time(12) == pytest.approx(0.05)  # same bucket as 9
    assert auto.forward_time(16) == pytest.approx(0.075)


def test_forward_times_are_kept_per_context_class():
    """A forward after a long context costs more (every draft token attends to all of it): the
    times are learned per context class, a class with nothing measured borrows the nearest
    class's table, and a short context's estimate is not the long one's."""
    auto = AutoDrafter(None, AutoConfig(growth=1.5))
    auto.begin([1, 2, 3], SamplingParams())
    m = auto.memory
    assert context_class(10) == context_class(127) < context_class(128) < context_class(512) < context_class(1024)
    for n, k, v in ((100, 9, 0.012), (1000, 9, 0.020)):
        e = Ema(1.0)
        e.add(v)
        m.forward_table(context_class(n))[size_bucket(k)] = e
    auto.propose(ProposeContext(list(range(100)), 90, 8, 8, SamplingParams()))
    assert auto.forward_time(12) == pytest.approx(0.012)
    auto.propose(ProposeContext(list(range(1000)), 990, 8, 8, SamplingParams()))
    assert auto.forward_time(12) == pytest.approx(0.020)
    auto.propose(ProposeContext(list(range(2500)), 2490, 8, 8, SamplingParams()))
    assert auto.forward_time(12) == pytest.approx(0.020)  # 2048+: nothing yet, the nearest class's


def test_a_stale_high_estimate_is_capped_and_an_outlier_clipped():
    """A size whose estimate went up (one slow step) would never be sent, so never measured
    again: no size is estimated above a larger measured size, and one observation raises an
    estimate at most twofold."""
    auto = AutoDrafter(None, AutoConfig(growth=1.5))
    for k, v in ((1, 0.010), (9, 0.050), (40, 0.020)):
        auto.fwd[size_bucket(k)] = e = Ema(1.0)
        e.add(v)
    assert auto.forward_time(9) == pytest.approx(0.020)  # capped by the 32-63 bucket
    assert auto.forward_time(1) == pytest.approx(0.010)
    auto.begin([1, 2, 3], SamplingParams())
    auto.propose(ProposeContext([1, 2, 3], 3, 8, 8, SamplingParams()))
    time.sleep(0.1)  # a 0.1 s "forward" (a pause), one token
    logits = torch.zeros(1, 4)
    auto.observe(StepResult(DraftTree(), verify_greedy(DraftTree(), logits), [1, 2, 3, 0], logits))
    assert auto.forward_time(1) == pytest.approx(0.020)


def test_ema():
    e = Ema(0.5)
    assert e.get(3.0) == 3.0
    e.add(2.0)
    e.add(4.0)
    assert e.get(0.0) == pytest.approx(3.0)


def test_make_proposer_auto_options():
    from paradec.errors import ParadecError

    models = Models(HFCausalLM(tiny_llama(0, vocab=VOCAB)))
    auto = make_proposer("auto", models)
    assert isinstance(auto, AutoDrafter) and auto.model is None  # no draft model, no GGUF
    with pytest.raises(ParadecError, match="needs a draft model"):
        make_proposer("auto", models, options={"model": "draft"})
    with pytest.raises(ParadecError, match="must be one of"):
        make_proposer("auto", models, options={"model": "bogus"})
    with_draft = Models(models.target, HFCausalLM(tiny_llama(7, vocab=VOCAB, layers=1)))
    assert isinstance(make_proposer("auto", with_draft).model, DraftModelProposer)


def test_model_cost_ignores_catch_up_calls(target, reference):
    """The first model-drafter call of a request (and any after lookup/none steps) also catches
    up on committed tokens; its time must not count as the drafting cost."""
    p = PROMPTS[3]
    ref = reference[tuple(p)]

    class SlowFirst(Scripted):
        def propose(self, ctx):
            self.delay = 0.3 if self.calls == 0 else 0.0
            return super().propose(ctx)

    model = SlowFirst(ref, len(p), good=True, k=6)
    auto = AutoDrafter(model)
    out, _ = run(target, auto, p, n=40)
    assert out == ref
    assert model.calls > 2 and auto.model_cost.value is not None
    assert auto.model_cost.value < 0.1  # the 0.3 s catch-up call was left out


def _with_accept(auto, bucket, table):
    for n, a in table.items():
        e = Ema(1.0)
        e.add(a)
        auto.lookup_accept[(bucket, n)] = e


def test_tree_size_follows_the_roofline():
    """Same acceptance curve, two machines: where verification is nearly free (flat forward
    time) the whole tree pays; where every token costs (steep) a small one does."""
    tree = DraftTree.chain(list(range(1, 17)))  # 16 nodes, depth 16
    accept = {1: 0.9, 2: 1.6, 4: 2.4, 8: 3.0, 16: 3.4}
    flat, steep = AutoDrafter(), AutoDrafter()
    for auto in (flat, steep):
        _with_accept(auto, 3, accept)
    flat.forward_time = lambda k: 0.040 + 0.0005 * k  # 40 ms + 0.5 ms per token
    steep.forward_time = lambda k: 0.010 * k  # linear: every token costs as much as the first
    assert flat.best_lookup_size(tree, 3, 0.0)[0] == 16
    assert steep.best_lookup_size(tree, 3, 0.0)[0] == 1
    medium = AutoDrafter()
    _with_accept(medium, 3, accept)
    medium.forward_time = lambda k: 0.040 + 0.004 * k
    assert medium.best_lookup_size(tree, 3, 0.0)[0] in (4, 8)
    # an unlearned size takes the acceptance of the largest smaller size learned
    assert medium.lookup_acceptance(3, 12) == accept[8]
    assert medium.lookup_acceptance(5, 4) == 1.0  # nothing learned for that match bucket
    assert AutoDrafter.sizes(11) == [1, 2, 4, 8, 11] and AutoDrafter.sizes(1) == [1] and AutoDrafter.sizes(0) == []


def test_tree_size_in_a_run_is_lossless_and_follows_the_cost_model(target):
    p = [1] + list(range(10, 26)) * 3  # a long repeated phrase: deep lookup trees
    want, _ = run(target, NoDraft(), p)
    mean_size = {}
    # flat: 40 ms + 0.1 ms per token; steep: 20 ms + 10 ms per token
    for name, f in {"flat": lambda k: 0.04 + 0.0001 * k, "steep": lambda k: 0.02 + 0.01 * k}.items():
        auto = AutoDrafter(None, AutoConfig(explore_every=1000))
        for b in range(13):  # start out believing every lookup tree is right 5 tokens deep
            _with_accept(auto, b, {n: 5.0 for n in (1, 2, 4, 8, 16, 32, 48)})
        auto.forward_time = f
        out, _ = run(target, auto, p)
        assert out == want, name
        sent = auto.lookup_sizes
        assert sent, f"{name}: the lookup was never used"
        mean_size[name] = sum(n * k for n, k in sent.items()) / sum(sent.values())
    assert mean_size["flat"] > mean_size["steep"], mean_size  # (deterministic: the clock is mocked)


def test_censored_counterfactual_only_raises_the_estimate(target, reference):
    """Under plain decoding (one committed token per step) every lookup tree that guessed the
    token is censored at 1; that must not drag a learned higher acceptance down."""
    p = PROMPTS[2]
    auto = AutoDrafter(None, AutoConfig(explore_every=1000))
    auto.forward_time = lambda k: 0.01 * k * k  # drafting never pays: every step is plain
    for b in range(13):
        _with_accept(auto, b, {n: 5.0 for n in (1, 2, 4, 8, 16, 32, 48)})
    out, _ = run(target, auto, p, n=30)
    assert out == reference[tuple(p)][:30]
    assert auto.choices["lookup"] == 0
    values = [e.value for e in auto.lookup_accept.values()]
    assert min(values) < 5.0  # some trees missed: exact observations count
    assert max(values) == 5.0  # hits are censored at 1 token: they never lowered a 5


class CatchingUp(Scripted):
    """A model drafter with its own cache: before drafting it reads every token committed since
    it last ran, at ``per_token`` seconds each (the whole prompt on its first call)."""

    def __init__(self, ref, n0, per_token, **kw):
        super().__init__(ref, n0, **kw)
        self.per_token, self.seen, self.read = per_token, 0, []

    def propose(self, ctx):
        pending = len(ctx.tokens) - self.seen
        self.read.append(pending)
        time.sleep(self.per_token * pending)
        return super().propose(ctx)

    def observe(self, result):
        super().observe(result)
        self.seen = len(result.tokens) - 1  # its accepted draft is in its cache already


def _long_prompt(n):
    return [1] + [(7 * i * i + 3 * i) % (VOCAB - 2) + 2 for i in range(n - 1)]


def test_catch_up_cost_is_learned_per_token(target):
    p = _long_prompt(60)
    ref = run(target, NoDraft(), p)[0]
    model = CatchingUp(ref, len(p), per_token=0.004, good=True, k=6)
    auto = AutoDrafter(model, AutoConfig(explore_every=4))
    out, _ = run(target, auto, p, n=40)
    assert out == ref
    assert auto.catchup.value is not None
    # the estimate is the time beyond a drafting step per pending token (sleep overshoots a little)
    assert 0.002 < auto.catchup.value < 0.008


def test_a_long_prompt_keeps_auto_off_a_model_it_would_have_to_catch_up(target):
    """One memory across requests: once auto knows the model drafter reads 10 ms a token, a
    200-token prompt (2 s to read) is not worth a model that saves little on 40 tokens. Without
    that knowledge auto explores the model at the start and pays the prompt."""
    short = _long_prompt(40)
    ref_short = run(target, NoDraft(), short)[0]
    long = _long_prompt(200)
    ref_long = run(target, NoDraft(), long)[0]
    memory = AutoMemory(AutoConfig().ema)

    first = CatchingUp(ref_short, len(short), per_token=0.01, good=True, k=6)
    out, _ = run(target, AutoDrafter(first, memory=memory), short)
    assert out == ref_short and first.calls > 0 and memory.catchup.value is not None

    informed = CatchingUp(ref_long, len(long), per_token=0.01, good=True, k=6)
    auto = AutoDrafter(informed, memory=memory)
    out, _ = run(target, auto, long)
    assert out == ref_long
    assert informed.calls == 0, informed.read  # never paid the 200-token read

    naive = CatchingUp(ref_long, len(long), per_token=0.01, good=True, k=6)
    out, _ = run(target, AutoDrafter(naive), long)
    assert out == ref_long
    assert naive.calls > 0 and naive.read[0] >= 198  # the control: it read the whole prompt


def test_model_rate_charges_catch_up_as_in_ski_rental():
    auto = AutoDrafter(Scripted([], 0), AutoConfig(min_horizon=16))
    m = auto.memory
    for ema, v in ((auto.model_accept, 5.0), (m.model_cost, 0.08), (m.model_nodes, 6.0), (m.catchup, 0.003)):
        ema.add(v)
    for k, v in ((1, 0.03), (7, 0.04)):
        auto.fwd[size_bucket(k)] = e = Ema(1.0)
        e.add(v)
    caught_up = auto.model_rate(auto.catch_up_time(2), 0, 128)
    assert caught_up == pytest.approx(6 / (0.08 + 0.04))  # a token or two pending: no charge
    # 400 tokens to read (1.2 s), spread over the tokens generated so far
    behind = auto.model_rate(auto.catch_up_time(402), 64, 128)
    assert behind == pytest.approx(6 / (0.08 + 0.04 + 1.2 / (64 / 6)))
    assert behind < caught_up
    # early in a request the switch is charged to few tokens (at least min_horizon) ...
    start = auto.model_rate(auto.catch_up_time(402), 0, 128)
    assert start == pytest.approx(6 / (0.08 + 0.04 + 1.2 / (16 / 6))) and start < behind
    # ... and late in one, to no more than the tokens left
    assert auto.model_rate(auto.catch_up_time(402), 120, 8) < start
    assert auto.model_rate(auto.catch_up_time(402), 120, 4096) > behind


def test_auto_memory_is_shared_per_models_and_config():
    models = Models(HFCausalLM(tiny_llama(0, vocab=VOCAB)))
    a, b = make_proposer("auto", models), make_proposer("auto", models)
    assert a is not b and a.memory is b.memory  # a new request starts from what earlier ones learned
    c = make_proposer("auto", models, options={"explore_every": 5})
    assert c.memory is not a.memory
    assert Models(models.target) is not models and make_proposer("auto", Models(models.target)).memory is not a.memory


def test_memory_keeps_greedy_and_sampled_acceptance_apart():
    memory = AutoMemory(0.5)
    greedy, sampled = AutoDrafter(None, memory=memory), AutoDrafter(None, memory=memory)
    greedy.begin([1, 2, 3], SamplingParams())
    sampled.begin([1, 2, 3], SamplingParams(temperature=1.0))
    assert greedy.model_accept is not sampled.model_accept and greedy.lookup_accept is not sampled.lookup_accept
    assert greedy.fwd is sampled.fwd and greedy.catchup is sampled.catchup  # times are the machine's
    again = AutoDrafter(None, memory=memory)
    again.begin([1, 2, 3], SamplingParams())
    assert again.model_accept is greedy.model_accept and again.lookup_accept is greedy.lookup_accept


class SlowReader:
    """A drafter (the ``Drafter`` protocol) that reads new tokens at ``per_token`` seconds each
    and feeds one token in ``feed_s``: a stand-in for llama.cpp's prompt and token evaluation."""

    def __init__(self, inner, per_token, feed_s):
        self.inner, self.per_token, self.feed_s = inner, per_token, feed_s

    def reset(self, capacity):
        self.inner.reset(capacity)

    def logits_after(self, tokens):
        time.sleep(self.per_token * (len(tokens) - len(self.inner.cached)))
        return self.inner.logits_after(tokens)

    def feed(self, token):
        time.sleep(self.feed_s)
        return self.inner.feed(token)

    def score(self, tokens, chain):
        return self.inner.score(tokens, chain)

    def truncate(self, n):
        self.inner.truncate(n)


def test_draft_model_timing_splits_drafting_from_catch_up(target, drafter_model):
    """A draft-model proposer reports its first call (the read) and its feeds, so auto learns
    both costs from its first proposal, catch-up included."""
    from paradec.models.drafter import HFDrafter

    p = _long_prompt(120)
    ref = run(target, NoDraft(), p)[0]
    slow = SlowReader(HFDrafter(drafter_model), per_token=0.003, feed_s=0.01)
    model = DraftModelProposer(slow, VOCAB, DraftModelConfig(max_len=4, min_len=4, min_confidence=0.0))
    auto = AutoDrafter(model, AutoConfig(explore_every=1000))
    out, _ = run(target, auto, p, n=6)
    assert out == ref[:6]
    assert auto.choices["model"] >= 1
    assert 0.002 < auto.catchup.value < 0.006  # 3 ms a token read
    # drafting: three feeds and one more one-token call, about 10 ms each
    assert 0.03 < auto.model_cost.value < 0.08


def test_a_step_without_a_proposal_teaches_nothing(target, reference):
    """The loop does not propose when no draft fits (the last token of a request); that step's
    time must not be taken for a one-token forward, nor its empty draft for the model's."""
    p = PROMPTS[3]
    ref = reference[tuple(p)]
    model = Scripted(ref, len(p), good=True, k=6)
    auto = AutoDrafter(model)
    out, stats = run(target, auto, p, n=8)  # 7 tokens from the first step, then 1 with no room
    assert out == ref[:8] and stats.forwards == 2
    assert model.calls == 1
    assert set(auto.fwd) == {size_bucket(7)}
    assert auto.model_accept.value == 6


def test_auto_picks_its_model_drafter_by_dtype_and_what_is_shipped(monkeypatch):
    """Without a draft model: the shipped head where verification is nearly free (bf16/fp16,
    GPUs), else the target's GGUF through llama.cpp, else none; a missing head is looked up once."""
    import torch

    import paradec.proposers as P

    f32 = Models(HFCausalLM(tiny_llama(0, vocab=VOCAB).float()), gguf_path="model.gguf")
    bf16 = Models(HFCausalLM(tiny_llama(0, vocab=VOCAB).to(torch.bfloat16)), gguf_path="model.gguf")
    calls = []

    def no_head(models, name):
        calls.append(name)
        raise P.ParadecError("no trained head for this model")

    monkeypatch.setattr(P, "_shipped_head", no_head)
    assert P._auto_model(f32, True) == "qdraft" and calls == []  # float32: never the head
    assert P._auto_model(bf16, True) == "qdraft" and calls == ["auto"]
    assert P._auto_model(bf16, False) == "none" and calls == ["auto"]  # the miss is remembered
    monkeypatch.setattr(P, "_shipped_head", lambda models, name: object())
    fresh = Models(bf16.target, gguf_path="model.gguf")
    assert P._auto_model(fresh, True) == "head"
    assert P._auto_model(Models(f32.target, draft=f32.target), True) == "draft"
