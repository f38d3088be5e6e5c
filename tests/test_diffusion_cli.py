"""CLI for diffusion models: paradec generate --model <dllm>, paradec dllm train / bench / methods."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.cli import run_cli
from paradec.dllm.toy.model import TinyConfig, TinyTransformer
from paradec.dllm.toy.tasks import VOCAB_SIZE


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dllm-cli")
    torch.manual_seed(0)
    small = dict(vocab_size=VOCAB_SIZE, d_model=32, n_layers=1, n_heads=4, d_ff=64)
    TinyTransformer(TinyConfig(**small)).save(root / "dllm", {"train": {"gen_length": 18}})
    TinyTransformer(TinyConfig(**small, attention="causal", mask_id=None)).save(root / "ar")
    return root


@pytest.mark.parametrize("method", ["threshold", "one", "freedave", "localleap"])
def test_generate_json(dirs, capsys, method):
    code, out, err = run_cli(["generate", "reverse abcd", "--model", str(dirs / "dllm"), "--method", method, "--json"], capsys)
    assert code == 0, err
    obj = json.loads(out)
    assert obj["method"] == method and set(obj["stats"]) >= {"forwards", "mean_accepted", "tokens_per_s", "tokens_per_forward"}


def test_generate_text_and_errors(dirs, capsys):
    code, out, err = run_cli(["generate", "copy abc", "--model", str(dirs / "dllm"), "--opt", "tau=0.5"], capsys)
    assert code == 0 and "tokens/forward" in err
    for args, msg in [
        (["--opt", "block_size=5"], "block size 5 does not divide the generation length 18"),
        (["--opt", "tau=2"], "threshold must be in (0, 1]"),
        (["--method", "learn2pd"], "needs a model shipped with a trained filter"),
    ]:
        code, out, err = run_cli(["generate", "copy abc", "--model", str(dirs / "dllm"), *args], capsys)
        assert code == 2 and msg in err and err.count("\n") == 1, err
    code, out, err = run_cli(["generate", "copy abc", "--model", str(dirs / "ar"), "--method", "threshold"], capsys)
    assert code == 2 and "is an AR model" in err
    code, out, err = run_cli(["generate", "copy abc", "--model", str(dirs / "ar"), "--method", "ar", "--json"], capsys)
    assert code == 0 and json.loads(out)["stats"]["mean_accepted"] == 1.0
    code, out, err = run_cli(["generate", "hello", "--model", str(dirs / "dllm")], capsys)
    assert code == 2 and "starts with one of" in err


def test_dllm_bench_quick(dirs, capsys, tmp_path):
    code, out, err = run_cli(["dllm", "bench", "--model", str(dirs / "dllm"), "--ar", str(dirs / "ar"), "--n", "2",
                              "--only", "one", "--only", "threshold", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "results.json").read_text())
    labels = [r["label"] for r in res["rows"]]
    assert "one" in labels and "AR reference" in labels and (tmp_path / "frontier.png").stat().st_size > 1000
    assert "| policy |" in (tmp_path / "results.md").read_text()


def test_dllm_methods(capsys):
    code, out, err = run_cli(["dllm", "methods"], capsys)
    assert code == 0 and "freedave" in out and "learn2pd" in out


def test_dllm_train_quick(capsys, tmp_path):
    code, out, err = run_cli(["dllm", "train", "--out", str(tmp_path), "--steps", "2", "--eval-n", "1", "--filter-n", "2"], capsys)
    assert code == 0, err
    for k in ("dllm", "ar"):
        c = json.loads((tmp_path / k / "config.json").read_text())
        assert c["train"]["command"].startswith(f"paradec dllm train --kind {k} --seed 0 --steps 2")
        assert 0.0 <= c["measured"]["accuracy"] <= 1.0
    assert (tmp_path / "dllm" / "filter.safetensors").is_file()
    code, out, err = run_cli(["generate", "copy abc", "--model", str(tmp_path / "dllm"), "--method", "learn2pd", "--json"], capsys)
    assert code == 0, err
