"""``paradec serve``: an OpenAI-compatible HTTP server over one Engine.

- ``schemas``   request / response bodies (pydantic)
- ``errors``    OpenAI-style error objects and the exception handlers
- ``scheduler`` the worker thread that owns the engine and interleaves requests step by step
- ``metrics``   Prometheus metrics
- ``app``       the FastAPI routes
- ``launch``    load a model and run uvicorn; ``command`` is its CLI front
"""

from __future__ import annotations

__all__ = ["create_app", "ServerConfig", "serve"]


def __getattr__(name: str):  # lazy: the CLI imports this package without needing FastAPI yet
    if name in ("create_app", "ServerConfig"):
        from . import app

        return getattr(app, name)
    if name == "serve":
        from .launch import serve

        return serve
    raise AttributeError(name)
