"""The cluster options of ``paradec serve`` and the checks made before Ray starts."""

from __future__ import annotations

import importlib.util
import socket
from dataclasses import dataclass
from typing import Optional

from ...errors import ParadecError
from ...models.causal_lm import TransformersLM
from ...options import option

REPLICA_OVERHEAD_BYTES = 768 << 20  # a Ray worker with torch and the server imported, before the weights
SESSIONS_PER_REPLICA = 64  # conversations whose drafter state a replica keeps


@dataclass(frozen=True)
class ClusterConfig:
    replicas: int = 1
    ray_address: Optional[str] = option(None, "--ray-address", help="Join this Ray cluster (HOST:PORT or auto); "
                                        "default: start a local Ray on 127.0.0.1.")
    replica_threads: int = option(1, "--replica-threads", help="Torch threads (and CPUs reserved) per replica.")
    affinity: bool = option(True, "--affinity/--no-affinity",
                            help="Send a conversation's turns to the replica holding its drafter state.")
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; None: a fixed count

    def check(self) -> None:
        if self.replicas < 1:
            raise ParadecError(f"--replicas must be >= 1, got {self.replicas}")
        if self.replica_threads < 1:
            raise ParadecError(f"--replica-threads must be >= 1, got {self.replica_threads}")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if lo < 1 or hi < lo:
                raise ParadecError(f"--autoscale MIN:MAX needs 1 <= MIN <= MAX, got {lo}:{hi}")

    @property
    def initial_replicas(self) -> int:
        if self.autoscale is None:
            return self.replicas
        lo, hi = self.autoscale
        return min(max(self.replicas, lo), hi)

    @property
    def max_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ParadecError(f"--autoscale expects MIN:MAX (two integers), got '{text}'")
    return int(parts[0]), int(parts[1])


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise ParadecError("--replicas needs Ray Serve, which is not installed: pip install 'paradec[ray]'")


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast on a host:port nobody listens on (Ray itself would retry for a long time)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ParadecError(f"--ray-address expects HOST:PORT, 'auto' or ray://..., got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ParadecError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def replica_bytes(engine) -> int:
    """Estimated memory of one replica: its model's weights and buffers plus a worker's fixed cost."""
    seen, total = set(), 0
    for m in {id(x): x for x in (engine.target, engine.draft) if x is not None}.values():
        module = m.model if isinstance(m, TransformersLM) else m
        for t in [*module.parameters(), *module.buffers()]:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total + REPLICA_OVERHEAD_BYTES


def available_bytes() -> int:
    """This machine's available memory (MemAvailable), or 0 when unknown."""
    from ...models.native.gguf_model import available_memory

    return available_memory() or 0


def check_memory(replicas: int, per_replica: int, available: int, where: str) -> None:
    if available and replicas * per_replica > available:
        gib = 1 << 30
        raise ParadecError(
            f"{replicas} replicas need about {replicas * per_replica / gib:.1f} GiB ({per_replica / gib:.2f} GiB each), "
            f"but {where} has {available / gib:.1f} GiB available"
        )
