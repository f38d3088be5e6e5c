"""``paradec serve --replicas 2`` on a local Ray instance (started by the test, loopback only):
load through the official openai client, session affinity, and a replica killed mid-load.
One deployment serves the whole module; the tests run in file order (the kill comes last)."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'paradec[ray]')")

import paradec  # noqa: E402
from helpers.load import Job, mixed_jobs, run_load  # noqa: E402
from helpers.ray import deployment, replica_pids, replica_served, wait_health  # noqa: E402
from helpers.server import metric  # noqa: E402
from test_server_load import MAX_TOKENS, METHODS  # noqa: E402

CLIENTS, REQUESTS = 16, 200
KILL_TOKENS = 200  # long answers: the kill lands mid-request
LONG_PROMPTS = ["abc abc abc", "Once upon a time", "aaaa bbbb", "red green blue red"]  # 85-184 tokens before EOS


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    return paradec.load(tiny_model_dir, dtype="float64")


@pytest.fixture(scope="module")
def url(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("ray-serve") / "serve.log"
    with deployment(tiny_model_dir, "--max-queue", "256", "--max-active", "16", log=log) as u:
        yield u


def _want(ref, jobs, max_tokens=MAX_TOKENS) -> dict:
    want = {}
    for job in jobs:
        if (job.prompt, job.chat) not in want:
            src = [{"role": "user", "content": job.prompt}] if job.chat else job.prompt
            g = ref.generate(src, method="ar", chat=job.chat, max_new_tokens=max_tokens)
            want[(job.prompt, job.chat)] = (g.text, len(g.token_ids))
    return want


def test_load_through_ray_serve_is_complete_correct_and_spread(url, ref):
    jobs = mixed_jobs(REQUESTS)
    want = _want(ref, jobs)
    results, wall = run_load(url, jobs, CLIENTS)
    assert len(results) == REQUESTS
    for job in jobs:
        r = results[job.i]
        assert r.error is None, (job, r.error)
        assert (r.text, r.tokens) == want[(job.prompt, job.chat)], job
    metrics = httpx.get(f"{url}/metrics").text
    served = replica_served(metrics)
    assert len(served) == 2 and all(v > 0 for v in served.values()), served  # both replicas decoded
    assert len({r.replica for r in results.values()}) == 2
    ok = metric(metrics, "paradec_requests_total", endpoint="/v1/completions", status="200") + metric(
        metrics, "paradec_requests_total", endpoint="/v1/chat/completions", status="200")
    assert ok >= REQUESTS
    assert metric(metrics, "paradec_cluster_replicas") == 2
    print(f"\nray serve, 2 replicas: {REQUESTS / wall:.1f} req/s, wall {wall:.2f} s")


def _turn(client: httpx.Client, body: dict) -> dict:
    r = client.post("/v1/chat/completions" if "messages" in body else "/v1/completions",
                    json={"model": "tiny", "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_conversation_stays_on_one_replica(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        before = metric(c.get("/metrics").text, "paradec_cluster_routed_total", route="affine_hit")
        # by message prefix: each turn sends the history back
        msgs, where = [{"role": "user", "content": "hello there"}], []
        for turn in range(4):
            d = _turn(c, {"messages": msgs, "max_tokens": 12, "paradec": {"method": "suffix"}})
            where.append(d["paradec"]["replica"])
            msgs += [{"role": "assistant", "content": d["choices"][0]["message"]["content"]},
                     {"role": "user", "content": f"and then {turn}?"}]
        assert len(set(where)) == 1, where
        # by the OpenAI user field
        users = {u: {_turn(c, {"prompt": f"to be or {i}", "max_tokens": 8, "user": u})["paradec"]["replica"] for i in range(4)}
                 for u in ("alice", "bob", "carol")}
        assert all(len(v) == 1 for v in users.values()), users
        after = metric(c.get("/metrics").text, "paradec_cluster_routed_total", route="affine_hit")
    assert after - before == 3 + 3 * 3


def suffix_turns(url: str, user: str, turns: int = 3, max_tokens: int = 40) -> list[tuple[str, float]]:
    """One user's requests repeating a prompt with method suffix: (text, tokens per forward) per turn."""
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for _ in range(turns):
            d = _turn(c, {"prompt": "1 2 3 4 5", "max_tokens": max_tokens, "user": user, "paradec": {"method": "suffix"}})
            assert d["usage"]["completion_tokens"] > max_tokens // 2
            out.append((d["choices"][0]["text"], d["paradec"]["mean_accepted"]))
    return out


