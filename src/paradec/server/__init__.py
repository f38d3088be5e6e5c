"""``paradec serve``: an OpenAI-compatible HTTP server over one Engine.

- ``config``    ServerConfig (the app), LaunchConfig (what to load, where to listen), ServeOptions
                (every ``paradec serve`` option, defined once on these configs)
- ``request``   what a request asks for (GenParams) and gets back (Result)
- ``schemas``   request / response bodies (pydantic)
- ``errors``    OpenAI-style error objects and the exception handlers
- ``scheduler`` the worker thread that owns the engine and interleaves requests step by step
- ``sessions``  drafters kept across a conversation's turns
- ``metrics``   Prometheus metrics
- ``backend``   where jobs go (this process's scheduler, or a Ray Serve cluster: ``cluster/``)
- ``app``       the FastAPI routes
- ``transport`` the guarded HTTP protocol (header/body timeouts, body limit)
- ``launch``    load a model and run uvicorn (``paradec.cli.serve`` is its command line)
"""

from __future__ import annotations

__all__ = ["create_app", "ServerConfig", "serve"]


def __getattr__(name: str):  # lazy: the CLI imports this package without needing FastAPI yet
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServerConfig":
        from .config import ServerConfig

        return ServerConfig
    if name == "serve":
        from .launch import serve

        return serve
    raise AttributeError(name)
