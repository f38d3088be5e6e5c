"""The ``paradec serve`` command (registered in ``paradec.cli``)."""

from __future__ import annotations

from typing import List, Optional

import typer


def serve(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Packaged name, model dir, .gguf file or cached hub id."),
    method: str = typer.Option("pld", "--method", help="Default decoding method; a request may override it."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="Draft model (same tokenizer) for method draft."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
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
    from ..cli import _options
    from ..errors import ParadecError
    from .launch import serve as run

    cluster = None
    if replicas is not None or ray_address or autoscale:
        from .cluster.config import ClusterConfig, parse_autoscale

        scale = parse_autoscale(autoscale)
        n = replicas if replicas is not None else (scale[0] if scale else 1)
        cluster = ClusterConfig(n, ray_address, replica_threads, affinity, scale)
    elif replica_threads != 1 or not affinity:
        raise ParadecError("--replica-threads and --no-affinity apply to --replicas (a Ray Serve deployment)")
    run(model=model, draft=draft_model, method=method, options=_options(opt), dtype=dtype, device=device, host=host,
        port=port, max_queue=max_queue, max_active=max_active, timeout=timeout, served_name=served_name, batch=batch,
        cluster=cluster)