def fresh_suffix(ref) -> float:
    """Tokens per forward of one ``suffix_turns`` turn with a fresh drafter (the library's)."""
    return ref.generate("1 2 3 4 5", method="suffix", chat=False, max_new_tokens=40).stats.mean_accepted


def test_affinity_keeps_the_drafter_warm(url, ref):
    turns = suffix_turns(url, "warm-user")
    want = ref.generate("1 2 3 4 5", method="ar", chat=False, max_new_tokens=40).text
    assert [t for t, _ in turns] == [want] * len(turns)  # lossless
    fresh = fresh_suffix(ref)
    assert turns[0][1] == pytest.approx(fresh)
    assert all(a > fresh for _, a in turns[1:]), (fresh, turns)  # later turns draft from the earlier answers
    # with --no-affinity every turn is `fresh` (tests/test_ray_nodes.py)


def _load_in_background(url: str, jobs, clients: int):
    import threading

    box: dict = {}
    t = threading.Thread(target=lambda: box.update(
        zip(("results", "wall"), run_load(url, jobs, clients, max_tokens=KILL_TOKENS, timeout=120))))
    t.start()
    return t, box


def test_a_killed_replica_fails_cleanly_and_is_replaced(url, ref):
    # completions whose answers are long (100-200 tokens), streaming and not, several methods
    jobs = [Job(i, LONG_PROMPTS[i % len(LONG_PROMPTS)], False, bool(i % 2), METHODS[(i // 2) % len(METHODS)]) for i in range(64)]
    want = _want(ref, jobs, KILL_TOKENS)
    with httpx.Client(base_url=url, timeout=30) as c:
        pids = replica_pids(c.get("/metrics").text)
        assert len(pids) == 2
        failed_before, retries_before = _failures(c)
        thread, box = _load_in_background(url, jobs, 8)
        deadline = time.monotonic() + 60
        while True:  # mid-load: kill the replica decoding the most requests
            text = c.get("/metrics").text
            active = {r: metric(text, "paradec_active_requests", replica=r) for r in pids}
            victim = max(active, key=active.get)
            if active[victim] >= 3:
                break
            assert time.monotonic() < deadline and thread.is_alive(), "the replicas never got busy"
            time.sleep(0.05)
        pid = pids[victim]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        thread.join(180)
        assert not thread.is_alive(), "the load did not finish: a request hung"
        results = box["results"]
        assert len(results) == len(jobs)
        errors = 0
        for job in jobs:
            r = results[job.i]
            if r.error is None:
                assert (r.text, r.tokens) == want[(job.prompt, job.chat)], job
            else:  # the explicit error: 503 (non-streaming) or an error event in the stream
                errors += 1
                assert getattr(r.error, "status_code", 503) == 503 or "replica" in str(r.error), r.error
        failed_after, retries_after = _failures(c)
        assert failed_after - failed_before == errors  # every failure is counted
        retried = retries_after - retries_before
        assert retried + errors > 0, (victim, pid, box["wall"], time.monotonic() - killed_at)  # the kill hit requests in flight
        health = wait_health(url, _Alive(), 2, timeout=180)  # Ray restarts the replica
        assert health["replicas"] == 2
        new = replica_pids(c.get("/metrics").text)
        assert victim not in new and len(new) == 2
    after, _ = run_load(url, mixed_jobs(50), 8)
    assert all(r.error is None for r in after.values()) and len(after) == 50
    print(f"\nkilled replica {victim}: {retried:g} requests retried, {errors} of {len(jobs)} ended with the explicit error")


def _failures(c: httpx.Client) -> tuple[float, float]:
    text = c.get("/metrics").text
    failed = sum(metric(text, "paradec_cluster_failed_requests_total", stage=s) for s in ("retried", "streaming"))
    return failed, metric(text, "paradec_cluster_retries_total")


class _Alive:  # wait_health's process argument: the deployment's process is the fixture's
    returncode = None

    def poll(self):
        return None
