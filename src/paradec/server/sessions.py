"""Per-conversation drafter state, kept across a conversation's requests.

The lookup drafters (``suffix``, ``recycle``, ``lookahead``, ``aded``, ...) learn from what they
have seen; with ``keep_state`` they keep it from one request to the next. A server shares no
drafter between clients: it keeps one drafter per conversation (the request's ``paradec.session``
or ``user``), for at most ``capacity`` conversations, least recently used evicted first. A
request of a conversation whose drafter is busy (two of its requests at once) gets a fresh one.
Used by the scheduler's worker thread only (no locking).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ParadecError
from ..proposers import make_proposer

if TYPE_CHECKING:
    from ..engine import Engine
    from .request import GenParams


@dataclass(eq=False)
class Kept:
    key: tuple[str, str, str]  # (session, method, options as JSON)
    proposer: Any


class SessionDrafters:
    def __init__(self, engine: "Engine", capacity: int) -> None:
        self.engine, self.capacity = engine, max(0, capacity)
        self._idle: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._busy: set[tuple[str, str, str]] = set()
        self._stateless: set[str] = set()  # methods without a keep_state option
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._idle) + len(self._busy)

    def checkout(self, p: "GenParams") -> Kept | None:
        """The conversation's kept drafter (made on its first request); None: use a fresh one."""
        if not self.capacity or not p.session or p.method in self._stateless or p.options.get("keep_state") is False:
            return None
        key = (p.session, p.method, json.dumps(p.options, sort_keys=True))
        if key in self._busy:
            return None
        proposer = self._idle.pop(key, None)
        if proposer is None:
            try:
                proposer = make_proposer(p.method, self.engine.models, {**p.options, "keep_state": True})
            except ParadecError:
                if self._plain_ok(p):  # the method has no keep_state option
                    self._stateless.add(p.method)
                return None  # else a bad option: the fresh path reports it
            self.misses += 1
        else:
            self.hits += 1
        self._busy.add(key)
        return Kept(key, proposer)

    def _plain_ok(self, p: "GenParams") -> bool:
        try:
            make_proposer(p.method, self.engine.models, p.options)
        except ParadecError:
            return False
        return True

    def checkin(self, kept: Kept | None) -> None:
        if kept is None or kept.key not in self._busy:
            return
        self._busy.discard(kept.key)
        self._idle[kept.key] = kept.proposer
        while len(self) > self.capacity and self._idle:
            self._idle.popitem(last=False)
