"""The shipped tiny dLLM (src/paradec/data/dllm/dllm): the issue's quality bar and the lossless /
parallel claims on its own held-out task instances."""

from __future__ import annotations

import pytest

from paradec.dllm.toy.evaluate import heldout, run_method
from paradec.dllm.loaders import load_diffusion, packaged_dir


@pytest.fixture(scope="module")
def dllm():
    if not (packaged_dir("tiny-dllm") / "model.safetensors").is_file():
        pytest.skip("tiny-dllm weights not in this checkout")
    return load_diffusion("tiny-dllm")


def test_one_token_per_step_solves_copy_and_reverse(dllm):
    insts = heldout(50, tasks=("copy", "reverse"))
    sc, _ = run_method(dllm, "one", {}, insts)
    assert sc.by_task["copy"] >= 0.95 and sc.by_task["reverse"] >= 0.95, sc.by_task


def test_threshold_keeps_accuracy_with_many_tokens_per_forward(dllm):
    insts = heldout(50, tasks=("copy", "reverse"))
    one, _ = run_method(dllm, "one", {}, insts)
    thr, _ = run_method(dllm, "threshold", {"tau": "0.9"}, insts)
    assert thr.accuracy >= one.accuracy - 0.01
    assert thr.answer_tokens_per_forward >= 3.0 and thr.tokens_per_forward >= 3.0


def test_freedave_equals_one_token_per_step_on_the_real_model(dllm):
    # float64, as in the other identity tests: batched and single forwards then agree to the last bit
    dllm = load_diffusion("tiny-dllm", dtype="float64")
    insts = heldout(8)
    one, a = run_method(dllm, "one", {"block_size": "6"}, insts)
    fd, b = run_method(dllm, "freedave", {"block_size": "6", "depth": "6"}, insts)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert fd.forwards < one.forwards
