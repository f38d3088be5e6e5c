"""``paradec serve``: load the model once, then run the app under uvicorn (or, with
``cluster``, deploy it on Ray Serve: ``server.cluster.launch``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ParadecError
from .config import LaunchConfig, ServerConfig, load_checked
from .limits import TransportLimits


def check_args(launch: LaunchConfig, config: ServerConfig) -> None:
    from ..models.loader import parse_device, parse_dtype

    parse_dtype(launch.dtype), parse_device(launch.device)  # fail fast, before loading anything
    if not 0 < launch.port < 65536:
        raise ParadecError(f"--port must be in 1..65535, got {launch.port}")
    if config.max_queue < 1 or config.max_active < 1:
        raise ParadecError("--max-queue and --max-active must be >= 1")
    if config.timeout <= 0:
        raise ParadecError(f"--timeout must be > 0 seconds, got {config.timeout}")


def serve(launch: LaunchConfig, config: ServerConfig, cluster=None) -> None:
    """Serve ``config``'s app for the model ``launch`` names, on its host and port, until stopped.
    ``config.options`` may come as text (``--opt``); ``cluster``: a ``cluster.config.ClusterConfig``
    to deploy on Ray Serve instead."""
    from ..proposers import text_options

    check_args(launch, config)
    config = dataclasses.replace(config, options=text_options(config.method, dict(config.options)))
    if cluster is not None:
        from .cluster.config import require_ray

        cluster.check()
        require_ray()
        from .cluster.launch import serve_cluster

        return serve_cluster(launch, config, cluster)
    import uvicorn

    from .app import create_app

    engine = load_checked(launch, config)
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # no *_created series next to every counter in /metrics
    app = create_app(engine, config)
    uvicorn.run(app, **uvicorn_settings(config.limits), host=launch.host, port=launch.port, log_level=launch.log_level)


def uvicorn_settings(limits: TransportLimits) -> dict[str, Any]:
    """uvicorn's own settings for ``limits`` (the rest is enforced by ``transport``)."""
    from .transport import protocol_class

    return {"http": protocol_class(limits), "timeout_keep_alive": limits.keep_alive}
