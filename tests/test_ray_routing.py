"""The router's side of a deployment without a cluster: conversation affinity keys, health
while no replica reports, and the merged /metrics."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'paradec[ray]')")

from paradec.server.backend import ModelInfo  # noqa: E402
from paradec.server.cluster.hub import Report  # noqa: E402
from paradec.server.cluster.remote import RemoteBackend  # noqa: E402
from paradec.server.metrics import Metrics  # noqa: E402
from paradec.server.request import GenParams, Result  # noqa: E402
from paradec.stats import DecodeStats  # noqa: E402
from helpers.server import metric  # noqa: E402

INFO = ModelInfo("tiny", ("ar", "suffix"), 256)


class _Hub:
    def __init__(self, reports):
        self.live = self  # hub.live.remote() -> awaitable of the reports
        self.reports = reports

    def remote(self):
        async def get():
            return self.reports

        return get()


def _chat(*contents: str) -> GenParams:
    roles = ["user", "assistant"] * len(contents)
    return GenParams([{"role": r, "content": c} for r, c in zip(roles, contents)], True, "suffix", {}, 8)


def _result(text: str, replica: str) -> Result:
    return Result(text, [], 3, DecodeStats(), "stop", 0.0, replica=replica)


def test_a_conversation_is_known_by_its_prefix_and_its_session():
    b = RemoteBackend(INFO, 60, True, None, _Hub([]))
    p1, hint, key = b._route(_chat("hi"))
    assert hint is None and p1.session  # a new conversation: least loaded, a fresh session id
    b._learn(p1, key, _result("hello!", "A"))
    p2, hint, key2 = b._route(_chat("hi", "hello!", "more?"))
    assert (p2.session, hint) == (p1.session, "A")  # the next turn: same session, same replica
    b._learn(p2, key2, _result("sure", "B"))  # served elsewhere (A was full): follow it
    p3, hint, _ = b._route(_chat("hi", "hello!", "more?", "sure", "and?"))
    assert (p3.session, hint) == (p1.session, "B")
    other, hint, _ = b._route(_chat("hi", "something else", "more?"))
    assert hint is None and other.session != p1.session  # another history: another conversation
    u = GenParams("x", False, "suffix", {}, 8, session="alice")
    pu, hint, key = b._route(u)
    assert hint is None and pu.session == "alice"
    b._learn(pu, key, _result("y", "C"))
    assert b._route(u)[1] == "C"


def test_no_affinity_sends_no_session():
    b = RemoteBackend(INFO, 60, False, None, _Hub([]))
    p, hint, key = b._route(GenParams("x", False, "suffix", {}, 8, session="alice"))
    assert (p.session, hint, key) == (None, None, None)


def _replica_metrics(tokens: int) -> bytes:
    m = Metrics()
    m.completion_tokens.labels("suffix").inc(tokens)
    return m.render()


def test_health_and_metrics():
    assert asyncio.run(RemoteBackend(INFO, 60, True, None, _Hub([])).health())[0] is False  # no replica ready: 503
    reports = [Report("A", 11, "n1", _replica_metrics(5), 2, 1), Report("B", 12, "n2", _replica_metrics(7), 0, 3)]
    b = RemoteBackend(INFO, 60, True, None, _Hub(reports))
    ok, body = asyncio.run(b.health())
    assert ok and body["replicas"] == 2 and body["queue_depth"] == 2 and body["active"] == 4
    b.cluster.retries.inc()
    text = asyncio.run(b.render_metrics()).decode()
    assert metric(text, "paradec_completion_tokens_total", method="suffix", replica="A") == 5
    assert metric(text, "paradec_completion_tokens_total", method="suffix", replica="B") == 7
    assert metric(text, "paradec_cluster_replicas") == 2 and metric(text, "paradec_cluster_queue_depth") == 2
    assert metric(text, "paradec_cluster_retries_total") == 1
    assert metric(text, "paradec_cluster_replica_pid", node="n2", replica="B") == 12
    assert text.count("# TYPE paradec_completion_tokens_total counter") == 1  # one family, two labelled series
