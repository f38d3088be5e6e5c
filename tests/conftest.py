"""Shared fixtures: tiny randomly initialized HF models (float64, so batched and one-token
forwards agree to the last bit and greedy identity is exact) and a character tokenizer."""

from __future__ import annotations

import pytest
import torch

from paradec.models.torch.hf import HFCausalLM

from helpers.tiny import char_tokenizer, tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny model + tokenizer saved as a local HF directory (loadable by path)."""
    d = tmp_path_factory.mktemp("tiny-model")
    tok = char_tokenizer()
    model = tiny_llama(0, vocab=len(tok))
    model.generation_config.eos_token_id = 2
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_draft_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tiny-draft")
    tok = char_tokenizer()
    tiny_llama(1, vocab=len(tok), layers=1).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models run fastest on one thread (and do not fight other processes for cores);
    the slow tests on real models keep torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- tiny targets shared by the losslessness tests (see lossless.py) ---------------------------
@pytest.fixture(scope="session")
def target():
    from helpers.lossless import VOCAB

    return HFCausalLM(tiny_llama(0, vocab=VOCAB))


@pytest.fixture(scope="session")
def reference(target):
    """Plain AR greedy output for each prompt: what every drafter must reproduce."""
    from helpers.lossless import PROMPTS, run
    from paradec.proposers.base import NoDraft

    return {tuple(p): run(target, NoDraft(), p)[0] for p in PROMPTS}


@pytest.fixture(scope="session")
def s_target():
    from helpers.lossless import SV

    return HFCausalLM(tiny_llama(3, vocab=SV, std=0.15))
