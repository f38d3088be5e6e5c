"""The shipped converted model (smollm2-135m-dlm): loads by name as a dLLM (its Learn2PD filter
too), and ``deer`` and ``deer-fused`` with it on the real default model give exactly ``ar``'s
greedy output (float32)."""

from __future__ import annotations

import pytest

from paradec.dllm.loaders import converted_dirs

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-dlm"
PROMPTS = [
    "Explain what a hash table is in two sentences.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List three tips for writing clear emails.",
    "Translate to French: The weather is nice today.",
]


@pytest.fixture(scope="module")
def engine():
    if NAME not in converted_dirs() or not any(converted_dirs()[NAME].glob("adapter-*.safetensors")):
        pytest.skip(f"{NAME} adapter not in this checkout")
    import paradec

    try:
        return paradec.load("smollm2-135m")
    except paradec.ParadecError as e:
        pytest.skip(str(e))


def test_shipped_adapter_loads_by_name_as_a_dllm(engine):
    from paradec.dllm.loaders import load_diffusion
    from paradec.dllm.loop import generate
    from paradec.dllm.methods import make_settings

    m = load_diffusion(NAME)
    assert m.spec.attention == "block_causal" and m.spec.block_size == 8
    s, _ = make_settings("threshold", {"tau": "0.9", "block_size": "8"}, gen_length=16, eos_id=m.spec.eos_id)
    r = generate(m, [m.encode(PROMPTS[0])], s)[0]
    assert m.spec.mask_id not in r.tokens and r.stats.forwards <= 16


@pytest.fixture(scope="module")
def torch_engine(engine):
    import paradec

    return paradec.load("smollm2-135m", backend="torch")


# deer-fused drafts inside transformers' forward, so it runs on the torch backend only
@pytest.mark.parametrize("method,backend", [("deer", "auto"), ("deer", "torch"), ("deer-fused", "torch")])
def test_deer_greedy_identical_to_ar_on_the_default_model(request, method, backend):
    engine = request.getfixturevalue("engine" if backend == "auto" else "torch_engine")
    accepted = 0
    for p in PROMPTS:
        ar = engine.generate(p, method="ar", max_new_tokens=64)
        deer = engine.generate(p, method=method, max_new_tokens=64)
        assert deer.token_ids == ar.token_ids, p
        accepted += deer.stats.accepted
        assert deer.stats.mean_accepted > 1.0
    assert accepted > 0


def test_shipped_learn2pd_filter_decodes(engine):
    from paradec.dllm.policies.learned import filter_of
    from paradec.dllm.loaders import load_diffusion
    from paradec.dllm.loop import generate
    from paradec.dllm.methods import make_settings

    m = load_diffusion(NAME)
    filt = filter_of(m)
    assert filt is not None
    s, _ = make_settings("learn2pd", {"tau": "0.9", "block_size": "8"}, gen_length=16, eos_id=m.spec.eos_id, filter_model=filt)
    r = generate(m, [m.encode(PROMPTS[2])], s)[0]
    assert m.spec.mask_id not in r.tokens and 1 <= r.stats.forwards <= 16
