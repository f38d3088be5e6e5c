"""Method options: strict types, cost bounds and allowed paths, in one place.

Every method's options are the fields of its frozen config dataclass; a field's default gives
its type. Values are taken as they are (``int`` for an int field, ``int`` or ``float`` for a
float field, ``bool``, ``str``); a string is parsed only where the options came as text
(``--opt key=value``, see ``from_text``).

Cost bounds (``Limits``) are what a server operator sets at start; each option that sizes the
work of one step has a cost kind (``COST``), and a request's value must not exceed that kind's
limit. Options that name files (``PATHS``) accept, under ``Limits``, only shipped names or paths
inside the folders the operator allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ParadecError
from ..options import build, from_text, option  # noqa: F401 - build, from_text: re-exported for the proposers
from ..params import is_int

# option name -> cost kind: "nodes" (draft tree size), "depth" (draft length / n-gram order /
# passes), "width" (candidates per node, chains, table fan-out), "pool" (entries kept in a
# per-request table or window).
COST: dict[str, str] = {
    **dict.fromkeys(("max_nodes", "nodes", "template", "count_walk"), "nodes"),
    **dict.fromkeys(("max_depth", "depth", "max_len", "draft_len", "block", "ngram", "max_ngram", "n", "passes",
                     "sibling_depth", "lookup", "min_depth", "min_len", "min_block", "min_ngram", "min_match"), "depth"),
    **dict.fromkeys(("k", "width", "beam", "branch", "branches", "max_width", "guesses", "window", "pool_per_key",
                     "max_next"), "width"),
    **dict.fromkeys(("max_contexts", "max_keys", "max_grams", "max_tokens", "max_window"), "pool"),
}
FLAGS = {"nodes": "--max-draft-nodes", "depth": "--max-draft-depth", "width": "--max-draft-width", "pool": "--max-pool"}
PATHS = ("head", "adapter", "corpus_path")  # options that may name a file or folder


@dataclass(frozen=True)
class Limits:
    """Per-request bounds (``paradec serve --max-draft-nodes`` ...). The defaults equal the
    largest value any method uses by default, so a request's step costs at most what the
    heaviest default step costs. ``allow_paths``: folders whose contents requests may name
    for path options (empty: shipped names only)."""

    max_draft_nodes: int = option(64, "--max-draft-nodes", help="Per request: largest draft tree (nodes, max_nodes, templates).")
    max_draft_depth: int = option(16, "--max-draft-depth", help="Per request: longest draft / n-gram / block, most passes.")
    max_draft_width: int = option(16, "--max-draft-width", help="Per request: most candidates per node, chains, branches.")
    max_pool: int = option(1 << 16, "--max-pool", help="Per request: most entries in a lookup table or window.")
    allow_paths: tuple[str, ...] = option((), "--allow-path", help="A folder whose heads / adapters / corpora requests may "
                                          "name (repeatable; default: shipped names only).")

    def __post_init__(self) -> None:
        for f in ("max_draft_nodes", "max_draft_depth", "max_draft_width", "max_pool"):
            v = getattr(self, f)
            if not is_int(v) or v < 1:
                raise ParadecError(f"--{f.replace('_', '-')} must be an integer >= 1, got {v!r}")
        for d in self.allow_paths:
            if not os.path.isdir(d):
                raise ParadecError(f"--allow-path {d}: not a folder")
        object.__setattr__(self, "allow_paths", tuple(os.path.realpath(d) for d in self.allow_paths))

    def bound(self, kind: str) -> int:
        return {"nodes": self.max_draft_nodes, "depth": self.max_draft_depth, "width": self.max_draft_width,
                "pool": self.max_pool}[kind]

    def allows(self, path: str) -> bool:
        real = real_path(path)
        return any(os.path.commonpath([real, d]) == d for d in self.allow_paths)


def real_path(path: str) -> str:
    """``path`` with symlinks, ``..`` and repeated separators resolved (one key per folder)."""
    try:
        return os.path.realpath(path)
    except ValueError:  # an embedded NUL
        raise ParadecError("a path option holds a NUL character") from None


def bounded(config: Any, options: dict[str, Any], limits: Limits, shipped: Callable[[str], list[str]]) -> None:
    """Refuse a request's options past ``limits`` (cost) or naming a path it may not use."""
    for k in options:
        v = getattr(config, k)
        kind = COST.get(k)
        if kind == "nodes" and isinstance(v, str):  # a recycle template: one node per entry
            v = len(v.replace(",", " ").split())
        if kind is not None and is_int(v) and v > limits.bound(kind):
            raise ParadecError(f"option {k} = {v} is above this server's limit of {limits.bound(kind)} ({FLAGS[kind]})")
        if k in PATHS and v not in ("", "auto") and v not in shipped(k) and not limits.allows(v):
            names = ", ".join(shipped(k)) or "none"
            raise ParadecError(f"option {k} must name a shipped one (shipped: {names}); this server takes other "
                               "files only from the folders its operator allowed (--allow-path)")
