"""``paradec models`` and ``paradec methods``: what paradec runs (the models from ``catalog``)."""

from __future__ import annotations


def models() -> None:
    """List every model paradec ships or loads by name, and how to install the missing ones."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import torch

    from ..models.native.select import native_unavailable, packaged_backend
    from ..models.registry import REGISTRY
    from .catalog import catalog

    why = native_unavailable("gguf", torch.device("cpu"), torch.float32)  # every packaged AR model is a GGUF
    table = Table(title="models")
    for col in ("name", "kind", "installed", "backend", "what", "install"):
        table.add_column(col)
    for e in catalog():  # escaped: rich would take "[gemma]" in a pip command for markup
        name = e.name + (" (default)" if e.default else "")
        backend = packaged_backend(e.name, why) if e.name in REGISTRY else "torch"
        table.add_row(*(escape(v) for v in (name, e.kind, "yes" if e.installed else "no", backend, e.what, e.install)))
    Console().print(table)
    print("backend: what --backend auto runs the model on, on a CPU in float32"
          + (f" (native backend unavailable: {why})" if why is not None else ""))
    print("Also accepted by --model: a local Hugging Face model directory, a .gguf file, or a hub id already in your HF cache.")


def methods() -> None:
    """List the decoding methods."""
    from ..proposers import METHODS

    for name, (desc, needs_draft) in METHODS.items():
        print(f"{name:10s} {desc}{' [needs --draft-model]' if needs_draft else ''}")
