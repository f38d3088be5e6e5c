"""Where the routes send their jobs: one local Scheduler, or (``server.cluster``) a deployment of them.

A backend hands back a job-like object: ``events`` (an asyncio queue of ``("ready", n)``,
``("text", piece)``, then ``("done", Result)`` or ``("error", APIError)``), ``deadline``,
``timeout`` and ``cancel(reason)``, exactly what ``scheduler.Job`` offers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from starlette.concurrency import run_in_threadpool

from .metrics import Metrics
from .request import GenParams
from .scheduler import Job, Scheduler, tokenized

if TYPE_CHECKING:
    from ..engine import Engine
    from .config import ServerConfig


@dataclass(frozen=True)
class ModelInfo:
    """What the routes need to know about the served model to validate a request."""

    name: str
    methods: tuple[str, ...]
    max_context: int

    @classmethod
    def of(cls, engine: "Engine") -> "ModelInfo":
        return cls(engine.name, tuple(engine.methods), engine.target.max_context)


class Backend(Protocol):
    info: ModelInfo
    metrics: Metrics  # the HTTP side's counters (requests, rejections)

    def start(self) -> None: ...
    def stop(self) -> None: ...
    async def prepare(self, params: GenParams) -> GenParams: ...  # tokenized here, or left to the replica
    def submit(self, params: GenParams, endpoint: str, stream: bool, arrival: float | None = None) -> Any: ...  # a Job; raises QueueFull / APIError
    async def health(self) -> tuple[bool, dict[str, Any]]: ...
    async def render_metrics(self) -> bytes: ...


class LocalBackend:
    """The single-process server: one Engine, one Scheduler, in this process."""

    def __init__(self, engine: "Engine", cfg: "ServerConfig") -> None:
        self.engine, self.info, self.timeout = engine, ModelInfo.of(engine), cfg.timeout
        self.metrics = Metrics()
        self.scheduler = Scheduler(
            engine, self.metrics, max_queue=cfg.max_queue, max_active=cfg.max_active, batch=cfg.batch, sessions=cfg.sessions
        )

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    async def prepare(self, params: GenParams) -> GenParams:
        """Tokenize in a thread pool, never on the worker that decodes for everyone, so the
        context-window check comes before queueing."""
        return await run_in_threadpool(tokenized, self.engine, params)

    def submit(self, params: GenParams, endpoint: str, stream: bool, arrival: float | None = None) -> Job:
        job = Job(params, asyncio.get_running_loop(), self.timeout, endpoint, want_pieces=stream,
                  arrival=time.monotonic() if arrival is None else arrival)
        self.scheduler.submit(job)
        return job

    async def health(self) -> tuple[bool, dict[str, Any]]:
        s = self.scheduler
        return s.alive, {"status": "ok" if s.alive else "worker stopped", "queue_depth": s.queue_depth, "active": s.active}

    async def render_metrics(self) -> bytes:
        return self.metrics.render()
