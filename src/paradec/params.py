"""The one place that checks what a caller sends: prompts (text, chat messages, token ids),
sampling parameters, stop strings and the new-token budget.

``Engine.stream`` runs every request through these functions, so the library, the CLI and
the server share each rule. Types are strict, as in OpenAI's API: a number sent as a string,
a float where an integer is wanted, or ``True`` for a number is an error, never coerced.
Every failure is a one-line ``ParadecError``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .errors import ParadecError
from .sampling import SamplingParams

ROLES = ("system", "developer", "user", "assistant")  # "developer" is sent to the model as "system"
MAX_STOP = 16  # stop strings per request


def _type(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def is_int(x: Any) -> bool:
    """An integer proper: not a bool, not a float with an integral value."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return (isinstance(x, (int, float))) and not isinstance(x, bool)


def integer(name: str, x: Any, lo: int | None = None, hi: int | None = None) -> int:
    if not is_int(x):
        raise ParadecError(f"{name} must be an integer, got {_type(x)} {x!r}"[:300])
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in {lo}..{hi}"
        raise ParadecError(f"{name} must be {rng}, got {x}")
    return x


def number(name: str, x: Any) -> float:
    """A finite real number (an int is fine where a float is wanted)."""
    if not is_number(x):
        raise ParadecError(f"{name} must be a number, got {_type(x)} {x!r}"[:300])
    if not math.isfinite(x):
        raise ParadecError(f"{name} must be a finite number, got {x}")
    return float(x)


def text(name: str, x: Any) -> str:
    """A string that can be encoded as UTF-8 (no lone surrogates, e.g. from undecodable bytes)."""
    if not isinstance(x, str):
        raise ParadecError(f"{name} must be a string, got {_type(x)}")
    try:
        x.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ParadecError(f"{name} is not valid UTF-8 text (undecodable character at position {e.start})") from None
    return x


def sampling(temperature: Any = 0.0, top_p: Any = 1.0, top_k: Any = 0, seed: Any = None) -> SamplingParams:
    """Checked sampling parameters: temperature >= 0, top_p in (0, 1], top_k >= 0 (0 = off),
    seed an integer or None."""
    t = number("temperature", temperature)
    if t < 0:
        raise ParadecError(f"temperature must be >= 0, got {t:g}")
    p = number("top_p", top_p)
    if not 0.0 < p <= 1.0:
        raise ParadecError(f"top_p must be in (0, 1], got {p:g}")
    k = integer("top_k", top_k, lo=0)
    if seed is not None:
        integer("seed", seed)
    return SamplingParams(temperature=t, top_k=k, top_p=p, seed=seed)


def max_new_tokens(x: Any) -> int:
    return integer("max_new_tokens", x, lo=1)


def stops(stop: Any) -> list[str]:
    """None, one string or a list of strings -> the list (empty strings dropped)."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)):
        raise ParadecError(f"stop must be a string or a list of strings, got {_type(stop)}")
    if len(items) > MAX_STOP:
        raise ParadecError(f"stop holds {len(items)} strings; at most {MAX_STOP}")
    return [text("stop", s) for s in items]


def messages(msgs: Any) -> list[dict[str, str]]:
    """Chat messages: each a dict with a role (system, developer, user, assistant) and string
    content; at least one with non-blank content. Returns them with developer sent as system."""
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise ParadecError("messages must be a non-empty list of {'role', 'content'} dicts")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise ParadecError(f"message {i} needs a 'role' and a string 'content'")
        role = m["role"]
        if role not in ROLES:
            raise ParadecError(f"message {i} has role {str(role)[:40]!r}; one of {', '.join(ROLES)}")
        out.append({"role": "system" if role == "developer" else role, "content": text(f"message {i} content", m["content"])})
    if not any(m["content"].strip() for m in out):
        raise ParadecError("the messages are empty")
    return out


def token_ids(ids: Sequence[Any], vocab: int) -> list[int]:
    bad = next((t for t in ids if not is_int(t) or not 0 <= t < vocab), None)
    if bad is not None:
        raise ParadecError(f"prompt token id {bad!r} is not an integer in [0, {vocab})"[:300])
    return list(ids)


def prompt(p: Any) -> str | list[dict[str, str]] | list[int]:
    """Sort a prompt into one of its three kinds (text, messages, token ids) and check its
    shape; token ids are range-checked by ``token_ids`` once the vocabulary is known."""
    if isinstance(p, str):
        text("the prompt", p)
        if not p.strip():
            raise ParadecError("the prompt is empty")
        return p
    if isinstance(p, (list, tuple)):
        if not p:
            raise ParadecError("the prompt is empty")
        if all(isinstance(m, dict) for m in p):
            return messages(p)
        if all(is_number(t) for t in p):
            return list(p)  # checked by token_ids
    raise ParadecError(f"the prompt must be a string, a list of chat messages or a list of token ids, got {_type(p)}")
