"""The one validation layer (paradec.params, paradec.proposers.options): strict types for
prompts, sampling parameters, stop strings and method options in the API and the CLI; cost
bounds and allowed paths for per-request options; one output-folder check before any work.
Property-based: every API input either works or raises ParadecError."""

from __future__ import annotations

import math
import os
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included

import paradec
from helpers.cli import run_cli
from paradec import ParadecError
from paradec.proposers import Models, make_proposer


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return paradec.load(tiny_model_dir, dtype="float64")


# ---- the API: each of these used to raise something else, or was silently accepted -------------
BAD = [
    (dict(temperature="hot"), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=True), "temperature"),
    (dict(top_p="1"), "top_p"),
    (dict(seed="x"), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(max_new_tokens="4"), "max_new_tokens"),
    (dict(options="draft_len=3"), "options"),
    (dict(options={"draft_len": 2.7}), "draft_len"),
    (dict(options={"draft_len": "3"}), "draft_len"),
    (dict(options={"draft_len": True}), "draft_len"),
    (dict(options={"max_window": float("nan")}), "max_window"),
    (dict(method="head", options={"head": "\udcff"}), "UTF-8"),
    (dict(method="head", options={"head": "a\x00b"}), "NUL"),
    (dict(stop=5), "stop"),
    (dict(stop=[5]), "stop"),
    (dict(stop=["\ud800"]), "UTF-8"),
    (dict(method=["pld"]), "unknown method"),
    (dict(chat="yes"), "chat"),
    (dict(prompt=5), "prompt"),
    (dict(prompt=None), "prompt"),
    (dict(prompt=[10**9]), "token id"),
    (dict(prompt=[-1, 5]), "token id"),
    (dict(prompt=[1, 2.0]), "token id"),
    (dict(prompt="abc \ud800 def"), "UTF-8"),
    (dict(prompt=[{"role": "nobody", "content": "hi"}]), "role"),
    (dict(prompt=[{"role": "user", "content": ""}]), "empty"),
    (dict(prompt=[{"role": "user", "content": "hi \udcff"}]), "UTF-8"),
    (dict(prompt=[{"role": "user", "content": 5}]), "content"),
]


