"""The model deployment: each replica owns one Engine and one Scheduler (as the single-process
server does) and streams each job's events back to the router through its handle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import ray
from ray import serve
from starlette.concurrency import run_in_threadpool

from ..errors import APIError
from ..metrics import Metrics
from ..request import GenParams
from ..scheduler import Job, QueueFull, Scheduler, tokenized
from .hub import REPORT_S, Report

log = logging.getLogger("paradec.server")


@dataclass(frozen=True)
class ReplicaSpec:
    model: str | None
    draft: str | None
    dtype: str
    device: str
    threads: int
    max_queue: int
    max_active: int
    batch: bool
    sessions: int  # conversations whose drafter state this replica keeps (0: none)
    env: dict[str, str] = field(default_factory=dict)
    backend: str = "auto"  # native | torch | auto (paradec.load)


class Replica:
    async def __init__(self, spec: ReplicaSpec, hub) -> None:
        import torch
        from prometheus_client import disable_created_metrics

        from ...engine import load

        disable_created_metrics()
        os.environ.update(spec.env)
        torch.set_num_threads(spec.threads)
        self.engine = load(spec.model, draft=spec.draft, dtype=spec.dtype, device=spec.device, backend=spec.backend)
        self.metrics = Metrics()
        self.scheduler = Scheduler(
            self.engine, self.metrics, max_queue=spec.max_queue, max_active=spec.max_active, batch=spec.batch,
            sessions=spec.sessions,
        )
        self.scheduler.start()
        self.id = serve.get_replica_context().replica_id.unique_id
        self.hub = hub
        self._node = ray.get_runtime_context().get_node_id()
        self._reporter = asyncio.get_running_loop().create_task(self._report_forever())

    async def _report_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                s = self.scheduler
                if s.alive:
                    await self.hub.report.remote(
                        Report(self.id, os.getpid(), self._node, self.metrics.render(), s.queue_depth, s.active)
                    )
            await asyncio.sleep(REPORT_S)

    async def generate(
        self, params: GenParams, endpoint: str, want_pieces: bool, timeout: float, replica_hint: str | None = None,
        avoid: str | None = None,
    ) -> AsyncIterator[tuple[str, Any]]:
        """("replica", id), then the job's events as the local scheduler emits them; the last is ("done", Result) or
        ("error", APIError). ``replica_hint``/``avoid`` are read by the request router only."""
        yield "replica", self.id
        arrival = time.monotonic()
        try:
            params = await run_in_threadpool(tokenized, self.engine, params)  # never on the decoding worker
        except APIError as e:
            yield "error", e
            return
        job = Job(params, asyncio.get_running_loop(), timeout, endpoint, want_pieces=want_pieces, arrival=arrival)
        try:
            self.scheduler.submit(job)
        except QueueFull as e:
            self.metrics.rejected.labels("queue_full").inc()
            yield "error", APIError(429, str(e), code="queue_full")
            return
        except APIError as e:
            yield "error", e
            return
        try:
            while True:
                kind, payload = await job.events.get()
                if kind == "done":
                    payload.replica = self.id
                yield kind, payload
                if kind in ("done", "error"):
                    return
        finally:
            job.cancel("disconnect")  # no-op once finished; stops decoding for a request the router dropped

    def check_health(self) -> None:  # Ray Serve restarts a replica whose worker thread died
        if not self.scheduler.alive:
            raise RuntimeError("the decoding worker is not running")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._reporter.cancel()
            self.scheduler.stop()
