"""The shipped draft head (smollm2-135m-head): loads by name and by ``auto`` on the default
model, records its recipe and measured quality, and with the suffix-lookup branch gives exactly
``ar``'s greedy output on the real model (float32)."""

from __future__ import annotations

import pytest

from paradec.heads import head_dirs, read_spec

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-head"
PROMPTS = [
    "Summarize: The city council met on Tuesday to discuss the new bike lanes. Residents spoke for and against the plan.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Translate to German: I would like a cup of coffee, please.",
]


@pytest.fixture(scope="module")
def engine():
    if NAME not in head_dirs():
        pytest.skip(f"{NAME} not in this checkout")
    import paradec

    try:
        return paradec.load("smollm2-135m")
    except paradec.ParadecError as e:
        pytest.skip(str(e))


def test_shipped_head_records_its_recipe_and_quality():
    spec = read_spec(head_dirs()[NAME])
    t = spec.trained
    assert t["command"].startswith("paradec head train") and t["data"]["continuations"] > 1000
    q = t["quality"]
    assert len(q["top1_by_depth"]) == 6 and q["chain_accepted_per_forward"] > 2.0 and q["heldout_coverage"] > 0.9


@pytest.fixture(scope="module")
def torch_engine(engine):
    import paradec

    return paradec.load("smollm2-135m", backend="torch")


# The head was trained on the torch float32 forward's hidden states: there it accepts > 1.5 tokens
# per forward on every prompt. The native backend's int8-activation arithmetic moves the hidden
# states a little, so there the bound is on the mean over the prompts (identity holds on both).
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_shipped_head_by_name_and_auto_identical_to_ar(request, backend):
    from paradec.heads import head_for

    engine = request.getfixturevalue("torch_engine" if backend == "torch" else "engine")
    assert head_for(engine.target.model, "auto").spec == head_for(engine.target.model, NAME).spec
    accepted = []
    for p in PROMPTS:
        ref = engine.generate(p, method="ar", max_new_tokens=96).token_ids
        got = engine.generate(p, method="head", max_new_tokens=96, options={"lookup": 8})
        assert got.token_ids == ref, p
        accepted.append(got.stats.mean_accepted)
        if backend == "torch":
            assert got.stats.mean_accepted > 1.5
    assert sum(accepted) / len(accepted) > 1.5
