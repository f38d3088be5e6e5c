"""The ``paradec serve`` command (registered in ``paradec.cli``)."""

from __future__ import annotations

from typing import List, Optional

import typer

from ..server.limits import TransportLimits

_LIMITS = TransportLimits()  # the defaults shown in --help


def serve(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Packaged name, model dir, .gguf file or cached hub id."),
    method: str = typer.Option("pld", "--method", help="Default decoding method; a request may override it."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="Draft model (same tokenizer) for method draft."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16, float16 or float64."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    backend: str = typer.Option("auto", "--backend", help="auto (native for a GGUF on a CPU in float32, else torch), native (the GGUF's quantized weights) or torch."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests waiting beyond this answer 429."),
    max_active: int = typer.Option(16, "--max-active", help="Requests decoded at once (interleaved step by step)."),
    batch: bool = typer.Option(
        True, "--batch/--no-batch", help="Run the plain decoding steps of concurrent requests in one forward."
    ),
    timeout: float = typer.Option(600.0, "--timeout", help="Per-request limit in seconds, queueing included."),
    served_name: Optional[str] = typer.Option(None, "--served-model-name", help="Model id for clients (default: --model)."),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="Default method option key=value (repeatable)."),
    header_timeout: float = typer.Option(
        _LIMITS.header_timeout, "--header-timeout", help="Seconds a client has to send its request headers (else 408)."
    ),
    body_timeout: float = typer.Option(
        _LIMITS.body_timeout, "--body-timeout", help="Seconds a client has to send its request body (else 408)."
    ),
    keep_alive: float = typer.Option(_LIMITS.keep_alive, "--keep-alive", help="Seconds an idle connection stays open."),
    max_connections: int = typer.Option(
        _LIMITS.max_connections, "--max-connections", help="Open connections; more are answered 503 and closed."
    ),
    max_body_mb: float = typer.Option(
        _LIMITS.max_body_bytes / (1 << 20), "--max-body-mb", help="Largest request body in MiB, however framed (else 413)."
    ),
    max_draft_nodes: int = typer.Option(64, "--max-draft-nodes", help="Per request: largest draft tree (nodes, max_nodes, templates)."),
    max_draft_depth: int = typer.Option(16, "--max-draft-depth", help="Per request: longest draft / n-gram / block, most passes."),
    max_draft_width: int = typer.Option(16, "--max-draft-width", help="Per request: most candidates per node, chains, branches."),
    max_pool: int = typer.Option(1 << 16, "--max-pool", help="Per request: most entries in a lookup table or window."),
    allow_path: Optional[List[str]] = typer.Option(
        None, "--allow-path", help="A folder whose heads / adapters / corpora requests may name (repeatable; default: shipped names only)."
    ),
    replicas: Optional[int] = typer.Option(
        None, "--replicas", help="Deploy N replicas (one model copy each) on Ray Serve; default: this one process, no Ray."
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (HOST:PORT or auto); default: start a local Ray on 127.0.0.1."
    ),
    replica_threads: int = typer.Option(1, "--replica-threads", help="Torch threads (and CPUs reserved) per replica."),
    affinity: bool = typer.Option(
        True, "--affinity/--no-affinity", help="Send a conversation's turns to the replica holding its drafter state."
    ),
    autoscale: Optional[str] = typer.Option(None, "--autoscale", help="MIN:MAX replicas, scaled on ongoing requests."),
) -> None:
    """Serve the OpenAI API (completions, chat completions, streaming) with speculative decoding."""
    from .common import parse_options as _options
    from ..errors import ParadecError
    from ..proposers import Limits
    from ..server.launch import serve as run

    if not 0 < max_body_mb < 1 << 20:
        raise ParadecError(f"--max-body-mb must be in (0, 1048576), got {max_body_mb}")
    limits = TransportLimits(header_timeout=header_timeout, body_timeout=body_timeout, keep_alive=keep_alive,
                             max_connections=max_connections, max_body_bytes=max(1, int(max_body_mb * (1 << 20))))
    option_limits = Limits(max_draft_nodes, max_draft_depth, max_draft_width, max_pool, tuple(allow_path or ()))
    cluster = None
    if replicas is not None or ray_address or autoscale:
        from ..server.cluster.config import ClusterConfig, parse_autoscale

        scale = parse_autoscale(autoscale)
        n = replicas if replicas is not None else (scale[0] if scale else 1)
        cluster = ClusterConfig(n, ray_address, replica_threads, affinity, scale)
    elif replica_threads != 1 or not affinity:
        raise ParadecError("--replica-threads and --no-affinity apply to --replicas (a Ray Serve deployment)")
    run(model=model, draft=draft_model, method=method, options=_options(opt), dtype=dtype, device=device, backend=backend, host=host,
        port=port, max_queue=max_queue, max_active=max_active, timeout=timeout, served_name=served_name, batch=batch,
        limits=limits, option_limits=option_limits, cluster=cluster)
