"""Cooperative interruption of long work on one thread (the server's worker).

A caller that may need to stop a long step (a long prefill, a drafter building a large tree)
runs it inside ``interruptible(check)``; the long loops call ``checkpoint()``, which raises
``Interrupted`` once ``check()`` is true. Outside ``interruptible`` a checkpoint costs one
attribute read and never raises, so the library's own loops are unchanged.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

_local = threading.local()


class Interrupted(Exception):
    """The work was stopped at a checkpoint because its caller asked (a client went away)."""


@contextmanager
def interruptible(check: Callable[[], bool] | None) -> Iterator[None]:
    previous = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = previous


def checkpoint() -> None:
    check = getattr(_local, "check", None)
    if check is not None and check():
        raise Interrupted()
