"""schemathesis against the server's own OpenAPI schema: generated requests, valid (positive)
and invalid (negative), never get a 5xx. Bounded: a fixed number of examples per operation and
mode, tiny model.

(schemathesis' pytest plugin, ``from_fixture``, does not run under pytest 9, so the test drives
each operation's hypothesis strategy itself.)"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

import paradec  # noqa: E402
from helpers.server import live_server  # noqa: E402

MODEL = "tiny"
EXAMPLES = 60
REFUSED = ("n", "best_of", "echo", "logprobs", "top_logprobs", "suffix", "presence_penalty", "frequency_penalty",
           "logit_bias", "tools", "paradec")
OPERATIONS = [
    ("/v1/completions", "POST"),
    ("/v1/chat/completions", "POST"),
    ("/v1/models", "GET"),
    ("/health", "GET"),
    ("/metrics", "GET"),
]


@pytest.fixture(scope="module")
def api_schema(tiny_model_dir):
    engine = paradec.load(tiny_model_dir, dtype="float64")
    with live_server(engine, served_name=MODEL, timeout=20) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_schema_lists_every_operation(api_schema):
    listed = {(op.ok().path, op.ok().method.upper()) for op in api_schema.get_all_operations()}
    assert set(OPERATIONS) <= listed


CASES = [(path, verb, GenerationMode.POSITIVE) for path, verb in OPERATIONS] + [
    (path, verb, GenerationMode.NEGATIVE) for path, verb in OPERATIONS if verb == "POST"  # GETs take no input
]


@pytest.mark.parametrize("path, verb, mode", CASES)
def test_no_server_errors(api_schema, path, verb, mode):
    operation = api_schema[path][verb]
    seen = {"calls": 0}
    statuses: dict[int, int] = {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def check(case):
        # Every other generated body names the served model, and every fourth also drops the
        # fields paradec refuses (n > 1, penalties, logprobs, ...), so that many requests get past
        # those checks and exercise decoding with generated sampling settings for real.
        if isinstance(case.body, dict) and "model" in case.body and seen["calls"] % 2 == 0:
            case.body["model"] = MODEL
            if seen["calls"] % 4 == 0:
                for key in REFUSED:
                    case.body.pop(key, None)
                for key in ("max_tokens", "max_completion_tokens"):
                    if isinstance(case.body.get(key), int) and not isinstance(case.body[key], bool):
                        case.body[key] = 1 + abs(case.body[key]) % 8
        seen["calls"] += 1
        response = case.call_and_validate(checks=[not_a_server_error], timeout=60)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    check()
    print(path, verb, mode.value, "statuses:", dict(sorted(statuses.items())))
    assert seen["calls"] > 0
    assert all(code < 500 for code in statuses)
    if verb == "POST" and mode == GenerationMode.POSITIVE:
        assert statuses.get(200, 0) > 0, statuses  # some generated requests really decoded
