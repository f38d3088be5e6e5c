"""paradec's diffusion-LM side: one block-decoding loop with pluggable policies (commit rules,
block schedules, caches, editing), FreeDave lossless draft-and-verify, loaders for LLaDA-, Dream-
and SDAR-shaped checkpoints, synthetic tasks, and a tiny masked diffusion LM trained on them.

    from paradec.dllm import load_diffusion, make_settings, generate
    model = load_diffusion("tiny-dllm")
    settings, _ = make_settings("threshold", {"tau": "0.9"})
    results = generate(model, [prompt_ids, ...], settings, batch_size=16)
"""

from .loaders import is_diffusion, load_diffusion
from .loop import Settings, generate
from .result import DllmResult
from .methods import METHODS, make_settings

__all__ = ["METHODS", "DllmResult", "Settings", "generate", "is_diffusion", "load_diffusion", "make_settings"]
