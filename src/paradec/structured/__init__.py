"""Structured output: constrain generation to a JSON Schema, JSON, a regex or a grammar while
speculation stays on (the grammar engine is llguidance).

- ``formats``: what a ``response_format`` may be, turned into a grammar;
- ``constraint``: a compiled grammar bound to a tokenizer (``Constraint``);
- ``masks``: token bitmasks (fill, test, apply to logits);
- ``draft``: prune a draft tree to what the grammar allows, extend it with forced tokens;
- ``guide``: one request's grammar state, as the decode loop uses it.
"""

from .constraint import Constraint, compile_constraint
from .formats import grammar_for
from .guide import Guide

__all__ = ["Constraint", "compile_constraint", "grammar_for", "Guide"]
