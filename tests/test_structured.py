"""Structured output on tiny models: greedy output under a constraint identical to constrained
``ar`` for every drafter (chains and trees), draft pruning and forced-token drafting on
hand-written grammars, EOS and length semantics, and one-line errors for bad constraints."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_llama
from helpers.structured import EOS, FORMATS, PROMPTS, TOKENIZER, VOCAB, constraint, run
from test_decode import RandomTree, _int8
from test_deer import random_adapter
from test_deer_fused import fused_model

from paradec.errors import ParadecError
from paradec.heads import new_head
from paradec.models.torch.hf import HFCausalLM
from paradec.proposers import Models, make_proposer
from paradec.proposers.base import NoDraft
from paradec.proposers.deer import DeerConfig, DeerProposer
from paradec.proposers.deer_fused import FusedDeer, FusedDeerConfig
from paradec.proposers.draft_model import DraftModelConfig, DraftModelProposer
from paradec.proposers.head import HeadConfig, HeadProposer
from paradec.proposers.qdraft import QDraftConfig, QuantizedSelfDraft
from paradec.structured import Guide, masks
from paradec.structured.draft import shape_draft
from paradec.tree import DraftTree


@pytest.fixture(scope="module")
def jt():
    """The tiny target of the JSON vocabulary."""
    return HFCausalLM(tiny_llama(0, vocab=VOCAB))


@pytest.fixture(scope="module")
def jdraft():
    return HFCausalLM(tiny_llama(7, vocab=VOCAB, layers=1))


@pytest.fixture(scope="module")
def constraints():
    return {k: constraint(f) for k, f in FORMATS.items()}


@pytest.fixture(scope="module")
def reference(jt, constraints):
    return {(k, tuple(p)): run(jt, NoDraft(), p, c)[0] for k, c in constraints.items() for p in PROMPTS}


def _models(t, d=None):
    return Models(t, d)


DRAFTERS = {
    "pld": lambda t, d: make_proposer("pld", _models(t)),
    "pld-tree": lambda t, d: make_proposer("pld", _models(t), {"branches": 4, "draft_len": 6, "max_nodes": 20}),
    "suffix": lambda t, d: make_proposer("suffix", _models(t)),
    "recycle": lambda t, d: make_proposer("recycle", _models(t)),
    "aded": lambda t, d: make_proposer("aded", _models(t)),
    "lookahead": lambda t, d: make_proposer("lookahead", _models(t)),
    "auto": lambda t, d: make_proposer("auto", _models(t)),
    "auto-draft": lambda t, d: make_proposer("auto", _models(t, d), {"model": "draft"}),
    "draft-chain": lambda t, d: DraftModelProposer(d, VOCAB, DraftModelConfig(min_confidence=0.0)),
    "draft-tree": lambda t, d: DraftModelProposer(d, VOCAB, DraftModelConfig(width=3, sibling_depth=3)),
    "qdraft": lambda t, d: QuantizedSelfDraft(_int8(0, VOCAB), VOCAB, QDraftConfig(backend="int8", lookup=12)),
    "random-tree": lambda t, d: RandomTree(seed=1, vocab=VOCAB),
    "deer": lambda t, d: DeerProposer(_cached("deer", lambda: random_adapter(t.model)), VOCAB, DeerConfig()),
    "deer-tree": lambda t, d: DeerProposer(_cached("deer", lambda: random_adapter(t.model)), VOCAB, DeerConfig(width=3, sibling_depth=2)),
    "deer-fused": lambda t, d: FusedDeer(_cached("fused", lambda: fused_model(t)), VOCAB, FusedDeerConfig()),
    "deer-fused-tree": lambda t, d: FusedDeer(_cached("fused", lambda: fused_model(t)), VOCAB, FusedDeerConfig(width=3, sibling_depth=2)),
    "head": lambda t, d: HeadProposer(_cached("head", lambda: _random_head(t)), HeadConfig()),
}
_CACHE: dict = {}


def _cached(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _random_head(t):
    torch.manual_seed(0)
    return new_head(t.model, torch.arange(VOCAB), intermediate=32).to(torch.float64).eval().requires_grad_(False)


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_identical_to_constrained_ar(name, jt, jdraft, constraints, reference):
    own_accepted = pruned = likely = 0
    for k, c in constraints.items():
        for p in PROMPTS:
            out, st = run(jt, DRAFTERS[name](jt, jdraft), p, c)
            assert out == reference[(k, tuple(p))], f"{name} diverged from constrained ar on {k}, prompt {p}"
            own_accepted += st.accepted - st.forced_accepted
            pruned += st.pruned_nodes
            likely += st.likely_tokens
    assert pruned > 0 or name in ("head",), f"{name}: no draft node was ever pruned (pruning not exercised)"
    assert likely > 0, f"{name}: no likely node (the forced bytes' spelling) was drafted"


def test_constrained_ar_output_matches_the_grammar(jt, constraints, reference):
    for (k, p), out in reference.items():
        m = constraints[k].matcher()
        body = out[:-1] if out and out[-1] == EOS else out
        assert m.consume_tokens(body), f"{k}: output rejected by its own grammar"
        _, st = run(jt, NoDraft(), list(p), constraints[k])
        assert st.incomplete == (not m.is_accepting())
        if st.stop_reason == "eos":
            assert m.is_accepting()
        else:
            assert st.stop_reason == "length"


def test_constrained_greedy_is_argmax_of_masked_logits(jt, constraints):
    """ar under a constraint = step by step argmax of the target's logits over allowed tokens."""
    c = constraints["schema-record"]
    p = PROMPTS[0]
    out, _ = run(jt, NoDraft(), p, c, n=12)
    m = c.matcher()
    seq = list(p)
    for t in out:
        rows = masks.new_rows(1, VOCAB)
        masks.fill(m, rows, 0)
        allow = masks.unpack(rows, VOCAB)[0]
        with torch.no_grad():
            logits = jt.model(torch.tensor([seq])).logits[0, -1]
        assert t == int(logits.masked_fill(~allow, float("-inf")).argmax())
        assert m.consume_token(t)
        seq.append(t)


