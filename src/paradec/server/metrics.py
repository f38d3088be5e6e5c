"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)

from ..stats import DecodeStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ACCEPT_BUCKETS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("paradec_requests", "HTTP requests answered, by endpoint and status code.", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("paradec_prompt_tokens", "Prompt tokens of finished generations.", registry=r)
        self.completion_tokens = Counter("paradec_completion_tokens", "Tokens generated and returned.", ["method"], registry=r)
        self.forwards = Counter("paradec_forwards", "Target forwards while decoding (prefill not counted).", ["method"], registry=r)
        self.committed = Counter(
            "paradec_committed_tokens", "Tokens committed by verification (accepted draft + bonus/recovered).", ["method"], registry=r
        )
        self.drafted = Counter("paradec_drafted_tokens", "Draft tokens sent to the target.", ["method"], registry=r)
        self.accepted = Counter("paradec_accepted_draft_tokens", "Draft tokens the target kept.", ["method"], registry=r)
        self.mean_accepted = Gauge(
            "paradec_mean_accepted_tokens", "Tokens committed per target forward since start (committed / forwards).", ["method"], registry=r
        )
        self.request_accepted = Histogram(
            "paradec_request_mean_accepted_tokens", "Per request: tokens committed per target forward.", ["method"],
            buckets=ACCEPT_BUCKETS, registry=r,
        )
        self.cancelled = Counter("paradec_cancelled", "Generations ended early, by reason.", ["reason"], registry=r)
        self.rejected = Counter("paradec_rejected", "Requests refused before queueing, by reason.", ["reason"], registry=r)
        self.queue_depth = Gauge("paradec_queue_depth", "Requests waiting for a decode slot.", registry=r)
        self.active = Gauge("paradec_active_requests", "Requests being decoded (interleaved step by step).", registry=r)
        self.latency = Histogram(
            "paradec_request_latency_seconds", "Arrival to last token, by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram("paradec_time_to_first_token_seconds", "Arrival to first token.", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("paradec_queue_wait_seconds", "Arrival to first decode step.", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "paradec_batch_size", "Requests per batched forward (continuous batching of plain decoding steps).",
            buckets=(2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=r,
        )
        self.busy = Counter("paradec_worker_busy_seconds", "Time the worker spent admitting and decoding.", registry=r)
        self._totals: dict[str, list[int]] = {}

    def bind(self, queue_depth: Callable[[], int], active: Callable[[], int]) -> None:
        self.queue_depth.set_function(queue_depth)
        self.active.set_function(active)

    def finished(self, stats: DecodeStats, completion_tokens: int) -> None:
        m = stats.method or "?"
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.completion_tokens.labels(m).inc(completion_tokens)
        self.forwards.labels(m).inc(stats.forwards)
        self.committed.labels(m).inc(stats.committed)
        self.drafted.labels(m).inc(stats.drafted)
        self.accepted.labels(m).inc(stats.accepted)
        tot = self._totals.setdefault(m, [0, 0])
        tot[0] += stats.committed
        tot[1] += stats.forwards
        if tot[1]:
            self.mean_accepted.labels(m).set(tot[0] / tot[1])
        if stats.forwards:
            self.request_accepted.labels(m).observe(stats.mean_accepted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