@pytest.mark.parametrize("kwargs, match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_api_input_raises_paradec_error(engine, kwargs, match):
    kwargs = {"prompt": "abc abc", "method": "pld", "max_new_tokens": 4, **kwargs}
    with pytest.raises(ParadecError, match=match) as e:
        engine.generate(kwargs.pop("prompt"), **kwargs)
    assert "\n" not in str(e.value) and "Error" not in str(e.value)


def test_valid_input_is_unchanged(engine):
    """Ints for floats, token-id prompts, developer messages (sent as system) still work."""
    a = engine.generate("abc abc", method="pld", max_new_tokens=6, temperature=0, top_p=1)
    b = engine.generate(a.prompt_ids, method="pld", max_new_tokens=6, temperature=0.0, top_p=1.0)
    assert a.token_ids == b.token_ids
    msgs = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert engine.encode(msgs) == engine.encode([{"role": "system", "content": "be brief"}, msgs[1]])
    assert engine.generate("abc", options={"draft_len": 3, "branches": 1}, max_new_tokens=4).token_ids


# ---- cost bounds and path options, in the one options registry ------------------------------------
@pytest.mark.parametrize("method, options, match", [
    ("recycle", {"nodes": 10**9}, "limit of 64"),
    ("recycle", {"nodes": "1000000000"}, "expects int"),
    ("recycle", {"template": " ".join(f"{i - 1}:0" for i in range(65))}, "limit of 64"),
    ("lookahead", {"window": 100000}, "limit of 16"),
    ("lookahead", {"window": "100000"}, "expects int"),
    ("suffix", {"max_tokens": 1 << 30}, "--max-pool"),
    ("pld", {"draft_len": 17}, "--max-draft-depth"),
    ("head", {"beam": 17}, "--max-draft-width"),
    ("suffix", {"corpus_path": "/etc/hosts"}, "--allow-path"),
    ("head", {"head": "/"}, "--allow-path"),
    ("deer", {"adapter": "."}, "--allow-path"),
])
def test_request_options_past_the_limits_are_refused(method, options, match):
    from paradec.proposers import Limits, check_options

    with pytest.raises(ParadecError, match=match):
        check_options(method, options, Limits())


def test_limits_are_the_operators_and_defaults_pass():
    from paradec.proposers import Limits, check_options

    assert check_options("recycle", {"nodes": 200}, Limits(max_draft_nodes=256)) == {"nodes": 200}
    for method in ("pld", "suffix", "recycle", "aded", "lookahead", "auto", "head", "deer"):
        check_options(method, {}, Limits())  # every method's defaults are within the default limits
    with pytest.raises(ParadecError, match="max-draft-nodes"):
        Limits(max_draft_nodes=0)


def test_path_options_only_in_allowed_folders(tmp_path):
    from paradec.proposers import Limits, check_options

    (tmp_path / "heads" / "mine").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    limits = Limits(allow_paths=(str(tmp_path / "heads"),))
    check_options("head", {"head": str(tmp_path / "heads" / "mine")}, limits)
    check_options("head", {"head": str(tmp_path / "heads" / "mine" / ".." / "mine")}, limits)
    msgs = set()
    for p in (tmp_path / "other", tmp_path / "heads" / ".." / "other", tmp_path / "nowhere"):
        with pytest.raises(ParadecError) as e:
            check_options("head", {"head": str(p)}, limits)
        msgs.add(str(e.value))
    assert len(msgs) == 1, msgs  # the same answer whether the folder exists or not
    msg = msgs.pop()
    assert "exist" not in msg and "config.json" not in msg and str(tmp_path) not in msg


def test_drafters_load_once_per_resolved_name_and_are_bounded(engine, tmp_path, monkeypatch):
    import torch

    import paradec.heads as heads

    loads = []

    def fake_head_for(model, name):
        loads.append(name)
        packed = types.SimpleNamespace(vocab_ids=torch.arange(3))
        return types.SimpleNamespace(pack=lambda: packed)

    monkeypatch.setattr(heads, "head_for", fake_head_for)
    models = Models(engine.target)
    (tmp_path / "h").mkdir()
    for spelling in (tmp_path / "h", f"{tmp_path}/h/", f"{tmp_path}/h/../h", f"{tmp_path}//h"):
        make_proposer("head", models, {"head": str(spelling)})
    assert loads == [os.path.realpath(tmp_path / "h")]
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
        make_proposer("head", models, {"head": str(tmp_path / f"d{i}")})
    assert len(models._loaded) == models.max_loaded


# ---- property-based: anything in, a result or a ParadecError out -----------------------------------
junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(ANY_CHAR, max_size=4), st.lists(st.integers(-2, 5), max_size=2))
prompts = st.one_of(
    st.text(ANY_CHAR, max_size=12),  # lone surrogates included
    st.lists(st.integers(-5, 200), max_size=6),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer", "assistant", "nobody", 3]),
                                     "content": st.one_of(st.text(ANY_CHAR, max_size=8), st.integers())}), max_size=3),
    junk,
)
option_names = st.sampled_from(["draft_len", "branches", "max_nodes", "max_ngram", "min_ngram", "nodes", "k", "max_depth",
                                "window", "ngram", "guesses", "max_tokens", "min_prob", "template", "bogus"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    prompt=prompts,
    method=st.sampled_from(["ar", "pld", "suffix", "recycle", "lookahead", "aded", "nope"]),
    temperature=st.one_of(st.floats(0, 2), junk),
    top_p=st.one_of(st.floats(0, 1), junk),
    top_k=st.one_of(st.integers(0, 5), junk),
    seed=st.one_of(st.integers(-(2**70), 2**70), junk),
    stop=st.one_of(st.none(), st.text(ANY_CHAR, max_size=2), st.lists(st.text(ANY_CHAR, max_size=2), max_size=2), junk),
    max_new_tokens=st.one_of(st.integers(1, 4), junk),
    options=st.one_of(st.none(), st.dictionaries(option_names, junk, max_size=2), junk),
)
def test_api_gives_a_result_or_a_paradec_error(engine, prompt, method, temperature, top_p, top_k, seed, stop,
                                               max_new_tokens, options):
    if isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool):
        max_new_tokens = min(max_new_tokens, 4)  # keep each example quick
    try:
        g = engine.generate(prompt, method=method, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            top_k=top_k, seed=seed, stop=stop, options=options)
    except ParadecError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(g.text, str) and 1 <= len(g.token_ids) <= 4
    assert isinstance(temperature, (int, float)) and math.isfinite(temperature) and not isinstance(temperature, bool)


