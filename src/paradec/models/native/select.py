"""Which backend runs a target: ``native`` (the GGUF's quantized weights, this package) or
``torch`` (transformers on dequantized weights). ``auto``: native for a GGUF target on a CPU in
the default float32 when the native library is available, else torch with a one-line note."""

from __future__ import annotations

import sys

import torch

from ...errors import ParadecError

BACKENDS = ("auto", "native", "torch")
# the architecture inside each packaged GGUF (for `paradec models`, without opening the files)
PACKAGED_ARCH = {"smollm2-135m": "llama", "gemma3-270m": "gemma3", "qwen2.5-coder-0.5b": "qwen2", "qwen2.5-coder-1.5b": "qwen2"}


def packaged_backend(name: str, why: str | None) -> str:
    """What ``auto`` runs packaged model ``name`` on, on a CPU in float32 (``why``: what
    ``native_unavailable`` said for a GGUF here)."""
    from .gguf_model import ARCHS

    arch = PACKAGED_ARCH.get(name)
    if why is not None:
        return "torch"
    return "native" if arch in ARCHS else "torch"


def native_unavailable(kind: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why a target of source ``kind`` cannot run natively on ``device`` in ``dtype`` (None
    when it can)."""
    if kind != "gguf":
        return "the native backend reads GGUF files; this model is not one"
    if device.type != "cpu":
        return f"the native backend runs on the CPU, not {device.type}"
    if dtype != torch.float32:
        return f"--dtype {str(dtype).removeprefix('torch.')} is a torch setting (the native backend computes on the GGUF's own quantized weights)"
    from . import kernels

    if not kernels.available():
        return f"the native library is unavailable: {kernels.unavailable_reason()}"
    return None


def choose(backend: str, kind: str, device: torch.device, dtype: torch.dtype, quiet: bool = False) -> str:
    """``native`` or ``torch`` for ``backend`` (auto | native | torch); ParadecError when
    ``native`` is asked for and cannot run."""
    if backend not in BACKENDS:
        raise ParadecError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "torch":
        return "torch"
    why = native_unavailable(kind, device, dtype)
    if why is None:
        return "native"
    if backend == "native":
        raise ParadecError(f"backend native: {why}")
    if not quiet and kind == "gguf":
        print(f"paradec: note: using the torch backend ({why})", file=sys.stderr)
    return "torch"


def load_native(src):
    """A ``loader.Loaded`` for ``src`` (a GGUF source) whose ``causal_lm`` is a
    ``NativeCausalLM``; the tokenizer (and generation config) are the converted ones the torch
    path uses, so both backends see the same token ids."""
    from transformers import AutoTokenizer, GenerationConfig

    from ..cache_store import cache_root, writable_dir
    from ..loader import Loaded, _converted_dir, _quiet, check_gguf, load_hf
    from .backend import NativeCausalLM
    from .gguf_model import read_gguf

    check_gguf(src.path, src.name)  # the same one-line errors as the torch path, before any work
    writable_dir(cache_root() / "converted")
    model = read_gguf(src.path)  # fails on a bad file before anything is converted or cached
    _quiet()
    d = _converted_dir(src)
    tok = AutoTokenizer.from_pretrained(str(d))
    gen = GenerationConfig.from_pretrained(str(d)) if (d / "generation_config.json").is_file() else None
    lm = NativeCausalLM(model, hf_loader=lambda: load_hf(src.name, "float32", "cpu").model)
    return Loaded(src, model=None, tokenizer=tok, causal_lm=lm, generation_config=gen)
