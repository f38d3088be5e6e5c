"""Two Ray nodes on this machine (a head and a worker, each with its own ports and temp folder,
started by the test and torn down at its end), one replica on each: requests reach both. The
same deployment runs with ``--no-affinity``: a conversation's turns then draft from scratch."""

from __future__ import annotations

import socket
import subprocess
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

import paradec

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'paradec[ray]')")

from helpers.load import mixed_jobs, run_load  # noqa: E402
from helpers.ray import env, free_port, replica_served, stop_group, wait_health  # noqa: E402
from test_ray_serve import fresh_suffix, suffix_turns  # noqa: E402

RAY = str(Path(sys.executable).parent / "ray")


PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
         "runtime-env-agent-port", "metrics-export-port")


def ray_node(tmp: Path, *args: str) -> subprocess.Popen:
    """``ray start --block`` (its own ports and temp folder); its log goes to ``tmp``.log."""
    ports = sorted({free_port() for _ in range(3 * len(PORTS))})[: len(PORTS)]  # distinct
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", str(tmp),
           "--disable-usage-stats", *[x for k, p in zip(PORTS, ports) for x in (f"--{k}", str(p))], *args]
    log = open(f"{tmp}.log", "wb")
    return subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _nodes_alive(address: str, want: int, timeout: float = 120) -> None:
    """Wait until the cluster at ``address`` has ``want`` live nodes (its GCS port first)."""
    host, port = address.split(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Ray head at {address}") from None
            time.sleep(0.5)
    code = ("import ray, sys, time\n"
            f"ray.init(address='{address}', logging_level='ERROR')\n"
            "alive = lambda: sum(n['Alive'] for n in ray.nodes())\n"
            f"t = time.time()\nwhile alive() < {want} and time.time() - t < {timeout}: time.sleep(0.5)\n"
            f"sys.exit(0 if alive() >= {want} else 1)\n")
    subprocess.run([sys.executable, "-c", code], env=env(), check=True, timeout=timeout + 60)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    # a short folder of its own: Ray's socket paths under it must stay within AF_UNIX's 107 bytes,
    # which pytest's numbered temp folders can exceed
    base = Path(tempfile.mkdtemp(prefix="pdray-"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)  # last, after both nodes stopped
        head = ray_node(base / "head", "--head", "--port", str(port), "--include-dashboard", "false",
                        "--ray-client-server-port", str(free_port()))
        stack.callback(stop_group, head, 30)
        _nodes_alive(address, 1)
        for attempt in range(2):  # a port taken meanwhile by another process: once more, on new ports
            worker = ray_node(base / f"worker{attempt}", "--address", address)
            stack.callback(stop_group, worker, 30)  # the worker stops first, then the head
            try:
                _nodes_alive(address, 2, timeout=90)
                break
            except subprocess.CalledProcessError:
                if attempt:
                    raise
                stop_group(worker, 30)
        yield address


@pytest.fixture(scope="module")
def url(two_nodes, tiny_model_dir, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("ray-nodes-serve") / "serve.log", "wb")
    cmd = [sys.executable, "-m", "paradec.cli", "serve", "-m", tiny_model_dir, "--dtype", "float64", "--served-model-name",
           "tiny", "--port", str(port), "--replicas", "2", "--ray-address", two_nodes, "--no-affinity"]
    proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    u = f"http://127.0.0.1:{port}"
    try:
        wait_health(u, proc, 2)
        yield u
    finally:
        stop_group(proc)
        log.close()


def test_one_replica_per_node_and_both_serve(url):
    metrics = httpx.get(f"{url}/metrics").text
    nodes = {line.split('node="')[1].split('"')[0] for line in metrics.splitlines()
             if line.startswith("paradec_cluster_replica_pid{")}
    assert len(nodes) == 2  # Ray spread the replicas over the two nodes
    results, _ = run_load(url, mixed_jobs(40), 8)
    assert all(r.error is None for r in results.values()) and len(results) == 40
    served = replica_served(httpx.get(f"{url}/metrics").text)
    assert len(served) == 2 and all(v > 0 for v in served.values()), served


def test_without_affinity_later_turns_draft_from_scratch(url, tiny_model_dir):
    turns = suffix_turns(url, "cold-user")
    fresh = fresh_suffix(paradec.load(tiny_model_dir, dtype="float64"))
    # every turn as a fresh drafter; with affinity the later turns accept more (tests/test_ray_serve.py)
    assert [a for _, a in turns] == pytest.approx([fresh] * len(turns)), (fresh, turns)
