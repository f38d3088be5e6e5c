"""`paradec serve` and the validation layer: strict types for sampling fields and method options
(a string, a float for an integer or `true` for a number is a 400), per-request cost bounds set
by the operator, path options limited to shipped names, clean messages for text that is not
UTF-8, and a property-based test: every body gets a result or a 4xx OpenAI error, never a 5xx."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included

import paradec
from helpers.server import live_server

MODEL = "tiny"
OK = {"model": MODEL, "prompt": "abc abc", "max_tokens": 2}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return paradec.load(tiny_model_dir, dtype="float64")


@pytest.fixture(scope="module")
def base(engine):
    with live_server(engine, served_name=MODEL) as url:
        yield url


def post(base, body, path="/v1/completions", timeout=30):
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"{base}{path}", content=content, headers={"content-type": "application/json"}, timeout=timeout)


def assert_openai_400(r, param=None):
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert "Error" not in err["message"] and "\n" not in err["message"], err
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("body, param", [
    ({**OK, "paradec": {"method": "recycle", "options": {"nodes": "1000000000"}}}, "paradec.options"),
    ({**OK, "paradec": {"method": "lookahead", "options": {"window": "100000"}}}, "paradec.options"),
    ({**OK, "paradec": {"method": "pld", "options": {"draft_len": 2.7}}}, "paradec.options"),
    ({**OK, "paradec": {"method": "pld", "options": {"draft_len": True}}}, "paradec.options"),
    ({**OK, "paradec": {"method": "pld", "options": {"draft_len": "3"}}}, "paradec.options"),
    ({**OK, "paradec": {"method": "suffix", "options": {"keep_state": "true"}}}, "paradec.options"),
    ({**OK, "paradec": {"method": "recycle", "options": {"nodes": 100000}}}, "paradec.options"),
    ({**OK, "paradec": {"method": "lookahead", "options": {"window": 17}}}, "paradec.options"),
    ({**OK, "paradec": {"method": "suffix", "options": {"corpus_path": "a\u0000b"}}}, "paradec.options"),
    ({**OK, "paradec": {"method": "head", "options": {"head": "\ud800"}}}, "paradec.options"),
    ({**OK, "temperature": "0.5"}, "temperature"),
    ({**OK, "temperature": True}, "temperature"),
    ({**OK, "top_p": "1"}, "top_p"),
])
def test_wrong_types_and_costly_options_are_400(base, body, param):
    assert_openai_400(post(base, body), param)


def test_a_costly_request_cannot_delay_a_short_one(base):
    """The 1e9-node recycle request (as a string, as an int) is refused at once; a request at
    the operator's limits sent alongside a short one delays it by a few ordinary steps only."""
    results = {}

    def send(name, body):
        t0 = time.monotonic()
        results[name] = (post(base, body, timeout=60), time.monotonic() - t0)

    heavy = [{**OK, "max_tokens": 40, "paradec": {"method": "recycle", "options": {"nodes": v}}} for v in ("1000000000", 10**9)]
    at_limit = {**OK, "max_tokens": 40, "paradec": {"method": "recycle", "options": {"nodes": 64, "max_depth": 16, "k": 16}}}
    short = {**OK, "max_tokens": 2, "paradec": {"method": "ar"}}
    threads = [threading.Thread(target=send, args=(f"heavy{i}", b)) for i, b in enumerate(heavy)]
    threads += [threading.Thread(target=send, args=("limit", at_limit)), threading.Thread(target=send, args=("short", short))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for name in ("heavy0", "heavy1"):
        assert_openai_400(results[name][0], "paradec.options")
    assert results["limit"][0].status_code == 200 and results["short"][0].status_code == 200
    assert results["short"][1] < 10.0, results["short"][1]


@pytest.mark.parametrize("body, path", [
    ('{"model": "tiny", "prompt": "ab\\ud800cd", "max_tokens": 2}', "/v1/completions"),
    ('{"model": "tiny", "prompt": ["ab\\udcffcd"], "max_tokens": 2}', "/v1/completions"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud800"}], "max_tokens": 2}', "/v1/chat/completions"),
    ('{"model": "tiny", "prompt": "hi", "stop": ["\\ud800"], "max_tokens": 2}', "/v1/completions"),
])
def test_text_that_is_not_utf8_is_a_clean_400(base, body, path):
    err = assert_openai_400(post(base, body, path))
    assert "UTF-8" in err["message"] and "TextEncodeInput" not in err["message"]


@pytest.mark.parametrize("method, option", [("head", "head"), ("deer", "adapter"), ("suffix", "corpus_path")])
def test_path_options_are_refused_without_describing_the_file_system(base, tmp_path, method, option):
    with_config = tmp_path / "with"
    with_config.mkdir()
    (with_config / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    messages = set()
    for p in (with_config, tmp_path / "empty", tmp_path / "missing", "/"):
        err = assert_openai_400(post(base, {**OK, "paradec": {"method": method, "options": {option: str(p)}}}), "paradec.options")
        messages.add(err["message"])
    assert len(messages) == 1, messages
    msg = messages.pop()
    assert "config.json" not in msg and "exist" not in msg and str(tmp_path) not in msg


def test_allowed_paths_and_limits_are_the_operators(engine, tmp_path):
    from paradec.proposers import Limits

    (tmp_path / "corpus.txt").write_text("5 6 7 8\n")
    body = {**OK, "paradec": {"method": "suffix", "options": {"corpus_path": str(tmp_path / "corpus.txt"), "max_depth": 20}}}
    with live_server(engine, served_name=MODEL, option_limits=Limits(max_draft_depth=32, allow_paths=(str(tmp_path),))) as url:
        assert post(url, body).status_code == 200
        r = post(url, {**body, "paradec": {"method": "suffix", "options": {"max_depth": 33}}})
        assert "limit of 32" in assert_openai_400(r, "paradec.options")["message"]


# ---- property-based: any body gets a result or a 4xx OpenAI error object ---------------------------
junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(allow_nan=False), st.text(ANY_CHAR, max_size=4),
                 st.lists(st.integers(-2, 5), max_size=2))
option_values = st.dictionaries(
    st.sampled_from(["draft_len", "branches", "max_nodes", "nodes", "k", "max_depth", "window", "ngram", "guesses",
                     "min_prob", "template", "head", "adapter", "corpus_path", "keep_state", "bogus"]),
    st.one_of(st.booleans(), st.integers(-3, 70), st.floats(-2, 2), st.text(ANY_CHAR, max_size=6)), max_size=2)
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, MODEL, "other"])},
    optional={
        "prompt": st.one_of(st.text(ANY_CHAR, max_size=10), st.lists(st.integers(-3, 120), max_size=4),
                            st.lists(st.text(ANY_CHAR, max_size=4), max_size=2), junk),
        "max_tokens": st.one_of(st.integers(1, 3), junk),
        "temperature": st.one_of(st.floats(0, 2), junk),
        "top_p": st.one_of(st.floats(0, 1), junk),
        "top_k": st.one_of(st.integers(0, 5), junk),
        "seed": st.one_of(st.integers(-(2**40), 2**40), junk),
        "stop": st.one_of(st.text(ANY_CHAR, max_size=2), st.lists(st.text(ANY_CHAR, max_size=2), max_size=2), junk),
        "paradec": st.one_of(st.fixed_dictionaries({}, optional={
            "method": st.sampled_from(["ar", "pld", "suffix", "recycle", "lookahead", "aded", "head", "deer", "nope"]),
            "options": st.one_of(option_values, junk)}), junk),
    },
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies)
def test_any_body_gets_a_result_or_a_4xx_openai_error(base, body):
    if isinstance(body.get("max_tokens"), int) and not isinstance(body["max_tokens"], bool):
        body["max_tokens"] = min(body["max_tokens"], 3)  # keep each example quick
    r = post(base, body)
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert 400 <= r.status_code < 500
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], err
        assert "Traceback" not in err["message"] and "invalid request: " not in err["message"], err
