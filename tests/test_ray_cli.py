"""``paradec serve`` cluster options given bad input: a one-line error, exit 2, before any Ray
process starts (and none left behind)."""

from __future__ import annotations

import sys

import pytest

from helpers.cli import run_cli
from paradec.errors import ParadecError
from paradec.server.cluster import config as cluster_config
from helpers.ray import free_port, ray_daemons


def _serve(tiny_model_dir, capsys, *args: str) -> tuple[int, str]:
    code, _, err = run_cli(["serve", "-m", tiny_model_dir, "--dtype", "float64", "--port", str(free_port()), *args], capsys)
    return code, err


@pytest.mark.parametrize("args, message", [
    (("--replicas", "0"), "--replicas must be >= 1"),
    (("--autoscale", "3:1"), "--autoscale MIN:MAX needs 1 <= MIN <= MAX"),
    (("--autoscale", "two"), "--autoscale expects MIN:MAX"),
    (("--replicas", "2", "--replica-threads", "0"), "--replica-threads must be >= 1"),
    (("--replica-threads", "2"), "apply to --replicas"),
    (("--replicas", "2", "--ray-address", "127.0.0.1:1"), "cannot reach the Ray cluster at 127.0.0.1:1"),
    (("--replicas", "2", "--ray-address", "nowhere"), "--ray-address expects HOST:PORT"),
    (("--replicas", "100000"), "100000 replicas need about"),
])
def test_bad_cluster_options(tiny_model_dir, capsys, args, message):
    before = ray_daemons()
    code, err = _serve(tiny_model_dir, capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert ray_daemons() <= before  # no Ray process started or left behind
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_ray_not_installed(tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    code, err = _serve(tiny_model_dir, capsys, "--replicas", "2")
    assert code == 2
    assert err.strip() == "error: --replicas needs Ray Serve, which is not installed: pip install 'paradec[ray]'"


def test_memory_check_and_estimate():
    with pytest.raises(ParadecError, match="3 replicas need about 3.0 GiB"):
        cluster_config.check_memory(3, 1 << 30, 2 << 30, "this machine")
    cluster_config.check_memory(2, 1 << 30, 2 << 30, "this machine")  # fits exactly
    cluster_config.check_memory(99, 1 << 30, 0, "this machine")  # unknown: not refused
    assert cluster_config.parse_autoscale("1:4") == (1, 4)
    assert cluster_config.ClusterConfig(replicas=9, autoscale=(1, 4)).initial_replicas == 4
