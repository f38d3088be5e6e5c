"""Where the replicas report: their metrics text and load, every ``REPORT_S`` seconds.

The router reads it for ``/metrics`` (every replica's metrics, labelled) and ``/health`` (a
replica that has not reported for ``STALE_S`` is not ready: it died, or is still loading).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ray import serve

REPORT_S = 0.5
STALE_S = 5.0


@dataclass(frozen=True)
class Report:
    replica: str
    pid: int
    node: str
    metrics: bytes  # Prometheus text of the replica's own registry
    queue_depth: int
    active: int
    at: float = 0.0


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class Hub:
    def __init__(self) -> None:
        self._reports: dict[str, Report] = {}

    def report(self, r: Report) -> None:
        self._reports[r.replica] = Report(**{**r.__dict__, "at": time.monotonic()})

    def gone(self, replica: str) -> None:
        self._reports.pop(replica, None)

    def live(self) -> list[Report]:
        now = time.monotonic()
        for k in [k for k, r in self._reports.items() if now - r.at > 10 * STALE_S]:
            del self._reports[k]  # long dead: forget
        return [r for r in self._reports.values() if now - r.at <= STALE_S]
