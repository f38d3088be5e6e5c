"""The decode loop's fast paths under a constraint: greedy verification computes the masks of
the rows on its path only and masks only the rows whose own argmax the grammar rules out (the
same verdict as masking every row), and ``auto`` under a grammar drafts with the lookup plus the
grammar's forced tokens."""

from __future__ import annotations

import pytest
import torch
from helpers.structured import EOS, FORMATS, VOCAB, constraint

from paradec.structured import Guide, masks
from paradec.tree import DraftTree
from paradec.verify import verify_greedy_best

PAD = 3  # a second end-of-sequence token of the model (follows the grammar's EOS)


@pytest.fixture(scope="module")
def constraints():
    return {k: constraint(f) for k, f in FORMATS.items()}


def _path_rows(tree: DraftTree, best: list[int]) -> list[int]:
    """The rows greedy verification reads given ``best``: the root, then each accepted node's."""
    v = verify_greedy_best(tree, best)
    return [0] + [i + 1 for i in v.accepted]


@pytest.mark.parametrize("with_masks", [True, False], ids=["masks-when-shaped", "masks-on-the-path"])
def test_greedy_best_gives_the_verdict_of_every_masked_row(constraints, with_masks):
    g = torch.Generator().manual_seed(0)
    fast = slow = other_eos = deep = 0
    for k, c in constraints.items():
        guide = Guide(c, frozenset({EOS, PAD}))
        for _ in range(24):
            tokens = torch.randint(4, VOCAB, (6,), generator=g).tolist()
            tree = guide.shape(DraftTree(tuple(tokens), (-1, 0, 1, -1, 3, 0)), 16, 16, with_masks)
            assert (guide.shaped.rows is None) == (not with_masks)
            n = len(tree) + 1
            logits = torch.randn(n, VOCAB, generator=g, dtype=torch.float32)
            allow = masks.unpack(guide.rows(), VOCAB)  # every row's mask (computed now when shaped without)
            kids = tree.children()
            for i in range(n):
                ok = allow[i].nonzero().flatten().tolist()
                r = float(torch.rand((), generator=g))
                if r < 0.3 and kids[i]:  # a child's token on top: verification goes down (if allowed)
                    logits[i, tree.tokens[kids[i][int(torch.randint(len(kids[i]), (), generator=g))]]] = 9.0
                elif r < 0.5 and ok:  # the row's own argmax is allowed
                    logits[i, ok[int(torch.randint(len(ok), (), generator=g))]] = 9.0
                elif r < 0.65:  # the model's other EOS on top
                    logits[i, PAD] = 9.0
                elif r < 0.8 and ok:  # a tie between a ruled-out token and an allowed one after it
                    bad = [t for t in range(VOCAB) if t not in ok and t < ok[-1]]
                    if bad:
                        logits[i, bad[0]] = logits[i, ok[-1]] = 9.0
            want = guide.mask(logits).argmax(-1).tolist()
            got = guide.greedy_best(logits)
            assert verify_greedy_best(tree, got) == verify_greedy_best(tree, want), f"{k}: greedy verdict differs"
            path = _path_rows(tree, want)
            assert [got[i] for i in path] == [want[i] for i in path], f"{k}: a row on the path differs"
            raw = logits.argmax(-1).tolist()
            fast += sum(1 for i in path if raw[i] == want[i])
            slow += sum(1 for i in path if raw[i] != want[i])
            other_eos += sum(1 for i in path if raw[i] == PAD)
            deep += len(path) > 2
            step = [want[0]]
            guide.advance(step)
            if guide.complete or step[0] in (EOS, PAD):
                guide = Guide(c, frozenset({EOS, PAD}))
    # every path ran: rows kept unmasked, rows whose raw argmax the grammar rules out, the
    # model's other EOS, and paths that went two nodes down or more
    assert fast > 20 and slow > 20 and other_eos > 5 and deep > 5, (fast, slow, other_eos, deep)


def test_greedy_walk_leaves_the_matcher_at_the_root(constraints):
    """After greedy_best (which walks the matcher down the path) the guide's state is the
    committed one: the next masks and forced tokens are those of the root."""
    c = constraints["schema-record"]
    a, b = Guide(c, frozenset({EOS})), Guide(c, frozenset({EOS}))
    for guide in (a, b):
        guide.shape(DraftTree(), 8, 8, with_masks=False)
    logits = torch.randn(len(a.shaped.tree) + 1, VOCAB, generator=torch.Generator().manual_seed(3))
    best = a.greedy_best(logits)  # the forced chain: the walk goes all the way down
    assert len(_path_rows(a.shaped.tree, best)) == len(a.shaped.tree) + 1
    assert a.forced() == b.forced() and a.shape(DraftTree(), 8, 8).tokens == b.shape(DraftTree(), 8, 8).tokens
    assert torch.equal(a.rows(), b.rows())


