"""``paradec serve``: load the model once, then run the app under uvicorn (or, with
``cluster``, deploy it on Ray Serve: ``server.cluster.launch``)."""

from __future__ import annotations

from typing import Any

from ..errors import ParadecError
from .limits import TransportLimits


def check_args(port: int, max_queue: int, max_active: int, timeout: float, dtype: str, device: str) -> None:
    from ..models.loader import parse_device, parse_dtype

    parse_dtype(dtype), parse_device(device)  # fail fast, before loading anything
    if not 0 < port < 65536:
        raise ParadecError(f"--port must be in 1..65535, got {port}")
    if max_queue < 1 or max_active < 1:
        raise ParadecError("--max-queue and --max-active must be >= 1")
    if timeout <= 0:
        raise ParadecError(f"--timeout must be > 0 seconds, got {timeout}")


def load_checked(model: str | None, draft: str | None, dtype: str, device: str, method: str, options: dict[str, Any] | None,
                 backend: str = "auto"):
    from ..engine import load
    from ..proposers import make_proposer

    engine = load(model, draft=draft, dtype=dtype, device=device, backend=backend)
    make_proposer(method, engine.models, options)  # a bad --method / --opt fails here, not per request
    return engine


def serve(
    model: str | None = None,
    draft: str | None = None,
    method: str = "pld",
    options: dict[str, Any] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    backend: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    max_queue: int = 64,
    max_active: int = 16,
    timeout: float = 600.0,
    served_name: str | None = None,
    batch: bool = True,
    log_level: str = "info",
    limits: TransportLimits | None = None,
    option_limits: Any = None,
    cluster=None,
) -> None:
    """``limits``: the HTTP edge's ``TransportLimits``; ``option_limits``: a
    ``paradec.proposers.Limits`` bounding per-request method options (the defaults when None);
    ``cluster``: a ``cluster.config.ClusterConfig`` to deploy on Ray Serve instead."""
    from ..proposers import Limits, text_options
    from .app import ServerConfig

    check_args(port, max_queue, max_active, timeout, dtype, device)
    limits = limits or TransportLimits()
    option_limits = option_limits or Limits()
    options = text_options(method, dict(options or {}))  # --opt values come as text
    config = ServerConfig(method, options, served_name, max_queue, max_active, timeout, batch,
                          limits=limits, option_limits=option_limits)
    if cluster is not None:
        from .cluster.config import require_ray

        cluster.check()
        require_ray()
        from .cluster.launch import serve_cluster

        return serve_cluster(model, draft, dtype, device, host, port, config, cluster, backend=backend)
    import uvicorn

    from .app import create_app

    engine = load_checked(model, draft, dtype, device, method, options, backend)
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # no *_created series next to every counter in /metrics
    app = create_app(engine, config)
    uvicorn.run(app, **uvicorn_settings(limits), host=host, port=port, log_level=log_level)


def uvicorn_settings(limits: TransportLimits) -> dict[str, Any]:
    """uvicorn's own settings for ``limits`` (the rest is enforced by ``transport``)."""
    from .transport import protocol_class

    return {"http": protocol_class(limits), "timeout_keep_alive": limits.keep_alive}
