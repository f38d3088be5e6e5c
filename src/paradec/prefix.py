"""Prompt prefix reuse: the keys and values of earlier prompts, taken by later prompts that
begin with the same tokens (a shared system prompt, the earlier turns of a conversation, a
document asked about again), so only the rest of the prompt is prefilled.

Only on a target whose prefill is exact when split (``CausalLM.prefill_splits_exactly``: the
native backend, batch-invariant by construction, where a prompt prefilled in two parts leaves
the very bits one prefill leaves). There reuse changes no output and no logit, only the time to
the first token; a backend without that property (transformers on torch) never reuses.

The store is small and bounded: whole prompts (their prefilled tokens, all but the last),
least recently used first out, within ``max_bytes`` of keys and values and ``max_entries``
prompts in all (each lookup compares the prompt with every kept one). A prompt takes
the longest common prefix it has with any kept one (at least ``min_tokens``); after its prefill
it is kept itself, replacing a kept prompt it extends. Thread-safe (the server's requests share
one store).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import ParadecError


@dataclass(frozen=True)
class _Entry:
    tokens: np.ndarray  # [n] int64: the prefilled tokens
    payload: Any  # the cache's export of its first n slots
    nbytes: int


def _common(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token arrays."""
    m = min(len(a), len(b))
    if m == 0:
        return 0
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if len(diff) else m


def reuses_prefixes(target) -> bool:
    """Whether ``target``'s prefill is exact when split, so kept prefixes may be used with it."""
    return bool(getattr(target, "prefill_splits_exactly", False))


class PrefixCache:
    def __init__(self, max_bytes: int = 64 << 20, min_tokens: int = 4, max_entries: int = 16) -> None:
        if max_bytes < 0 or min_tokens < 1 or max_entries < 1:
            raise ParadecError("a prefix cache needs max_bytes >= 0, min_tokens >= 1 and max_entries >= 1")
        self.max_bytes, self.min_tokens, self.max_entries = int(max_bytes), int(min_tokens), int(max_entries)
        self._entries: "OrderedDict[int, _Entry]" = OrderedDict()  # id -> entry, least recently used first
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def restore(self, tokens: Sequence[int], cache) -> int:
        """Load into the empty ``cache`` the longest kept prefix of ``tokens`` (the prompt's
        tokens to prefill); returns how many slots it filled (0: none long enough)."""
        if cache.seq_len != 0:
            raise ParadecError("a kept prefix goes into an empty cache")
        want = np.asarray(tokens, np.int64)
        with self._lock:
            best, key = 0, None
            for k, e in self._entries.items():
                n = _common(e.tokens, want)
                if n > best:
                    best, key = n, k
            if key is None or best < self.min_tokens:
                return 0
            self._entries.move_to_end(key)
            payload = self._entries[key].payload
        cache.import_prefix(payload, best)
        return best

    def keep(self, tokens: Sequence[int], cache) -> None:
        """Keep the first ``len(tokens)`` slots of ``cache`` (these tokens, prefilled) for later
        prompts, if they fit the budget (a longer prompt keeps its first part that fits)."""
        toks = np.asarray(tokens, np.int64)
        if len(toks) < self.min_tokens or self.max_bytes == 0:
            return
        per = cache.slot_bytes
        n = min(len(toks), self.max_bytes // per)
        if n < self.min_tokens:
            return
        toks = toks[:n]
        with self._lock:
            for k, e in list(self._entries.items()):
                c = _common(e.tokens, toks)
                if c == n:  # already kept (this prompt, or one it begins)
                    self._entries.move_to_end(k)
                    return
                if c == len(e.tokens):  # a kept prompt this one extends: replaced by it
                    del self._entries[k]
            self._entries[self._next] = _Entry(toks.copy(), cache.export_prefix(n), n * per)
            self._next += 1
            while len(self._entries) > 1 and (self.nbytes > self.max_bytes or len(self._entries) > self.max_entries):
                self._entries.popitem(last=False)