# ---- draft shaping on hand-written grammars -----------------------------------------------------
def _ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def test_pruning_drops_rejected_nodes_and_their_subtrees():
    c = constraint({"type": "grammar", "grammar": 'start: "ab" "c" | "b" "d"'})
    a, b, cc, d, ab = (_ids(x)[0] for x in ("a", "b", "c", "d", "ab"))
    # root -> ab -> c (kept), root -> b -> c (c rejected after b), root -> d -> ... (rejected, with child)
    draft = DraftTree((ab, b, d, cc, cc, a), (-1, -1, -1, 0, 1, 2))
    m = c.matcher()
    s = shape_draft(m, draft, max_nodes=10, max_depth=5, vocab=VOCAB)
    assert s.kept == 3 and s.pruned == 3
    assert s.tree.tokens[:3] == (ab, b, cc) and s.tree.parents[:3] == (-1, -1, 0)
    # the mask after "ab c" allows only EOS; after "b" only "d"
    assert masks.unpack(s.rows[3:4], VOCAB)[0].nonzero().flatten().tolist() == [EOS]
    assert masks.unpack(s.rows[2:3], VOCAB)[0].nonzero().flatten().tolist() == [d]
    # "b" is followed by the forced "d": a forced node is added under it
    assert s.forced == 1 and s.tree.tokens[3] == d and s.tree.parents[3] == 1
    # the matcher is back at the root
    assert m.consume_tokens([ab, cc]) and m.is_accepting()


def test_forced_tokens_extend_the_draft_and_respect_the_budget():
    c = constraint({"type": "grammar", "grammar": 'start: "{\\"name\\": " NAME\nNAME: /[a-z]+/'})
    m = c.matcher()
    s = shape_draft(m, DraftTree(), max_nodes=10, max_depth=10, vocab=VOCAB)
    forced = list(s.tree.tokens)
    assert TOKENIZER.decode(forced) == '{"name": ' and s.forced == len(forced) == len(s.tree)
    assert s.tree.is_chain and s.rows.shape[0] == len(forced) + 1
    short = shape_draft(m, DraftTree(), max_nodes=2, max_depth=10, vocab=VOCAB)
    assert list(short.tree.tokens) == forced[:2]
    shallow = shape_draft(m, DraftTree(), max_nodes=10, max_depth=1, vocab=VOCAB)
    assert list(shallow.tree.tokens) == forced[:1]
    # a drafter proposing the start of the forced text keeps it; the rest is added after it
    first = DraftTree.chain(forced[:1])
    merged = shape_draft(m, first, max_nodes=10, max_depth=10, vocab=VOCAB)
    assert merged.kept == 1 and list(merged.tree.tokens) == forced and merged.tree.is_chain
    # a drafter proposing something else keeps nothing, the forced chain replaces it
    other = shape_draft(m, DraftTree.chain(_ids("abc")), max_nodes=10, max_depth=10, vocab=VOCAB)
    assert other.kept == 0 and other.pruned == len(_ids("abc")) and list(other.tree.tokens) == forced


