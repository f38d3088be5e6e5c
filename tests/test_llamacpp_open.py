"""paradec opens GGUF files in llama.cpp with its extra (AMX) buffer types off on AMX CPUs, where
they crash multi-token evaluations, and with llama.cpp's defaults elsewhere."""

import pytest

lc = pytest.importorskip("llama_cpp.llama_cpp")


def test_open_llama_turns_extra_buffers_off_only_on_amx(monkeypatch):
    import llama_cpp

    from paradec.models import llamacpp

    seen = {}

    class FakeLlama:  # records the model parameters Llama would load with
        def __init__(self, model_path, **kw):
            seen[model_path] = (lc.llama_model_default_params().use_extra_bufts, kw)

    monkeypatch.setattr(llama_cpp, "Llama", FakeLlama)
    monkeypatch.setattr(llamacpp, "cpu_has_amx", lambda: True)
    llamacpp.open_llama("amx.gguf", n_ctx=64)
    monkeypatch.setattr(llamacpp, "cpu_has_amx", lambda: False)
    llamacpp.open_llama("plain.gguf")
    assert seen == {"amx.gguf": (False, {"n_ctx": 64}), "plain.gguf": (True, {})}
    assert lc.llama_model_default_params().use_extra_bufts  # the default is restored
