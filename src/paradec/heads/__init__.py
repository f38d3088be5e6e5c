"""Trained draft heads (``--method head``): the model (model.py), its training data (data.py),
the training loop (train.py) and ``paradec head`` (cli/head.py). Shipped heads live in
``data/heads/<name>/`` and load by name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ParadecError
from .model import DraftHead, HeadSpec, load_head, new_head, read_spec

__all__ = ["DraftHead", "HeadSpec", "head_dirs", "head_for", "load_head", "new_head", "read_spec"]


def head_dirs() -> dict[str, Path]:
    """Shipped heads by name."""
    root = Path(str(resources.files("paradec") / "data" / "heads"))
    if not root.is_dir():
        return {}
    return {d.name: d for d in sorted(root.iterdir()) if (d / "config.json").is_file()}


def head_for(hf_model, head: str = "auto") -> DraftHead:
    """The head named ``head`` (a shipped name or a directory from ``paradec head train``), or
    with ``auto`` the shipped head trained on this very model."""
    from ..distill.fingerprint import check_fingerprint

    shipped = head_dirs()
    if head == "auto":
        for name, d in shipped.items():
            try:
                check_fingerprint(read_spec(d).base_fingerprint, hf_model, name)
            except ParadecError:
                continue
            return load_head(d, hf_model, name)
        raise ParadecError(f"head: no trained head for this model (shipped: {', '.join(shipped) or 'none'}); "
                           "train one with `paradec head train` and pass --opt head=DIR")
    d = shipped.get(head) or Path(head)
    if not (d / "config.json").is_file():
        raise ParadecError(f"head: unknown head '{head}' (shipped: {', '.join(shipped) or 'none'}; or a directory from `paradec head train`)")
    return load_head(d, hf_model, head)