def test_forced_bytes_past_the_forced_tokens_are_drafted_as_likely_nodes():
    # "ab:" is forced, but ":" may join a space that follows (": " is one token): "ab" is a
    # forced token, ":" only the likely spelling
    c = constraint({"type": "grammar", "grammar": 'start: "ab:" NAME\nNAME: /[ "a-z]+/'})
    ab, colon, z = (_ids(x)[0] for x in ("ab", ":", "z"))
    m = c.matcher()
    assert list(m.compute_ff_tokens()) == [ab] and bytes(m.compute_ff_bytes()) == b"ab:"
    s = shape_draft(m, DraftTree(), max_nodes=10, max_depth=10, vocab=VOCAB, tokenize=c.tokenizer.tokenize_bytes)
    assert s.tree.tokens == (ab, colon) and s.tree.is_chain
    assert (s.kept, s.forced, s.likely, s.forced_nodes) == (0, 1, 1, frozenset({0}))
    assert masks.allowed(s.rows[1], colon)  # the likely node's token is allowed after "ab"
    plain = shape_draft(m, DraftTree(), max_nodes=10, max_depth=10, vocab=VOCAB)  # no tokenizer: forced only
    assert plain.tree.tokens == (ab,) and (plain.forced, plain.likely) == (1, 0)
    # the budget and the depth cap cut the chain like any other
    assert shape_draft(m, DraftTree(), 1, 10, VOCAB, c.tokenizer.tokenize_bytes).tree.tokens == (ab,)
    # a spelling the mask rules out is never drafted (it could not be accepted)
    odd = shape_draft(m, DraftTree(), 10, 10, VOCAB, lambda b: [ab, z])
    assert odd.tree.tokens == (ab,) and odd.likely == 0
    # a spelling that disagrees with the forced tokens is ignored: the forced ones stay
    assert shape_draft(m, DraftTree(), 10, 10, VOCAB, lambda b: [z, ab]).tree.tokens == (ab,)
    # the decode loop counts them apart: accepted forced and likely nodes
    g = Guide(c, frozenset({EOS}))
    g.shape(DraftTree(), 10, 10)
    assert (g.forced_accepted((0, 1)), g.likely_accepted((0, 1)), g.likely_accepted((0,))) == (1, 1, 0)
    assert m.consume_tokens([ab, colon]) and not m.is_error()  # the matcher was left at the root


def test_matchers_are_independent_copies():
    """A constraint hands out copies of one matcher made once: what one request consumes is
    not seen by the next."""
    c = constraint({"type": "grammar", "grammar": 'start: "ab" "c"'})
    ab, cc = _ids("ab")[0], _ids("c")[0]
    a = c.matcher()
    assert a.consume_tokens([ab, cc]) and a.is_accepting()
    b = c.matcher()
    assert not b.is_accepting() and b.try_consume_tokens([cc]) == 0 and b.consume_tokens([ab])


def test_sampled_draft_rows_are_restricted_to_the_grammar():
    c = constraint({"type": "grammar", "grammar": 'start: "a" | "b"'})
    a, b, cc = (_ids(x)[0] for x in ("a", "b", "c"))
    q = torch.zeros(2, VOCAB, dtype=torch.float64)
    q[0, a], q[0, b], q[0, cc] = 0.2, 0.3, 0.5
    q[1] = q[0]
    s = shape_draft(c.matcher(), DraftTree((a, cc), (-1, -1), q), 4, 4, VOCAB)
    assert s.tree.tokens == (a,) and s.pruned == 1
    assert torch.allclose(s.tree.q[0, [a, b]], torch.tensor([0.4, 0.6], dtype=torch.float64))
    assert float(s.tree.q[0].sum()) == pytest.approx(1.0)


def test_eos_only_where_the_grammar_accepts(jt):
    c = constraint({"type": "regex", "regex": "[a-c]{3,5}"})
    for p in PROMPTS:
        out, st = run(jt, make_proposer("pld", Models(jt)), p, c, n=20)
        body = out[:-1] if out[-1] == EOS else out
        assert 3 <= len(TOKENIZER.decode(body)) <= 5 and st.stop_reason == "eos" and not st.incomplete


def test_length_before_acceptance_is_incomplete(jt, constraints):
    out, st = run(jt, make_proposer("suffix", Models(jt)), PROMPTS[0], constraints["schema-record"], n=4)
    assert len(out) == 4 and st.stop_reason == "length" and st.incomplete


# ---- bad constraints ----------------------------------------------------------------------------
BAD = {
    "unknown type": {"type": "xml"},
    "invalid schema": {"type": "object", "properties": {"a": {"type": "frob"}}},
    "unsupported keyword": {"not": {"type": "string"}},
    "bad regex": {"type": "regex", "regex": "([a-z]"},
    "bad grammar": {"type": "grammar", "grammar": "start: foo bar"},
    "admits nothing": {"type": "integer", "minimum": 5, "maximum": 1},
    "admits nothing (required)": {"type": "object", "properties": {}, "required": ["x"], "additionalProperties": False},
    "false schema": False,
    "recursion that never ends": {"$ref": "#"},
    "grammar that admits nothing": {"type": "grammar", "grammar": "start: start"},
    "schema not a dict": {"type": "json_schema", "json_schema": {"name": "x"}},
    "not a format": 42,
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_constraints_raise_one_line_errors(case):
    with pytest.raises(ParadecError) as e:
        constraint(BAD[case])
    assert "\n" not in str(e.value) and str(e.value)


def test_pydantic_model_and_text_format():
    from pydantic import BaseModel

    class Item(BaseModel):
        id: int
        name: str

    assert constraint(Item).kind == "json_schema"
    assert constraint({"type": "text"}) is None and constraint(None) is None
