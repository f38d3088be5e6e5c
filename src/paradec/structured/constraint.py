"""A compiled constraint: a grammar checked against a tokenizer, ready to make matchers.

The tokenizer conversion (about a second for a 49k vocabulary) is done once per tokenizer and
vocabulary size and cached.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..errors import ParadecError
from . import masks
from .formats import grammar_for, one_line

_TOKENIZERS: "weakref.WeakKeyDictionary[Any, dict[int, Any]]" = weakref.WeakKeyDictionary()
_COMPILED: "weakref.WeakKeyDictionary[Any, OrderedDict]" = weakref.WeakKeyDictionary()  # tokenizer -> LRU of (grammar, kind, vocab) -> Constraint


def grammar_tokenizer(hf_tokenizer, vocab: int):
    """The engine's view of ``hf_tokenizer`` (cached), with ``vocab`` tokens (the model's rows)."""
    import llguidance.hf

    per = _TOKENIZERS.setdefault(hf_tokenizer, {})
    if vocab not in per:
        n_vocab = vocab if vocab >= len(hf_tokenizer) else None
        try:
            per[vocab] = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=n_vocab)
        except (ValueError, TypeError) as e:
            raise ParadecError(f"structured output needs a fast tokenizer: {one_line(str(e))}") from None
    return per[vocab]


@dataclass(frozen=True)
class Constraint:
    """A grammar (llguidance's serialized form) bound to a tokenizer of ``vocab`` tokens."""

    grammar: str
    kind: str  # json_schema | json_object | regex | grammar
    tokenizer: Any = field(repr=False, compare=False)  # llguidance.LLTokenizer
    vocab: int = 0  # logits rows of the model (the mask's width)

    @property
    def eos(self) -> int:
        """The end-of-sequence token the grammar allows where it accepts."""
        return int(self.tokenizer.eos_token)

    def matcher(self):
        """A fresh matcher at the start of the output (a copy of one made once: making one
        parses the grammar again, about 0.5-1 ms; a copy takes microseconds)."""
        return self._pristine.deep_copy()

    @cached_property
    def _pristine(self):
        from llguidance import LLMatcher

        m = LLMatcher(self.tokenizer, self.grammar, log_level=0)
        if m.is_error():
            raise ParadecError(f"invalid {self.kind.replace('_', ' ')}: {one_line(m.get_error())}")
        return m


# compiled constraints kept per tokenizer (a request repeats its schema); more than a service's
# schemas usually number, and more than the structured suite's 68 (with 64, a pass over the
# suite missed every time and checked each schema again: about 1.5 ms a request)
_COMPILED_MAX = 256


def compile_constraint(response_format: Any, hf_tokenizer, vocab: int) -> Constraint | None:
    """Compile ``response_format`` (see ``formats``) for ``hf_tokenizer``; None when it does not
    constrain. Any problem with it raises ``ParadecError`` (one line). The last checked grammars
    are kept: the same one again (every request of a client with one schema) is not re-checked."""
    found = grammar_for(response_format)
    if found is None:
        return None
    grammar, kind = found
    tok = grammar_tokenizer(hf_tokenizer, vocab)
    done = _COMPILED.setdefault(hf_tokenizer, OrderedDict())
    key = (grammar, kind, vocab)
    if key in done:
        done.move_to_end(key)
        return done[key]
    c = _check(grammar, kind, tok, vocab)
    done[key] = c
    while len(done) > _COMPILED_MAX:
        done.popitem(last=False)
    return c


def _check(grammar: str, kind: str, tok, vocab: int) -> Constraint:
    from llguidance import LLMatcher

    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tok)
    if is_error:
        raise ParadecError(f"invalid {kind.replace('_', ' ')}: {one_line(messages[0] if messages else 'rejected')}")
    c = Constraint(grammar, kind, tok, vocab)
    m = c.matcher()
    rows = masks.new_rows(1, vocab)
    masks.fill(m, rows, 0)
    first = masks.unpack_numpy(rows.numpy(), vocab)[0]
    first[c.eos] = False
    if m.is_error() or (not m.is_accepting() and not bool(first.any())):
        raise ParadecError(f"the {kind.replace('_', ' ')} admits no output")
    return c
