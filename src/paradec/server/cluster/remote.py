"""The Backend of the router: each job goes to a model replica through its deployment handle.

Affinity: a conversation is the request's ``paradec.session`` / ``user``, or else (chat) its
message prefix: once a turn is answered, the router remembers which replica answered it under
the hash of the messages plus the answer, which is exactly the prefix of the conversation's next
turn. The next turn is sent to that replica with the same session id, so the replica's kept
drafter state (``keep_state``) serves it. Without affinity a request carries no session: it is
routed least loaded and drafts with a fresh drafter, as in the single-process server.

Faults: a request whose replica fails before it streamed anything (a non-streaming request,
before its result) is retried once on another replica; after that, or once streaming, it ends
with a 503 error event (an error chunk then ``[DONE]`` for streams). Both are counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

from ..backend import ModelInfo
from ..errors import APIError
from ..metrics import Metrics
from ..request import GenParams, Result
from .metrics import ClusterMetrics

log = logging.getLogger("paradec.server")
MAX_CONVERSATIONS = 100_000  # remembered conversation -> replica entries (least recently used dropped)


def _digest(messages: list[dict[str, str]]) -> str:
    canon = [[m.get("role", ""), m.get("content", "")] for m in messages]
    return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()[:32]


def replica_failed() -> APIError:
    return APIError(503, "the replica serving this request failed; retry the request", code="replica_failed", type="server_error")


class RemoteBackend:
    def __init__(self, info: ModelInfo, timeout: float, affinity: bool, replicas, hub) -> None:
        self.info, self.timeout, self.affinity = info, timeout, affinity
        self.replicas, self.hub = replicas, hub  # deployment handles
        self.metrics = Metrics()
        self.cluster = ClusterMetrics(self.metrics)
        self._where: OrderedDict[str, tuple[str, str]] = OrderedDict()  # conversation key -> (session, replica)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    # ---- affinity ----------------------------------------------------------------------------
    def _route(self, p: GenParams) -> tuple[GenParams, str | None, str | None]:
        """(params with the session to use, the replica to prefer, the key to remember the answer under)."""
        if not self.affinity:
            return dataclasses.replace(p, session=None), None, None
        if p.session:
            found = self._where.get("s:" + p.session)
            return p, found[1] if found else None, "s:" + p.session
        if p.chat and isinstance(p.prompt, list) and p.prompt and isinstance(p.prompt[0], dict):
            found = self._where.get("h:" + _digest(p.prompt[:-1]))
            session, hint = found if found else (f"conv-{uuid.uuid4().hex}", None)
            return dataclasses.replace(p, session=session), hint, "h:"
        return p, None, None

    def _learn(self, p: GenParams, key: str | None, r: Result) -> None:
        if key is None or not r.replica:
            return
        if key == "h:":
            key = "h:" + _digest([*p.prompt, {"role": "assistant", "content": r.text}])
        self._where[key] = (p.session, r.replica)
        self._where.move_to_end(key)
        while len(self._where) > MAX_CONVERSATIONS:
            self._where.popitem(last=False)

    # ---- the Backend protocol ----------------------------------------------------------------
    async def prepare(self, params: GenParams) -> GenParams:
        return params  # each replica tokenizes (affinity reads the messages as sent)

    def submit(self, params: GenParams, endpoint: str, stream: bool, arrival: float | None = None) -> "RemoteJob":
        params, hint, key = self._route(params)
        return RemoteJob(self, params, endpoint, stream, hint, key)

    async def _live(self):
        try:
            return await self.hub.live.remote()
        except Exception:  # the hub is restarting: nothing known to be ready
            return []

    async def health(self) -> tuple[bool, dict[str, Any]]:
        reports = await self._live()
        ok = bool(reports)
        return ok, {"status": "ok" if ok else "no replica ready", "replicas": len(reports),
                    "queue_depth": sum(r.queue_depth for r in reports), "active": sum(r.active for r in reports)}

    async def render_metrics(self) -> bytes:
        return self.cluster.render(await self._live())


class RemoteJob:
    """A Job (as ``scheduler.Job`` to the routes) whose events come from a replica."""

    def __init__(self, backend: RemoteBackend, params: GenParams, endpoint: str, stream: bool,
                 hint: str | None, key: str | None) -> None:
        self.backend, self.params, self.timeout = backend, params, backend.timeout
        self.events: asyncio.Queue = asyncio.Queue()
        self.arrival = time.monotonic()
        self.cancelled = ""
        self._task = asyncio.get_running_loop().create_task(self._pump(endpoint, stream, hint, key))

    @property
    def deadline(self) -> float:
        return self.arrival + self.timeout

    def cancel(self, reason: str = "disconnect") -> None:
        self.cancelled = self.cancelled or reason
        if not self._task.done():
            self._task.cancel()

    async def _pump(self, endpoint: str, stream: bool, hint: str | None, key: str | None) -> None:
        b, avoid = self.backend, None
        for attempt in range(2):
            served_by, streamed = None, False
            gen = b.replicas.options(stream=True).generate.remote(
                self.params, endpoint, stream, max(0.001, self.deadline - time.monotonic()),
                replica_hint=hint if attempt == 0 else None, avoid=avoid,
            )
            try:
                async for kind, payload in gen:
                    if kind == "replica":
                        served_by = payload
                        continue
                    streamed = streamed or kind == "text"
                    if kind == "done":
                        if hint is not None:
                            b.cluster.routed.labels("affine_hit" if payload.replica == hint else "affine_miss").inc()
                        else:
                            b.cluster.routed.labels("new").inc()
                        b._learn(self.params, key, payload)
                    self.events.put_nowait((kind, payload))
                    if kind in ("done", "error"):
                        return
                raise RuntimeError("the replica's stream ended without a result")
            except asyncio.CancelledError:
                gen.cancel()
                raise
            except Exception as e:
                log.warning("replica %s failed a request (attempt %d): %s", served_by or "?", attempt + 1, e)
                if streamed or attempt == 1:
                    b.cluster.failed.labels("streaming" if streamed else "retried").inc()
                    self.events.put_nowait(("error", replica_failed()))
                    return
                b.cluster.retries.inc()
                avoid = served_by