def test_rows_whose_mask_allows_one_token_read_no_logits(constraints):
    """A path row whose mask allows one token (the grammar forces it) is decided by the mask: its
    logits may be anything, NaN included; the other rows are read as before."""
    c = constraints["schema-record"]
    guide = Guide(c, frozenset({EOS}))
    guide.shape(DraftTree(), 8, 8)  # the forced chain from the start
    rows = guide.rows()
    single = [i for i in range(rows.shape[0]) if masks.only_numpy(rows[i].numpy()) is not None]
    assert single and len(single) < rows.shape[0] + 1
    logits = torch.randn(rows.shape[0], VOCAB, generator=torch.Generator().manual_seed(5))
    want = guide.greedy_best(logits)
    logits[single] = float("nan")
    assert guide.greedy_best(logits) == want
    assert [want[i] for i in single] == [masks.only_numpy(rows[i].numpy()) for i in single]


def test_only_numpy():
    row = masks.new_rows(1, 100)[0].numpy()
    assert masks.only_numpy(row) is None  # none allowed
    row[2] = -(1 << 31)  # token 95 (the sign bit of an int32 word)
    assert masks.only_numpy(row) == 95
    row[0] = 1 << 4
    assert masks.only_numpy(row) is None  # two
    row[2] = 0
    assert masks.only_numpy(row) == 4
    row[0] = 0b11000
    assert masks.only_numpy(row) is None  # two in one word


def test_greedy_best_on_bfloat16_and_wide_logits(constraints):
    """Rows wider than the bitmask (tokens past it are never allowed) and a dtype numpy lacks."""
    c = constraints["schema-record"]
    guide = Guide(c, frozenset({EOS}))
    guide.shape(DraftTree(), 8, 8)
    width = 32 * guide.shaped.rows.shape[1] + 5
    for dtype in (torch.bfloat16, torch.float64):
        logits = torch.randn(len(guide.shaped.tree) + 1, width, generator=torch.Generator().manual_seed(1)).to(dtype)
        logits[:, width - 1] = 50.0  # past the bitmask: must never win
        assert guide.greedy_best(logits) == guide.mask(logits).argmax(-1).tolist()
        assert width - 1 not in guide.greedy_best(logits)


