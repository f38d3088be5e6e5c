"""Drafters by method name. Each lives in its own module behind the ``Proposer`` protocol."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..errors import ParadecError
from .base import NoDraft, ProposeContext, Proposer, StepResult
from .draft_model import DraftModelConfig, DraftModelProposer
from .pld import PLDConfig, PromptLookup

__all__ = ["METHODS", "make_proposer", "Proposer", "ProposeContext", "StepResult", "NoDraft"]

# name -> (one-line description, needs a draft model)
METHODS: dict[str, tuple[str, bool]] = {
    "ar": ("plain autoregressive decoding (the baseline; same loop, no draft)", False),
    "pld": ("prompt lookup: n-gram matches in prompt + output, chain or small tree", False),
    "draft": ("a smaller model with the same tokenizer drafts a chain or top-k tree", True),
}


def _build(cls: type, options: dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ParadecError(f"unknown option(s) {', '.join(unknown)} (valid: {', '.join(fields)})")
    typed = {}
    for k, v in options.items():
        want = type(getattr(cls(), k))
        try:
            typed[k] = want(v) if not isinstance(v, want) else v
        except (TypeError, ValueError):
            raise ParadecError(f"option {k} expects {want.__name__}, got {v!r}") from None
    try:
        return cls(**typed)
    except ValueError as e:
        raise ParadecError(str(e)) from None


def make_proposer(method: str, *, draft_model=None, target_vocab: int = 0, options: dict | None = None) -> Proposer:
    options = dict(options or {})
    if method not in METHODS:
        raise ParadecError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    builders: dict[str, Callable[[], Proposer]] = {
        "ar": lambda: NoDraft(),
        "pld": lambda: PromptLookup(_build(PLDConfig, options)),
        "draft": lambda: DraftModelProposer(draft_model, target_vocab, _build(DraftModelConfig, options)),
    }
    if method == "ar" and options:
        raise ParadecError("method 'ar' takes no options")
    if METHODS[method][1] and draft_model is None:
        raise ParadecError(f"method '{method}' needs a draft model (--draft-model / paradec.load(..., draft=...))")
    return builders[method]()
