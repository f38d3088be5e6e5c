"""``/metrics`` of a deployment: the router's own counters, deployment-level series, and every
replica's paradec metrics with a ``replica`` label."""

from __future__ import annotations

from typing import Iterable

from prometheus_client import Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from ..metrics import Metrics
from .hub import Report

ROUTER_FAMILIES = ("paradec_requests",)  # what the router itself counts (HTTP answers); replicas count the rest


class ClusterMetrics:
    def __init__(self, http: Metrics) -> None:
        self.http = http
        r = http.registry
        self.replicas = Gauge("paradec_cluster_replicas", "Replicas ready (reporting to the router).", registry=r)
        self.queue_depth = Gauge("paradec_cluster_queue_depth", "Requests waiting for a decode slot, all replicas.", registry=r)
        self.active = Gauge("paradec_cluster_active_requests", "Requests being decoded, all replicas.", registry=r)
        self.retries = Counter("paradec_cluster_retries", "Requests retried on another replica after theirs failed.", registry=r)
        self.failed = Counter(
            "paradec_cluster_failed_requests", "Requests ended with an error because their replica failed, by stage.",
            ["stage"], registry=r,
        )
        self.routed = Counter(
            "paradec_cluster_routed", "Requests by routing: to the conversation's replica (affine_hit), "
            "elsewhere although one was known (affine_miss), or least loaded (new).", ["route"], registry=r,
        )
        for stage in ("retried", "streaming"):
            self.failed.labels(stage)
        for route in ("new", "affine_hit", "affine_miss"):
            self.routed.labels(route)
        self.pid = Gauge("paradec_cluster_replica_pid", "Process id of each ready replica.", ["replica", "node"], registry=r)

    def render(self, reports: list[Report]) -> bytes:
        self.replicas.set(len(reports))
        self.queue_depth.set(sum(r.queue_depth for r in reports))
        self.active.set(sum(r.active for r in reports))
        self.pid.clear()
        for r in reports:
            self.pid.labels(r.replica, r.node).set(r.pid)
        out = CollectorRegistry(auto_describe=False)
        out.register(_Merged(self.http.registry, reports))
        return generate_latest(out)


class _Merged:
    def __init__(self, own: CollectorRegistry, reports: list[Report]) -> None:
        self.own, self.reports = own, reports

    def collect(self) -> Iterable[Metric]:
        for fam in self.own.collect():
            if fam.name in ROUTER_FAMILIES or fam.name.startswith("paradec_cluster_"):
                yield fam
        merged: dict[str, Metric] = {}
        for rep in sorted(self.reports, key=lambda r: r.replica):
            for fam in text_string_to_metric_families(rep.metrics.decode()):
                if fam.name in ROUTER_FAMILIES:
                    continue
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for s in fam.samples:
                    out.add_sample(s.name, {**s.labels, "replica": rep.replica}, s.value, s.timestamp, s.exemplar)
        yield from merged.values()
