"""Where the routes send their jobs: one local Scheduler, or (``server.cluster``) a deployment of them.

A backend hands back a job-like object: ``events`` (an asyncio queue of ``("ready", n)``,
``("text", piece)``, then ``("done", Result)`` or ``("error", APIError)``), ``deadline``,
``timeout`` and ``cancel(reason)``, exactly what ``scheduler.Job`` offers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .metrics import Metrics
from .scheduler import GenParams, Job, Scheduler

if TYPE_CHECKING:
    from ..engine import Engine
    from .app import ServerConfig


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
    def submit(self, params: GenParams, endpoint: str, stream: bool) -> Any: ...  # a Job; raises QueueFull / APIError
    async def health(self) -> tuple[bool, dict[str, Any]]: ...
    async def render_metrics(self) -> bytes: ...


class LocalBackend:
    """The single-process server: one Engine, one Scheduler, in this process."""

    def __init__(self, engine: "Engine", cfg: "ServerConfig") -> None:
        self.info, self.timeout = ModelInfo.of(engine), cfg.timeout
        self.metrics = Metrics()
        self.scheduler = Scheduler(
            engine, self.metrics, max_queue=cfg.max_queue, max_active=cfg.max_active, batch=cfg.batch, sessions=cfg.sessions
        )

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    def submit(self, params: GenParams, endpoint: str, stream: bool) -> Job:
        job = Job(params, asyncio.get_running_loop(), self.timeout, endpoint, want_pieces=stream)
        self.scheduler.submit(job)
        return job

    async def health(self) -> tuple[bool, dict[str, Any]]:
        s = self.scheduler
        return s.alive, {"status": "ok" if s.alive else "worker stopped", "queue_depth": s.queue_depth, "active": s.active}

    async def render_metrics(self) -> bytes:
        return self.metrics.render()