# ---- auto under a grammar ------------------------------------------------------------------
class CountingModel:
    """A model drafter stand-in that proposes a fixed chain and counts its calls."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def begin(self, prompt, sampling):
        pass

    def propose(self, ctx):
        self.calls += 1
        return DraftTree.chain([10, 11, 12])

    def observe(self, result):
        pass


def _auto_choice(forced, accept=None, forward_time=lambda k: 0.040 + 0.004 * k):
    from paradec.proposers.auto import AutoDrafter, Ema
    from paradec.proposers.base import ProposeContext
    from paradec.sampling import SamplingParams

    prompt = [5, 6, 7, 8, 9] * 4 + [5, 6]
    auto = AutoDrafter()
    auto.begin(prompt, SamplingParams())
    auto.forward_time = forward_time
    for b in range(13):
        for n, a in (accept or {}).items():
            e = Ema(1.0)
            e.add(a)
            auto.lookup_accept[(b, n)] = e
    draft = auto.propose(ProposeContext(list(prompt), 10, 16, 16, SamplingParams(), None, forced))
    assert len(auto._lookup_tree) > 1  # the lookup had a tree to offer
    (choice,) = [k for k, v in auto.choices.items() if v]
    return choice, draft, auto


LOW = {1: 0.2, 2: 0.2, 4: 0.2, 8: 0.2, 16: 0.2}  # a lookup that seldom pays
STEEP = lambda k: 0.010 * k  # noqa: E731 - every input token costs as much as the first


def test_auto_under_a_grammar_sends_the_whole_lookup_tree():
    # unconstrained, on a steep roofline, a lookup that seldom pays is not sent
    assert _auto_choice(None, LOW, STEEP)[0] == "none"
    # under a grammar the same lookup goes whole, forced tokens at the root or not
    for forced in ((), (40, 41, 42, 43)):
        choice, draft, auto = _auto_choice(forced, LOW, STEEP)
        assert choice == "lookup" and draft == auto._lookup_tree


def test_auto_learns_no_lookup_acceptance_under_a_grammar(constraints):
    """Constrained steps commit the grammar's forced runs, which a lookup tree may spell without
    predicting anything: they must not teach the shared memory (unconstrained requests size
    their trees by it). The control: the same requests unconstrained do teach it."""
    from helpers.tiny import tiny_llama
    from helpers.structured import PROMPTS, run

    from paradec.models.torch.hf import HFCausalLM
    from paradec.proposers.auto import AutoDrafter, AutoMemory

    jt = HFCausalLM(tiny_llama(0, vocab=VOCAB))
    learned = lambda mem: sum(1 for e in mem.acceptance(True)[1].values() if e.value is not None)  # noqa: E731
    mem = AutoMemory(0.25)
    for p in PROMPTS:
        run(jt, AutoDrafter(memory=mem), p, constraints["schema-record"])
    assert learned(mem) == 0
    for p in PROMPTS:
        run(jt, AutoDrafter(memory=mem), p, None)
    assert learned(mem) > 0


def test_auto_rates_count_forced_tokens_as_free_drafts():
    from paradec.proposers.auto import AutoDrafter

    auto = AutoDrafter()
    auto.forward_time = lambda k: 0.040 + 0.004 * k
    tree = DraftTree.chain([1, 2, 3, 4])
    # prior acceptance 1 per size; four forced tokens: max(1, 4) accepted, 4 more nodes
    n, r = auto.best_lookup_size(tree, 3, 0.0, forced=4)
    assert r == pytest.approx((4 + 1) / auto.forward_time(n + 4 + 1))
    assert auto.best_lookup_size(tree, 3, 0.0, forced=0, sizes=[4]) == (4, pytest.approx(2 / auto.forward_time(5)))


def test_auto_under_a_grammar_skips_a_model_drafter_it_would_catch_up(constraints):
    from helpers.tiny import tiny_llama
    from helpers.structured import PROMPTS, run

    from paradec.models.torch.hf import HFCausalLM
    from paradec.proposers.auto import AutoDrafter
    from paradec.proposers.base import NoDraft

    jt = HFCausalLM(tiny_llama(0, vocab=VOCAB))
    c = constraints["schema-record"]
    for p in PROMPTS:
        model = CountingModel()
        out, st = run(jt, AutoDrafter(model), p, c)
        assert out == run(jt, NoDraft(), p, c)[0]  # still constrained ar's output
        assert model.calls == 0
        assert st.forced_accepted > 0  # the grammar's forced tokens were drafted
    # the control: unconstrained, the same auto explores the model drafter at once
    model = CountingModel()
    run(jt, AutoDrafter(model), PROMPTS[0], None)
    assert model.calls > 0


def test_a_lazy_model_drafter_is_loaded_only_when_auto_runs_it(constraints):
    from helpers.tiny import tiny_llama
    from helpers.structured import PROMPTS, run

    from paradec.models.torch.hf import HFCausalLM
    from paradec.proposers.auto import AutoDrafter, LazyModel
    from paradec.proposers.base import NoDraft

    jt = HFCausalLM(tiny_llama(0, vocab=VOCAB))
    built = []
    make = lambda: built.append(CountingModel()) or built[-1]  # noqa: E731
    lazy = LazyModel(make, "counting")
    c = constraints["schema-list"]
    out, _ = run(jt, AutoDrafter(lazy), PROMPTS[1], c)
    assert out == run(jt, NoDraft(), PROMPTS[1], c)[0]
    assert built == [] and not lazy.built  # under a grammar: never loaded
    ref, _ = run(jt, NoDraft(), PROMPTS[1], None)
    out, _ = run(jt, AutoDrafter(lazy), PROMPTS[1], None)
    assert out == ref
    assert len(built) == 1 and built[0].calls > 0  # unconstrained: loaded once, then drafts


def test_compiled_constraints_are_reused_and_errors_are_not_cached():
    from helpers.structured import TOKENIZER

    from paradec.errors import ParadecError
    from paradec.structured import compile_constraint

    fmt = {"type": "regex", "regex": "[ab]{2,6}-[0-9]{1,3}"}
    a = compile_constraint(fmt, TOKENIZER, VOCAB)
    assert compile_constraint(dict(fmt), TOKENIZER, VOCAB) is a  # the same grammar: not re-checked
    assert compile_constraint(fmt, TOKENIZER, VOCAB + 8) is not a  # another vocabulary size
    assert compile_constraint({"type": "regex", "regex": "[ab]{2,7}"}, TOKENIZER, VOCAB) is not a
    for _ in range(2):  # a bad one raises every time
        with pytest.raises(ParadecError):
            compile_constraint({"type": "regex", "regex": "[ab"}, TOKENIZER, VOCAB)
