"""``auto``: every step, the draft with the most expected tokens per second, or none.

Candidates
- ``lookup``: the suffix-automaton draft (``suffix``), almost free to build, good when the text
  repeats (edits, code, summaries, RAG);
- ``model``: a model drafter when one pays on this machine: a given draft model (``draft``),
  the target's own GGUF run by llama.cpp (``qdraft``), or a trained head (``head``, which reads
  every verifying forward's hidden states and so never has to catch up); good on fresh text;
- ``none``: plain decoding.

Cost model, learned online from the request itself (nothing is hard-coded per machine):
- ``f(k)``: target forward time for k input tokens, an exponential moving average per size
  bucket (1, 2-3, 4-7, ... tokens) *and context class* (under 128 tokens of context, then
  each doubling), measured as the time between the end of ``propose`` and ``observe`` (forward
  + verify + rollback). The context matters: every draft token attends to the whole context,
  so a big tree costs more, relative to one token, after a long prompt than after a short one
  (measured in docs/benchmarks.md, "Figures the code's comments rely on"); one table for both
  drafted too little on short contexts and too much on long ones. Unmeasured sizes are
  extrapolated from the nearest measured one of the same class with a conservative growth per
  doubling (a class with no measurement yet borrows the nearest class's table); a size's
  estimate never exceeds that of a larger measured size (a stale high estimate would otherwise
  keep the size from ever being sent, and so from ever being measured again), and one
  observation may at most double an estimate (a garbage-collector pause is not the forward's
  cost);
- ``d_c``: drafting time of candidate c (moving average of its measured ``propose`` time; for the
  model drafter without catching up on a prompt or on tokens the lookup committed, which is
  not what a drafting step costs; until measured it counts as free);
- ``u``: the model drafter's catch-up time per token: a model drafter has its own cache, and
  before it drafts it must read every token committed since it last ran (the whole prompt, at
  first). A draft-model proposer reports how long its first call (the read) and its one-token
  feeds took, which splits every proposal exactly into ``d`` and ``u`` per pending token; for
  other model drafters, proposals right after the model's own step give ``d`` and the time of
  others beyond ``d`` gives ``u``. Switching to the model with P tokens pending costs ``u * P`` once, and pays
  only if the request goes on long enough, which nobody knows (an answer may end at the next
  EOS). ``auto`` decides it as in ski rental: the catch-up is spread over the tokens this request
  has generated so far (at least ``min_horizon``, at most the tokens left), so it switches once
  the time the model would have saved so far exceeds what the switch costs. A long prompt (RAG,
  summarization: 400+ tokens) keeps ``auto`` on the lookup; a short one switches within a few
  tokens;
- ``a_c``: expected accepted tokens of candidate c. For the lookup draft it is kept per suffix
  match-length bucket *and per tree size* and updated *every* step, also when the draft was
  not used: the committed tokens show how much of it the target would have accepted (a
  counterfactual that is exact under greedy decoding when the tree diverges within the committed
  tokens; when it spells all of them it might have gone on, and that lower bound may only raise
  the estimate). The model drafter's is updated when it runs.
The expected rate of c is ``(a_c + 1) / (d_c + f(n_c + 1))`` against ``1 / f(1)`` for plain
decoding, with the model's catch-up added to its ``d`` as above; the best one drafts (ties go to
the cheaper). When the model drafter has not run for ``explore_every`` steps it runs once, so a
change in the text is noticed, but only when its catch-up is cheap (at most ``explore_share``
of the time since it last ran): exploring must not cost a prefill of a long prompt.

The cost model is kept across requests: ``make_proposer`` gives every ``auto`` on the same
models one ``AutoMemory`` (forward times, drafting and catch-up costs, acceptances), so a
request starts from what earlier ones measured instead of paying to learn it again.

Tree size from the roofline: the lookup builds its tree best-first (most probable nodes first)
up to ``max_nodes``, so its first n nodes are the best tree of n nodes. ``auto`` scores the
sizes n = 1, 2, 4, ... by the same rate, with ``a(n)`` from the counterfactual of the n-node
prefix tree and ``f(n + 1)`` from the measured forward times, and sends the best size: big
trees where verification is nearly free (a flat roofline), small ones where every extra token
costs. Every ``explore_every`` lookup steps it sends the whole tree, so the acceptance of big
trees is not underestimated forever by censoring.

Under a grammar (structured output) the loop adds the grammar's forced tokens to whatever is
drafted, so they are free accepted draft: with F forced tokens after the root, plain decoding
is rated ``(F + 1) / f(F + 1)`` and a lookup tree of n nodes ``(max(a(n), F) + 1) / (d +
f(n + F + 1))`` (the rates a head that rides the forward is weighed against). The lookup's tree
is sent whenever it has one, sized as ``suffix`` sizes its own (a budget and a depth growing
with the match), not by the cost model: the grammar prunes the nodes it rejects before the
forward, and its tokens follow every right branch, which the counterfactual acceptance does
not see (on the structured suite the cost model's size was slower than the whole tree, and the
whole tree slower than ``suffix``'s size). A
model drafter that must catch up (a draft model, ``qdraft``) does not run under a grammar:
constrained answers are short and the prompt it would have to read first is seldom paid back
(``auto`` with it was slower than ``suffix`` on the structured suite); one that rides the
verifying forward (a head) is weighed as usual. ``qdraft`` is loaded on first use
(``LazyModel``), so a request that never runs it does not pay its loading either.

The choice depends only on past steps (and the grammar's state after the committed tokens),
never on the verifier's coins, so verification stays exactly lossless, greedy and sampled alike.

The measurements behind these choices (a prompt's read time, the structured suite's runs) are in
docs/benchmarks.md, "Figures the code's comments rely on".

Bounded state: the lookup's index holds at most ``max_tokens`` tokens (``suffix``'s eviction);
the cost model (``AutoMemory``) is a handful of moving averages per size and match-length bucket
(a few dozen numbers); the model drafter's cache is bounded by the model's context window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..sampling import SamplingParams
from ..tree import DraftTree
from .base import FusedProposer, ProposeContext, Proposer, StepResult, TimedProposer
from .suffix import SuffixConfig, SuffixDrafter

_SUFFIX = SuffixConfig()  # under a grammar the lookup's tree is sized as `suffix` sizes its own
MODEL_CHOICES = ("auto", "none", "qdraft", "draft", "head")


@dataclass(frozen=True)
class AutoConfig:
    model: str = "auto"  # model drafter: auto (draft model; else in bf16/fp16/GPU the shipped head; else qdraft via llama.cpp), none, qdraft, draft, head
    ema: float = 0.25  # weight of the newest observation in every moving average
    explore_every: int = 24  # run the model drafter at least once per this many steps
    prior_accept: float = 2.0  # model drafter's expected accepted tokens before it has run
    growth: float = 1.25  # assumed forward-time growth per doubling of unmeasured sizes
    max_tokens: int = 1 << 16  # tokens the lookup's suffix index holds at most (older ones evicted)
    max_nodes: int = 48  # largest lookup tree built; the size sent is chosen by the cost model
    explore_share: float = 0.2  # exploring the model may cost (catch-up) this share of the time since it ran
    min_horizon: int = 16  # a model catch-up is spread over max(this, tokens generated so far), at most the tokens left

    def __post_init__(self) -> None:
        if self.model not in MODEL_CHOICES:
            raise ValueError(f"auto model must be one of {', '.join(MODEL_CHOICES)}")
        if not 0.0 < self.ema <= 1.0:
            raise ValueError("auto ema must be in (0, 1]")
        if self.explore_every < 1:
            raise ValueError("auto explore_every must be >= 1")
        if self.growth < 1.0 or self.prior_accept < 0:
            raise ValueError("auto growth must be >= 1 and prior_accept >= 0")
        if self.max_tokens < 16:
            raise ValueError("auto max_tokens must be >= 16")
        if self.max_nodes < 1:
            raise ValueError("auto max_nodes must be >= 1")
        if self.explore_share < 0 or self.min_horizon < 1:
            raise ValueError("auto explore_share must be >= 0 and min_horizon >= 1")


_CATCHUP_FREE = 2  # pending tokens read within an ordinary drafting step (the root, the bonus)
_CATCHUP_MIN = 8  # catch-ups shorter than this are too noisy to learn the per-token rate from


def size_bucket(k: int) -> int:
    return max(1, k).bit_length()  # 1 | 2-3 | 4-7 | 8-15 | ...


def context_class(n: int) -> int:
    """Forward times are kept apart per class of context length: under 128 tokens, 128-255,
    256-511, ... (attention's share of a forward grows with the context)."""
    return max(n, 127).bit_length()


_CLIP = 2.0  # one observation may raise a forward-time estimate at most this many times


def _match_bucket(match_len: int) -> int:
    return min(match_len, 12)


class Ema:
    def __init__(self, weight: float) -> None:
        self.w, self.value = weight, None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else (1 - self.w) * self.value + self.w * x

    def get(self, default: float) -> float:
        return default if self.value is None else self.value


class AutoMemory:
    """What ``auto`` has learned about this machine and these models, kept across requests.
    Times are shared by all requests; acceptances are kept apart for greedy and sampled ones
    (sampling accepts fewer draft tokens)."""

    def __init__(self, ema: float) -> None:
        self.ema = ema
        self.fwd_by_context: dict[int, dict[int, Ema]] = {}  # context class -> size bucket -> forward seconds
        self.lookup_cost = Ema(ema)  # seconds per lookup proposal
        self.model_cost = Ema(ema)  # seconds per model draft, caught up
        self.catchup = Ema(ema)  # seconds per token the model drafter reads to catch up
        self.model_nodes = Ema(ema)
        self._accept: dict[bool, tuple[Ema, dict[tuple[int, int], Ema]]] = {}

    def forward_table(self, context_class: int) -> dict[int, Ema]:
        """The forward times (size bucket -> seconds) after a context of this class."""
        return self.fwd_by_context.setdefault(context_class, {})

    def nearest_table(self, context_class: int) -> dict[int, Ema]:
        """The measured table of the class nearest ``context_class`` ({} when none is)."""
        known = [c for c, t in self.fwd_by_context.items() if t]
        return self.fwd_by_context[min(known, key=lambda c: (abs(c - context_class), c))] if known else {}

    def acceptance(self, greedy: bool) -> tuple[Ema, dict[tuple[int, int], Ema]]:
        """(the model drafter's accepted tokens, the lookup's per (match bucket, tree size)) for
        greedy or sampled requests."""
        if greedy not in self._accept:
            self._accept[greedy] = (Ema(self.ema), {})
        return self._accept[greedy]


class LazyModel:
    """A model drafter built on first use (loading one, the target's GGUF through llama.cpp,
    takes seconds; ``auto`` under a grammar, or on a long prompt, may never run it). Until then
    it only remembers ``begin``; afterwards it is the drafter itself."""

    def __init__(self, make, name: str = "model") -> None:
        self._make, self._inner, self._begun, self.name = make, None, None, name

    @property
    def built(self) -> bool:
        return self._inner is not None

    def build(self) -> Proposer:
        if self._inner is None:
            self._inner = self._make()
            if self._begun is not None:  # the request it joins: it catches up on the rest itself
                self._inner.begin(*self._begun)
        return self._inner

    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        if self._inner is None:
            self._begun = (list(prompt), sampling)
        else:
            self._inner.begin(prompt, sampling)

    def propose(self, ctx: ProposeContext) -> DraftTree:
        return self.build().propose(ctx)

    def observe(self, result: StepResult) -> None:
        if self._inner is not None:
            self._inner.observe(result)

    @property
    def last_times(self) -> tuple[float, float, int] | None:
        """The built drafter's timing report (``TimedProposer``), None before it is built or
        when it reports none."""
        return self._inner.last_times if isinstance(self._inner, TimedProposer) else None


class AutoDrafter:
    name = "auto"

    def __init__(
        self, model: Proposer | None = None, config: AutoConfig | None = None, memory: AutoMemory | None = None
    ) -> None:
        self.config = c = config or AutoConfig()
        # generous caps: the lookup offers a big best-first tree and the cost model cuts it
        self.lookup = SuffixDrafter(
            SuffixConfig(max_tokens=c.max_tokens, max_nodes=c.max_nodes, match_alpha=2.0 * c.max_nodes, depth_alpha=4.0)
        )
        self.model = model
        # a drafter that reads the target's verifying forward (a trained head) sees every
        # forward, whoever drafted: it never falls behind, so it has nothing to catch up on
        self._rides_forward = isinstance(model, FusedProposer)
        if self._rides_forward:
            self.fused_forward = model.fused_forward
        self.memory = m = memory if memory is not None else AutoMemory(c.ema)
        # the learned cost model, shared with every auto given the same memory
        self.lookup_cost, self.model_cost, self.catchup = m.lookup_cost, m.model_cost, m.catchup
        self._context = context_class(0)  # the current context's class (set by every propose)
        self.model_nodes = m.model_nodes
        self.model_accept, self.lookup_accept = m.acceptance(True)  # until begin() says otherwise
        self.lookup_sizes: dict[int, int] = {}  # tree size sent -> steps (this request)
        self.choices = {"lookup": 0, "model": 0, "none": 0}  # steps per choice in this request
        self._reset_step()

    def _reset_step(self) -> None:
        self._choice = self._choice_before = "none"
        self._lookup_tree = DraftTree()
        self._bucket = 0
        self._t_proposed = 0.0
        self._since_model = 0
        self._lookup_steps = 0
        self._constrained = False  # the last proposal was under a grammar
        self._model_seen = 0  # tokens of this request the model drafter has read
        self._t_model = time.perf_counter()  # when the model drafter last ran (or the request began)

    # ---- the cost model ------------------------------------------------------------------------
    @property
    def fwd(self) -> dict[int, Ema]:
        """The forward times (size bucket -> seconds) of the current context's class."""
        return self.memory.forward_table(self._context)

    def forward_time(self, k: int) -> float:
        """Estimated seconds of one target forward over ``k`` tokens after the current context."""
        b = size_bucket(k)
        table = self.fwd
        if not any(e.value is not None for e in table.values()):
            table = self.memory.nearest_table(self._context)
        known = sorted(x for x, e in table.items() if e.value is not None)
        if not known:
            return 0.05 * self.config.growth ** (b - 1)  # any positive prior; replaced after one step
        if b in known:
            est = table[b].value
        else:
            below = [x for x in known if x < b]
            ref = below[-1] if below else known[0]
            est = table[ref].value * self.config.growth ** (b - ref)
        above = [table[x].value for x in known if x > b]
        return min([est] + above)  # never above a larger measured size

    def _rate(self, accepted: float, draft_s: float, nodes: int) -> float:
        return (accepted + 1.0) / max(draft_s + self.forward_time(nodes + 1), 1e-6)

    def catch_up_time(self, pending: int) -> float:
        """Estimated seconds for the model drafter to read ``pending`` tokens before drafting
        (0 until measured; a token or two are part of every drafting step)."""
        return self.catchup.get(0.0) * max(0, pending - _CATCHUP_FREE)

    def model_rate(self, catch_s: float, generated: int, remaining: int) -> float:
        """Expected tokens/s of a model step, its catch-up ``catch_s`` spread over the model steps
        of max(``generated``, ``min_horizon``) tokens, at most the ``remaining`` ones (ski rental:
        see the module docstring)."""
        accepted = self.model_accept.get(self.config.prior_accept)
        horizon = min(max(generated, self.config.min_horizon), remaining)
        steps = max(1.0, horizon / (accepted + 1.0))
        nodes = max(1, round(self.model_nodes.get(4.0)))
        return self._rate(accepted, self.model_cost.get(0.0) + catch_s / steps, nodes)

    @staticmethod
    def sizes(n: int) -> list[int]:
        """Tree sizes scored for a tree of ``n`` nodes: 1, 2, 4, ... and ``n`` itself."""
        out, k = [], 1
        while k < n:
            out.append(k)
            k *= 2
        return out + [n] if n else []

    def lookup_acceptance(self, bucket: int, size: int) -> float:
        """Expected accepted tokens of the ``size``-node lookup tree at match bucket ``bucket``:
        the learned value, else that of the largest smaller size learned, else 1 (a prior)."""
        e = self.lookup_accept.get((bucket, size))
        if e is not None and e.value is not None:
            return e.value
        known = [k for (b, k), v in self.lookup_accept.items() if b == bucket and k < size and v.value is not None]
        return self.lookup_accept[(bucket, max(known))].value if known else 1.0

    def best_lookup_size(
        self, tree: DraftTree, bucket: int, draft_s: float, forced: int = 0, sizes: list[int] | None = None
    ) -> tuple[int, float]:
        """The tree size with the highest expected tokens/s (among ``sizes``, default
        ``sizes(len(tree))``), and that rate. ``forced``: tokens the grammar forces after the
        root, drafted anyway (free accepted tokens, at most that many more nodes in the forward)."""
        best, best_rate = 0, 0.0
        for n in self.sizes(len(tree)) if sizes is None else sizes:
            accepted = max(min(self.lookup_acceptance(bucket, n), tree.truncated(n).depth), forced)
            r = self._rate(accepted, draft_s, n + forced)
            if r > best_rate * 1.0001:  # ties go to the smaller tree
                best, best_rate = n, r
        return best, best_rate

    def _learn_model_costs(self, seconds: float, pending: int) -> None:
        """Split a model proposal's ``seconds`` into drafting and catching up on ``pending`` tokens.

        A drafter that reports its timing (``last_times``: its first call, which reads the new
        tokens, then one-token feeds) is split exactly: drafting = the feeds plus one more, and
        the first call beyond one feed is catch-up. Otherwise only a proposal right after the
        model's own step (nothing to catch up on) counts as drafting, and the time of others
        beyond that, per pending token, as catch-up."""
        drafting, extra = None, None  # this proposal's drafting time; its time beyond drafting
        times = self.model.last_times if isinstance(self.model, TimedProposer) else None
        if times is not None and times[1] > 0:
            first, total, feeds = times
            one = (total - first) / feeds if feeds else (first if pending <= _CATCHUP_FREE else None)
            if one is not None:
                drafting = total - first + one
            extra = total - (drafting if drafting is not None else self.model_cost.get(0.0))
        elif self._choice_before == "model":
            drafting = seconds
        else:
            extra = seconds - self.model_cost.get(0.0)
        if drafting is not None:
            self.model_cost.add(drafting)
        if extra is not None and pending > _CATCHUP_MIN:
            self.catchup.add(max(0.0, extra) / (pending - _CATCHUP_FREE))

    # ---- the proposer protocol -------------------------------------------------------------------
    def begin(self, prompt: list[int], sampling: SamplingParams) -> None:
        self.model_accept, self.lookup_accept = self.memory.acceptance(sampling.greedy)
        self.lookup.begin(prompt, sampling)
        if self.model is not None:
            self.model.begin(prompt, sampling)
        self.choices = {"lookup": 0, "model": 0, "none": 0}
        self.lookup_sizes = {}
        self._reset_step()
        self._since_model = self.config.explore_every  # try the model drafter early on

    def propose(self, ctx: ProposeContext) -> DraftTree:
        c = self.config
        t0 = time.perf_counter()
        self._context = context_class(len(ctx.tokens))
        # under a grammar the tree is built at `suffix`'s size (see below), not at the cost model's
        tree = self.lookup.propose(ctx, _SUFFIX if ctx.forced is not None else None)
        self.lookup_cost.add(time.perf_counter() - t0)
        self._lookup_tree = tree
        self._bucket = _match_bucket(self.lookup.last_match)

        # under a grammar its forced tokens are drafted for free whatever auto sends: "none" is
        # then those tokens alone, and the lookup pays only where it spells more than they do
        forced = len(ctx.forced or ())
        best, best_rate = "none", (forced + 1.0) / max(self.forward_time(forced + 1), 1e-6)
        size = 0
        if len(tree) and ctx.forced is not None:
            # Under a grammar the lookup's tree goes whole, built as `suffix` sizes its own (a node
            # budget and a depth cap growing with the match), not sized by the cost model: the
            # nodes the grammar rejects are pruned before the forward (they cost no slot), and a
            # right branch is followed by the grammar's tokens after it (``0,`` then the next
            # key), which the counterfactual acceptance does not see. Measured on the structured
            # suite: the cost model's size was 2-4% slower than auto's whole (48-node budget)
            # tree, and that tree 3-5% slower than `suffix`'s size (its extra nodes were seldom
            # accepted).
            size = len(tree)
            best, best_rate = "lookup", self.best_lookup_size(tree, self._bucket, self.lookup_cost.get(0.0), forced, [size])[1]
        elif len(tree):
            size, r = self.best_lookup_size(tree, self._bucket, self.lookup_cost.get(0.0), forced)
            if r > best_rate:
                best, best_rate = "lookup", r
        # tokens the model drafter must read first
        pending = 0 if self._rides_forward else len(ctx.tokens) - self._model_seen
        # Under a grammar the model drafter runs only when it has nothing to catch up on (it
        # rides the verifying forward): constrained answers are short (20-80 tokens on the
        # structured suite), the grammar's forced tokens and the lookup carry their predictable
        # part, and reading the prompt into the model drafter's cache is seldom paid back.
        if self.model is not None and (ctx.forced is None or self._rides_forward):
            catch_s = self.catch_up_time(pending)
            if self._since_model >= c.explore_every and catch_s <= c.explore_share * (t0 - self._t_model):
                best = "model"
            else:
                r = self.model_rate(catch_s, len(ctx.tokens) - ctx.n_prompt, ctx.max_depth + 1)
                if r > best_rate:
                    best, best_rate = "model", r

        self._constrained = ctx.forced is not None
        self._choice_before, self._choice = self._choice, best
        self.choices[best] += 1
        if best == "model":
            self._since_model = 0
            if isinstance(self.model, LazyModel):
                self.model.build()  # its loading is no drafting cost
            t1 = time.perf_counter()
            draft = self.model.propose(ctx)
            self._t_model = time.perf_counter()
            self._learn_model_costs(self._t_model - t1, pending)
            self.model_nodes.add(len(draft))
        else:
            self._since_model += 1
            draft = DraftTree()
            if best == "lookup":
                self._lookup_steps += 1
                if self._lookup_steps % c.explore_every and size < len(tree):  # else: the whole tree, to uncensor
                    draft = tree.truncated(size)
                else:
                    draft = tree
                self.lookup_sizes[len(draft)] = self.lookup_sizes.get(len(draft), 0) + 1
        self._t_proposed = time.perf_counter()
        return draft

    def observe(self, result: StepResult) -> None:
        c = self.config
        if not self._t_proposed:
            # The loop skips proposing when no draft fits (the last token of a request): this
            # step's timing and choice are not ours to learn from.
            self._choice = "none"
            self.lookup.observe(result)
            if self._rides_forward:
                self.model.observe(result)
            return
        elapsed = time.perf_counter() - self._t_proposed
        self._t_proposed = 0.0
        b = size_bucket(len(result.draft) + 1)
        e = self.fwd.setdefault(b, Ema(c.ema))
        e.add(elapsed if e.value is None else min(elapsed, _CLIP * e.value))

        new = result.verdict.tokens  # accepted + the target's own token
        tree = self._lookup_tree
        # Under a grammar the lookup's acceptance is not learned: the committed tokens hold the
        # grammar's forced runs, which a tree may spell without having predicted anything, and
        # the shared memory would carry that into unconstrained requests (and sizes are not
        # chosen by it under a grammar anyway).
        for n in () if self._constrained else self.sizes(len(tree)):  # what the target would have accepted of each size
            seen = tree.truncated(n).match_length(new)
            e = self.lookup_accept.setdefault((self._bucket, n), Ema(c.ema))
            # A tree that spelled every committed token might have gone on (censored): such a
            # lower bound may only raise the estimate. Exact observations always count.
            if seen < len(new) or e.value is None or seen > e.value:
                e.add(seen)
        if self._choice == "model":
            # it has read everything but the new root (the accepted draft tokens included)
            self._model_seen = len(result.tokens) - 1
            self.model_accept.add(len(result.verdict.accepted))
        if self._choice == "model" or self._rides_forward:
            self.model.observe(result)
        self.lookup.observe(result)
