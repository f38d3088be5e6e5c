"""Opening a GGUF with llama.cpp (``llama-cpp-python``), for the ``qdraft`` drafter and the
llama.cpp benchmark peers.

One work-around lives here. On CPUs with AMX (Intel Sapphire Rapids and later), llama.cpp puts
the weights into its AMX "extra" buffer type, and there its multi-token evaluations crash the
process (measured: a segmentation fault on the first prompt evaluation of SmolLM2's Q4_1 GGUF
with llama-cpp-python 0.3.36 on an AMX Xeon; one-token evaluations ran). With the extra buffer
types off (llama.cpp's ``--no-repack``), the same evaluations run. Other CPUs keep llama.cpp's
defaults.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path


@functools.cache
def cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_int8" in flags or " amx_tile" in flags


@contextlib.contextmanager
def _model_params(**fields):
    """llama-cpp-python's ``Llama`` builds its model parameters from
    ``llama_model_default_params()`` and exposes only some of them: override others for one
    construction."""
    import llama_cpp.llama_cpp as lc

    default = lc.llama_model_default_params

    def patched():
        p = default()
        for k, v in fields.items():
            if hasattr(p, k):
                setattr(p, k, v)
        return p

    lc.llama_model_default_params = patched
    try:
        yield
    finally:
        lc.llama_model_default_params = default


def open_llama(model_path: str, **kwargs):
    """``llama_cpp.Llama(model_path, **kwargs)``, with the extra buffer types off on AMX CPUs."""
    from llama_cpp import Llama

    if not cpu_has_amx():
        return Llama(model_path=model_path, **kwargs)
    with _model_params(use_extra_bufts=False):
        return Llama(model_path=model_path, **kwargs)


def extra_buffers_note() -> str:
    """What the bench report says about the work-around on this machine ('' when it is off)."""
    return "AMX extra buffers off: they crash llama.cpp on this CPU" if cpu_has_amx() else ""
