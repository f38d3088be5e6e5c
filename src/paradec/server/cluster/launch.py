"""Deploy the server on Ray Serve and serve until interrupted (SIGINT / SIGTERM), then tear
down what was started: the application, and the local Ray instance when there was no
``--ray-address``."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import suppress

from ...errors import ParadecError
from ..config import LaunchConfig, ServerConfig
from .config import (
    SESSIONS_PER_REPLICA,
    ClusterConfig,
    available_bytes,
    check_memory,
    check_reachable,
    replica_bytes,
)

APP_NAME = "paradec"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_cluster(launch: LaunchConfig, config: ServerConfig, cluster: ClusterConfig) -> None:
    from ..backend import ModelInfo
    from ..config import load_checked

    if cluster.ray_address:
        check_reachable(cluster.ray_address)
    engine = load_checked(launch, config)  # also fills the model cache
    host, port = launch.host, launch.port
    info, per_replica = ModelInfo.of(engine), replica_bytes(engine)
    del engine
    gc.collect()
    if not cluster.ray_address:
        check_memory(cluster.max_replicas, per_replica, available_bytes(), "this machine")

    import ray
    from ray import serve

    temp = None
    try:
        if cluster.ray_address:
            try:
                ray.init(address=cluster.ray_address, logging_level=logging.WARNING)
            except Exception as e:  # ConnectionError and friends: one line for the user
                raise ParadecError(f"cannot join the Ray cluster at {cluster.ray_address}: {_first_line(e)}") from None
            _check_cluster(ray.cluster_resources(), cluster, per_replica)
        else:
            temp = tempfile.mkdtemp(prefix="paradec-ray-")
            need = cluster.max_replicas * cluster.replica_threads
            ray.init(
                _node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=temp, logging_level=logging.WARNING,
                num_cpus=max(os.cpu_count() or 1, need), configure_logging=True,
            )
        signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which installs its own
        from ray.serve.config import HTTPOptions

        quiet = {"log_level": "WARNING", "enable_access_log": False}
        serve.start(http_options=HTTPOptions(host=host, port=port, location="HeadOnly"), logging_config=quiet)
        try:
            serve.run(build(launch, config, cluster, info), name=APP_NAME, route_prefix="/",
                      logging_config=quiet)
        except Exception as e:
            raise ParadecError(f"the deployment failed: {_first_line(e)}") from None
        where = cluster.ray_address or "a local Ray instance"
        scale = f"{cluster.autoscale[0]}..{cluster.autoscale[1]}" if cluster.autoscale else str(cluster.replicas)
        print(f"paradec: serving {info.name} on http://{host}:{port} with {scale} replicas on {where}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        with suppress(Exception):
            serve.shutdown()
        with suppress(Exception):
            ray.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def build(launch: LaunchConfig, config: ServerConfig, cluster: ClusterConfig, info):
    """The Serve application: Hub, the model replicas, and the Router in front."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from .hub import Hub
    from .replica import Replica, ReplicaSpec
    from .router import Router
    from .routing import SessionRouter

    threads = cluster.replica_threads
    spec = ReplicaSpec(
        launch.model, launch.draft_model, launch.dtype, launch.device, threads, config.max_queue, config.max_active, config.batch,
        sessions=SESSIONS_PER_REPLICA if cluster.affinity else 0,
        env={k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PARADEC_NATIVE_THREADS")},
        backend=launch.backend,
    )
    if cluster.autoscale:
        lo, hi = cluster.autoscale
        scaling = dict(autoscaling_config={"min_replicas": lo, "max_replicas": hi, "initial_replicas": cluster.initial_replicas,
                                           "target_ongoing_requests": config.max_active})
    else:
        scaling = dict(num_replicas=cluster.replicas)
    replica = serve.deployment(Replica, name="ParadecReplica").options(
        ray_actor_options={"num_cpus": threads}, max_ongoing_requests=config.max_queue + config.max_active,
        request_router_config=RequestRouterConfig(request_router_class=SessionRouter),
        health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=5, **scaling,
    )
    hub = Hub.bind()
    router = serve.deployment(Router, name="ParadecRouter").options(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100_000)
    return router.bind(replica.bind(spec, hub), hub, info, config, cluster.affinity)


def _check_cluster(resources: dict, cluster: ClusterConfig, per_replica: int) -> None:
    cpus, need = resources.get("CPU", 0), cluster.initial_replicas * cluster.replica_threads
    if cpus < need:
        raise ParadecError(f"{cluster.initial_replicas} replicas x {cluster.replica_threads} threads need {need} CPUs; "
                           f"the cluster has {cpus:g}")
    check_memory(cluster.max_replicas, per_replica, int(resources.get("memory", 0)), "the cluster")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


__all__ = ["serve_cluster", "build"]
