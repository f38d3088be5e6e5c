"""The named capability protocols: every backend, drafter and proposer satisfies exactly the
ones it should (checked with ``isinstance``, as the code that uses them checks), and an object
that lacks a capability is not taken for one, nor refused when it does not need it."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_llama
from helpers.lossless import PROMPTS, VOCAB, run
from test_deer import random_adapter
from test_deer_fused import fused_model

from paradec.errors import ParadecError
from paradec.heads import new_head
from paradec.models.causal_lm import (
    BatchedLM,
    CausalLM,
    HiddenStatesLM,
    LabelledLM,
    NativeLM,
    TransformersLM,
    backend_label,
)
from paradec.models.drafter import Drafter, HFDrafter, LlamaCppDrafter
from paradec.models.torch.hf import HFCausalLM
from paradec.models.torch.quantize import int8_copy
from paradec.proposers import Models, make_proposer
from paradec.proposers.aded import ADED
from paradec.proposers.auto import AutoDrafter, LazyModel
from paradec.proposers.base import DraftsFlag, FusedProposer, NoDraft, Proposer, TimedProposer
from paradec.proposers.deer import DeerProposer
from paradec.proposers.deer_fused import FusedDeer
from paradec.proposers.draft_model import DraftModelProposer
from paradec.proposers.head import HeadProposer
from paradec.proposers.lookahead import Lookahead
from paradec.proposers.pld import PromptLookup
from paradec.proposers.qdraft import QDraftConfig, QuantizedSelfDraft
from paradec.proposers.recycle import TokenRecycling
from paradec.proposers.suffix import SuffixDrafter
from paradec.tree import DraftTree

MODEL_PROTOCOLS = (CausalLM, BatchedLM, HiddenStatesLM, NativeLM, LabelledLM, TransformersLM, Drafter)
PROPOSER_PROTOCOLS = (Proposer, FusedProposer, TimedProposer, DraftsFlag)
TORCH_TARGET = {"CausalLM", "BatchedLM", "HiddenStatesLM", "LabelledLM", "TransformersLM"}


def satisfied(obj, protocols=MODEL_PROTOCOLS + PROPOSER_PROTOCOLS) -> set[str]:
    return {p.__name__ for p in protocols if isinstance(obj, p)}


class BareLM:
    """Only what ``CausalLM`` asks: no batching, no hidden states, no label, no transformers model."""

    vocab_size, max_context = VOCAB, 64
    device, dtype = torch.device("cpu"), torch.float32

    def new_cache(self, capacity):
        raise NotImplementedError

    def forward(self, ids, positions, cache, attn_mask):
        raise NotImplementedError

    def prefill(self, ids, cache):
        raise NotImplementedError


class BareProposer:
    """A proposer without a name, a fused forward, timings or a drafts flag."""

    def begin(self, prompt, sampling):
        pass

    def propose(self, ctx):
        raise NotImplementedError

    def observe(self, result):
        pass


def test_the_transformers_target_on_either_path(target):
    assert target.path == "transformers" and satisfied(target) == TORCH_TARGET
    lean = HFCausalLM(tiny_llama(0, vocab=VOCAB), fast=True)
    assert lean.path == "lean" and satisfied(lean) == TORCH_TARGET
    assert satisfied(lean.lean) == set()  # the lean decoder runs inside the target; it is none itself


def test_the_native_target(tmp_path):
    from paradec.models.native import kernels

    if not kernels.available():
        pytest.skip(f"native kernels unavailable: {kernels.unavailable_reason()}")
    from helpers.native_tiny import tiny_hf, write_gguf
    from paradec.models.native.backend import NativeCausalLM
    from paradec.models.native.gguf_model import read_gguf

    hf = tiny_hf()
    native = NativeCausalLM(read_gguf(write_gguf(hf, tmp_path / "tiny.gguf")), hf_loader=lambda: hf)
    assert satisfied(native) == TORCH_TARGET | {"NativeLM"}
    assert backend_label(native) == native.path and native.path.startswith("native")


def test_drafters_are_drafters_not_targets(target):
    assert satisfied(HFDrafter(target)) == {"Drafter"}
    assert issubclass(LlamaCppDrafter, Drafter)  # needs llama.cpp to build; its methods are the class's
    assert not isinstance(target, Drafter)  # a CausalLM given as a draft model gets wrapped
    assert isinstance(DraftModelProposer(target, VOCAB).drafter, HFDrafter)


def test_each_proposer_has_exactly_its_capabilities(target):
    plain = {"Proposer"}
    head = HeadProposer(new_head(target.model, torch.arange(VOCAB), intermediate=16))
    cases = {
        "ar": (NoDraft(), plain | {"DraftsFlag"}),
        "pld": (PromptLookup(), plain),
        "suffix": (SuffixDrafter(), plain),
        "recycle": (TokenRecycling(), plain),
        "aded": (ADED(), plain),
        "lookahead": (Lookahead(), plain),
        "draft": (DraftModelProposer(target, VOCAB), plain | {"TimedProposer"}),
        "qdraft": (QuantizedSelfDraft(HFDrafter(HFCausalLM(int8_copy(target.model))), VOCAB, QDraftConfig(backend="int8")),
                   plain | {"TimedProposer"}),
        "deer": (DeerProposer(random_adapter(target.model), VOCAB), plain),
        "deer-fused": (FusedDeer(fused_model(target), VOCAB), plain | {"FusedProposer"}),
        "head": (head, plain | {"FusedProposer"}),
        "auto": (AutoDrafter(), plain),
        "auto with a draft model": (AutoDrafter(DraftModelProposer(target, VOCAB)), plain),
        "auto with a head": (AutoDrafter(head), plain | {"FusedProposer"}),  # it rides the head's forward
    }
    for name, (proposer, expected) in cases.items():
        assert satisfied(proposer, PROPOSER_PROTOCOLS) == expected, name
        assert satisfied(proposer, MODEL_PROTOCOLS) == set(), name


def test_a_lazy_model_reports_timings_once_built(target):
    lazy = LazyModel(lambda: DraftModelProposer(target, VOCAB), "draft")
    assert satisfied(lazy, PROPOSER_PROTOCOLS) == {"Proposer", "TimedProposer"}
    assert lazy.last_times is None and not lazy.built  # nothing to report, nothing loaded
    assert lazy.build().last_times == lazy.last_times == (0.0, 0.0, 0)
    no_timings = LazyModel(SuffixDrafter)
    no_timings.build()
    assert no_timings.last_times is None


def test_an_object_without_a_capability_is_not_taken_for_one():
    assert satisfied(BareLM()) == {"CausalLM"}
    assert backend_label(BareLM()) == "torch float32 (transformers)"
    assert satisfied(BareProposer()) == set()  # no name: not even a Proposer (the loop names it by its class)

    class NamelessFused(BareProposer):
        def fused_forward(self, target, step):
            raise NotImplementedError

    assert satisfied(NamelessFused()) == {"FusedProposer"}  # an optional member needs no name
    assert not isinstance(object(), CausalLM)


def test_a_capability_is_asked_for_only_where_it_is_needed():
    models = Models(BareLM())
    with pytest.raises(ParadecError, match="hidden states"):
        make_proposer("head", models)
    assert isinstance(make_proposer("auto", models, {"model": "none"}), AutoDrafter)

    class NativeFlagged(BareLM):
        native = True
        model = None

    with pytest.raises(ParadecError, match="native backend"):
        make_proposer("deer-fused", Models(NativeFlagged()))


def test_the_loop_runs_a_proposer_without_optional_members(target):
    """No name (the stats name its class), no fused forward (the loop runs the target), no
    drafts flag (it takes a grammar's forced tokens)."""

    class Nameless(BareProposer):
        def propose(self, ctx):
            return DraftTree()

    out, stats = run(target, Nameless(), PROMPTS[0], n=4)
    assert out == run(target, NoDraft(), PROMPTS[0], n=4)[0]
    assert stats.method == "Nameless" and stats.backend == "torch float64 (transformers)"
