"""The server's settings (``ServerConfig``: what the app serves with; ``LaunchConfig``: what to load,
where to listen) and ``paradec serve``'s command line (``ServeOptions``), whose options are the
fields of these configs, of the edge's ``TransportLimits``, the per-request ``Limits`` and the
``ClusterConfig``: each defined once, on the config it sets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..errors import ParadecError
from ..options import like, make, option
from ..proposers.options import Limits
from .cluster.config import ClusterConfig, parse_autoscale
from .limits import TransportLimits

MIB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    """What the app serves with, beyond the engine. ``options``: the default method's options;
    ``limits``: the HTTP edge's; ``option_limits``: bounds on per-request method options (server
    ``--opt`` is not bounded); ``sessions``: conversations whose drafter state is kept (0: none,
    as a fresh drafter per request). None takes the defaults."""

    method: str = option("pld", "--method", help="Default decoding method; a request may override it.")
    options: dict[str, Any] = field(default_factory=dict)
    served_name: Optional[str] = option(None, "--served-model-name", help="Model id for clients (default: --model).")
    max_queue: int = option(64, "--max-queue", help="Requests waiting beyond this answer 429.")
    max_active: int = option(16, "--max-active", help="Requests decoded at once (interleaved step by step).")
    timeout: float = option(600.0, "--timeout", help="Per-request limit in seconds, queueing included.")
    batch: bool = option(True, "--batch/--no-batch", help="Run the plain decoding steps of concurrent requests in one forward.")
    limits: Optional[TransportLimits] = None
    option_limits: Optional[Limits] = None
    sessions: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options or {}))
        object.__setattr__(self, "timeout", float(self.timeout))
        object.__setattr__(self, "limits", self.limits or TransportLimits())
        object.__setattr__(self, "option_limits", self.option_limits or Limits())


@dataclass(frozen=True)
class LaunchConfig:
    """What to load and where to listen."""

    model: str = option("smollm2-135m", "--model", "-m", help="Packaged name, model dir, .gguf file or cached hub id.")
    draft_model: Optional[str] = option(None, "--draft-model", help="Draft model (same tokenizer) for method draft.")
    dtype: str = option("float32", "--dtype", help="float32, bfloat16, float16 or float64.")
    device: str = option("cpu", "--device", help="cpu or cuda.")
    backend: str = option("auto", "--backend", help="auto (native for a GGUF on a CPU in float32, else torch), native "
                          "(the GGUF's quantized weights) or torch.")
    host: str = option("127.0.0.1", "--host")
    port: int = option(8000, "--port")
    log_level: str = "info"


@dataclass(frozen=True)
class ServeOptions:
    """``paradec serve``'s command line, in ``--help`` order. Each option is defined on the config
    it sets (``like``) or here where the command line differs from the config (``--opt`` text,
    ``--max-body-mb``, the optional cluster)."""

    model: str = like(LaunchConfig, "model")
    method: str = like(ServerConfig, "method")
    draft_model: Optional[str] = like(LaunchConfig, "draft_model")
    dtype: str = like(LaunchConfig, "dtype")
    device: str = like(LaunchConfig, "device")
    backend: str = like(LaunchConfig, "backend")
    host: str = like(LaunchConfig, "host")
    port: int = like(LaunchConfig, "port")
    max_queue: int = like(ServerConfig, "max_queue")
    max_active: int = like(ServerConfig, "max_active")
    batch: bool = like(ServerConfig, "batch")
    timeout: float = like(ServerConfig, "timeout")
    served_name: Optional[str] = like(ServerConfig, "served_name")
    opt: tuple[str, ...] = option((), "--opt", help="Default method option key=value (repeatable).")
    header_timeout: float = like(TransportLimits, "header_timeout")
    body_timeout: float = like(TransportLimits, "body_timeout")
    keep_alive: float = like(TransportLimits, "keep_alive")
    max_connections: int = like(TransportLimits, "max_connections")
    max_body_mb: float = option(TransportLimits.max_body_bytes / MIB, "--max-body-mb",
                                help="Largest request body in MiB, however framed (else 413).")
    max_draft_nodes: int = like(Limits, "max_draft_nodes")
    max_draft_depth: int = like(Limits, "max_draft_depth")
    max_draft_width: int = like(Limits, "max_draft_width")
    max_pool: int = like(Limits, "max_pool")
    allow_paths: tuple[str, ...] = like(Limits, "allow_paths")
    replicas: Optional[int] = option(None, "--replicas", help="Deploy N replicas (one model copy each) on Ray Serve; "
                                     "default: this one process, no Ray.")
    ray_address: Optional[str] = like(ClusterConfig, "ray_address")
    replica_threads: int = like(ClusterConfig, "replica_threads")
    affinity: bool = like(ClusterConfig, "affinity")
    autoscale: Optional[str] = option(None, "--autoscale", help="MIN:MAX replicas, scaled on ongoing requests.")

    def launch(self) -> LaunchConfig:
        return make(LaunchConfig, asdict(self))

    def server(self) -> ServerConfig:
        """The app's settings, the limits checked; ``--opt`` is parsed by the command (the method's
        own types apply later)."""
        if not 0 < self.max_body_mb < MIB:
            raise ParadecError(f"--max-body-mb must be in (0, 1048576), got {self.max_body_mb}")
        values = asdict(self)
        transport = make(TransportLimits, values, max_body_bytes=max(1, int(self.max_body_mb * MIB)))
        return make(ServerConfig, values, limits=transport, option_limits=make(Limits, values))

    def cluster(self) -> ClusterConfig | None:
        """The Ray Serve deployment asked for, or None (this one process)."""
        if self.replicas is not None or self.ray_address or self.autoscale:
            scale = parse_autoscale(self.autoscale)
            n = self.replicas if self.replicas is not None else (scale[0] if scale else 1)
            return ClusterConfig(n, self.ray_address, self.replica_threads, self.affinity, scale)
        if self.replica_threads != 1 or not self.affinity:
            raise ParadecError("--replica-threads and --no-affinity apply to --replicas (a Ray Serve deployment)")
        return None


def load_checked(launch: LaunchConfig, config: ServerConfig):
    """The engine for ``launch``, with ``config``'s default method and options checked against it."""
    from ..engine import load
    from ..proposers import make_proposer

    engine = load(launch.model, draft=launch.draft_model, dtype=launch.dtype, device=launch.device, backend=launch.backend)
    make_proposer(config.method, engine.models, config.options)  # a bad --method / --opt fails here, not per request
    return engine
