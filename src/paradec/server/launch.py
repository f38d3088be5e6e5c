"""``paradec serve``: load the model once, then run the app under uvicorn."""

from __future__ import annotations

from typing import Any

from ..errors import ParadecError
from .limits import TransportLimits


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
) -> None:
    """``limits``: the HTTP edge's ``TransportLimits``; ``option_limits``: a
    ``paradec.proposers.Limits`` bounding per-request method options (the defaults when None)."""
    import uvicorn

    from ..engine import load
    from ..models.loader import parse_device, parse_dtype
    from ..proposers import Limits, make_proposer, text_options
    from .app import ServerConfig, create_app

    parse_dtype(dtype), parse_device(device)  # fail fast, before loading anything
    if not 0 < port < 65536:
        raise ParadecError(f"--port must be in 1..65535, got {port}")
    if max_queue < 1 or max_active < 1:
        raise ParadecError("--max-queue and --max-active must be >= 1")
    if timeout <= 0:
        raise ParadecError(f"--timeout must be > 0 seconds, got {timeout}")
    limits = limits or TransportLimits()
    option_limits = option_limits or Limits()
    options = text_options(method, dict(options or {}))  # --opt values come as text
    engine = load(model, draft=draft, dtype=dtype, device=device, backend=backend)
    make_proposer(method, engine.models, options)  # a bad --method / --opt fails here, not per request
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # no *_created series next to every counter in /metrics
    app = create_app(engine, ServerConfig(method, options, served_name, max_queue, max_active, timeout, batch,
                                            limits=limits, option_limits=option_limits))
    uvicorn.run(app, **uvicorn_settings(limits), host=host, port=port, log_level=log_level)


def uvicorn_settings(limits: TransportLimits) -> dict[str, Any]:
    """uvicorn's own settings for ``limits`` (the rest is enforced by ``transport``)."""
    from .transport import protocol_class

    return {"http": protocol_class(limits), "timeout_keep_alive": limits.keep_alive}