# ---- the CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--temperature", "inf"], "temperature must be a finite number"),
    (["--top-p", "nan"], "top_p"),
    (["--opt", "draft_len=2.7"], "option draft_len expects int"),
])
def test_cli_bad_numbers_are_one_line_errors(tiny_model_dir, capsys, args, message):
    code, out, err = run_cli(["generate", "hi", "--model", tiny_model_dir, "--dtype", "float64", *args], capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_cli_prompt_that_is_not_utf8(tiny_model_dir, capsys):
    bad = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    code, out, err = run_cli(["generate", bad, "--model", tiny_model_dir, "--dtype", "float64"], capsys)
    assert code == 2 and "not valid UTF-8" in err and err.count("\n") == 1, err


def test_cli_dllm_generate_honours_n_and_checks_temperature(capsys):
    code, out, err = run_cli(["generate", "copy abcdef", "--model", "tiny-dllm", "-n", "2", "--json"], capsys)
    assert code == 0, err
    import json

    assert len(json.loads(out)["token_ids"]) <= 2
    code, out, err = run_cli(["generate", "copy abc", "--model", "tiny-dllm", "-t", "nan"], capsys)
    assert code == 2 and "temperature" in err and err.count("\n") == 1, err


@pytest.fixture
def not_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    return str(f / "out")  # under a regular file: cannot be made


@pytest.mark.parametrize("args, message", [
    (["dllm", "train", "--steps", "-5"], "--steps"),
    (["dllm", "train", "--threads", "-1"], "--threads"),
    (["dllm", "train", "--steps", "2", "--eval-n", "1", "--filter-n", "2", "--out", "{bad}"], "cannot write"),
    (["dllm", "bench", "--n", "0"], "--n"),
    (["dllm", "bench", "--n", "-1"], "--n"),
    (["dllm", "bench", "--threads", "-1"], "--threads"),
    (["dllm", "bench", "--only", "nosuch"], "nosuch"),
    (["dllm", "bench", "--n", "1", "--only", "one", "--out", "{bad}"], "cannot write"),
    (["dllm", "text-bench", "--mt", "-1"], "--mt"),
    (["dllm", "text-bench", "--mt", "0", "--humaneval", "0"], "nothing to measure"),
    (["dllm", "text-bench", "--only", "nosuch"], "nosuch"),
    (["dllm", "text-bench", "--out", "{bad}"], "cannot write"),
])
def test_dllm_commands_refuse_bad_values_before_any_work(capsys, tmp_path, not_a_folder, args, message):
    args = [a.replace("{bad}", not_a_folder) for a in args]
    if "--out" not in args:  # were a check missing, the work would land in tmp_path, not in the repo
        args += ["--out", str(tmp_path / "out")]
    code, out, err = run_cli(args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out  # nothing trained, nothing benchmarked


@pytest.mark.parametrize("args, message", [
    (["serve", "--opt", "draft_len=2.7"], "option draft_len expects int"),
    (["serve", "--max-draft-nodes", "0"], "--max-draft-nodes must be an integer >= 1"),
])
def test_serve_checks_its_options_before_loading(capsys, args, message):
    code, out, err = run_cli(args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
