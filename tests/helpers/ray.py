"""Ray Serve deployments for the tests: ``paradec serve --replicas N`` as a child process on
loopback, torn down (with its local Ray instance) when the test module ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

SRC = str(Path(__file__).resolve().parents[1] / "src")
START_S = 240  # Ray and the replicas start in ~30 s on 2 idle cores; a loaded CI machine gets room
RAY_DAEMONS = ("raylet", "gcs_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    # RAY_AUTH_MODE: the test clusters are loopback-only and short-lived; no token files are written or read
    e = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, e.get("PYTHONPATH")) if p)
    return e


def ray_daemons() -> set[int]:
    """Pids of the Ray daemons running on this machine."""
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(k in cmd.split(" ")[0] for k in RAY_DAEMONS):
                pids.add(int(d.name))
    return pids


def stop_group(proc: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM the child (it tears its deployment and Ray down), then SIGKILL its whole session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


def wait_health(url: str, proc: subprocess.Popen, replicas: int, timeout: float = START_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"paradec serve exited with {proc.returncode}")
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            if r.status_code == 200 and r.json().get("replicas") == replicas:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"no {replicas} ready replicas at {url} within {timeout:.0f} s")


@contextmanager
def deployment(model_dir: str, *args: str, replicas: int = 2, log: Path | None = None) -> Iterator[str]:
    """``paradec serve --replicas N`` on a free loopback port; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "paradec.cli", "serve", "-m", model_dir, "--dtype", "float64", "--served-model-name", "tiny",
           "--port", str(port), "--replicas", str(replicas), *args]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, proc, replicas)
        yield url
    finally:
        stop_group(proc)
        if log:
            out.close()


def replica_served(metrics: str) -> dict[str, float]:
    """Completion tokens per replica, from /metrics."""
    import re

    served: dict[str, float] = {}
    for m in re.finditer(r'^paradec_completion_tokens_total\{method="[^"]*",replica="([^"]+)"\} (\S+)$', metrics, re.M):
        served[m.group(1)] = served.get(m.group(1), 0.0) + float(m.group(2))
    return served


def replica_pids(metrics: str) -> dict[str, int]:
    import re

    return {m.group(2): int(float(m.group(3))) for m in re.finditer(
        r'^paradec_cluster_replica_pid\{node="([^"]*)",replica="([^"]+)"\} (\S+)$', metrics, re.M)}
