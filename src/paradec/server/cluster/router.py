"""The ingress deployment: the same FastAPI app as the single-process server (``app.build_app``),
built in the router's replica over a RemoteBackend and mounted through Ray Serve's ingress."""

from __future__ import annotations

from ray import serve

from ..app import ServerConfig, build_app
from ..backend import ModelInfo
from .remote import RemoteBackend


@serve.ingress()
class Router:
    def __init__(self, replicas, hub, info: ModelInfo, config: ServerConfig, affinity: bool) -> None:
        from prometheus_client import disable_created_metrics

        disable_created_metrics()
        self._config = config
        self._backend = RemoteBackend(info, config.timeout, affinity, replicas, hub)

    def __serve_build_asgi_app__(self):
        return build_app(self._backend, self._config)
