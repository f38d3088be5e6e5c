"""``paradec demo``: ar, the fastest drafters and llama.cpp in one table, a progress display, and
every method behind ``--all``."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from helpers.tiny import save_tiny_chat_model
from paradec.demo import FAST_METHODS, DemoConfig, run_demo


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):  # a context window that holds the demo's prompts
    return save_tiny_chat_model(tmp_path_factory.mktemp("demo-tiny"))


def _run(cfg: DemoConfig):
    buf = io.StringIO()
    results = run_demo(cfg, Console(file=buf, width=200, force_terminal=False))
    return results, buf.getvalue()


def test_demo_table_has_ar_and_the_fast_methods(tiny_model_dir):
    results, out = _run(DemoConfig(model=tiny_model_dir, dtype="float32", max_new_tokens=6))
    assert list(results) == ["ar", *FAST_METHODS["float32"]]  # no llama.cpp row: the model is not a GGUF
    assert results["ar"]["speedup"] == pytest.approx(1.0)
    for m in results:
        assert f"│ {m} " in out
    assert "prompt 4/4 done" in out  # progress, also when the output is not a terminal
    assert "paradec demo --all" in out and "demo took" in out


def test_demo_all_runs_every_method(tiny_model_dir):
    from paradec.proposers import METHODS

    results, out = _run(DemoConfig(model=tiny_model_dir, dtype="float32", max_new_tokens=4, all_methods=True))
    assert {k.split()[0] for k in results} == set(METHODS) - {"draft"}  # "qdraft (int8)": its backend
    # methods that need something this tiny model lacks are listed with their reason, not dropped
    assert all("tokens_per_s" in r or r["error"] for r in results.values())


@pytest.mark.slow
def test_demo_on_the_default_model_shows_llama_cpp():
    from paradec.models.drafter import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    results, out = _run(DemoConfig(max_new_tokens=16))
    assert "llama.cpp" in results and results["llama.cpp"].get("tokens_per_s", 0) > 0, out
    assert "ar" in results and "auto" in results and "suffix" in results


def test_demo_dtype_prefers_the_native_backend(tiny_model_dir, monkeypatch):
    from paradec import demo
    from paradec.models.native import select

    monkeypatch.setattr(demo, "cpu_has_native_bf16", lambda: True)
    # a model directory is not a GGUF: the native backend cannot run it, bf16 where the CPU has it
    assert demo.demo_dtype(tiny_model_dir, "cpu") == "bfloat16"
    assert demo.demo_dtype(tiny_model_dir, "cuda") == "float32"
    monkeypatch.setattr(select, "native_unavailable", lambda kind, device, dtype: None)
    assert demo.demo_dtype(tiny_model_dir, "cpu") == "float32"
