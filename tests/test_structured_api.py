"""Structured output through the library API, the CLI and the server (the official openai
client: response_format json_schema / json_object, ``chat.completions.parse`` with a pydantic
model, streaming and not, bad schemas answered 400), on a tiny model of a small JSON vocabulary."""

from __future__ import annotations

import json
import threading
from typing import Literal

import jsonschema
import openai
import pytest
from helpers.cli import run_cli
from helpers.tiny import tiny_llama
from pydantic import BaseModel, Field
from helpers.server import live_server
from helpers.structured import EOS, SCHEMAS, TOKENIZER, VOCAB

import paradec
from paradec.errors import ParadecError

MODEL = "tiny-json"
RECORD = SCHEMAS["record"]


class Record(BaseModel):
    id: int = Field(ge=0, le=99)
    name: Literal["ab", "cd"]
    ok: bool


@pytest.fixture(scope="module")
def json_model_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tiny-json-model")
    model = tiny_llama(0, vocab=VOCAB)
    model.generation_config.eos_token_id = EOS
    model.save_pretrained(d)
    tok = TOKENIZER
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}:{% endfor %}"
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def engine(json_model_dir):
    return paradec.load(json_model_dir, dtype="float64")


@pytest.fixture(scope="module")
def ref(json_model_dir):
    return paradec.load(json_model_dir, dtype="float64")


# ---- library --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [RECORD, Record, {"type": "json_schema", "json_schema": {"name": "r", "schema": RECORD}}])
def test_generate_follows_the_schema_for_every_form(ref, fmt):
    g = ref.generate("abc", method="suffix", max_new_tokens=60, response_format=fmt, chat=False)
    schema = Record.model_json_schema() if fmt is Record else RECORD
    jsonschema.validate(json.loads(g.text), schema)
    assert g.stats.stop_reason == "eos" and not g.stats.incomplete and g.stats.constrained
    assert g.stats.forced_tokens > 0


def test_stream_and_methods_agree(ref):
    base = ref.generate("abc", method="ar", max_new_tokens=60, response_format=RECORD, chat=False)
    for method in ("pld", "suffix", "auto", "lookahead"):
        s = ref.stream("abc", method=method, max_new_tokens=60, response_format=RECORD, chat=False)
        pieces = list(s)
        assert "".join(pieces) == s.text == base.text and s.token_ids == base.token_ids


def test_api_bad_constraint_is_a_paradec_error(ref):
    with pytest.raises(ParadecError, match="regex"):
        ref.generate("abc", response_format={"type": "regex", "regex": "(("}, chat=False)


# ---- CLI ------------------------------------------------------------------------------------------
def test_cli_constraints(json_model_dir, tmp_path, capsys):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(RECORD))
    code, out, err = run_cli(["generate", "abc", "-m", json_model_dir, "--raw", "--json", "-n", "60", "--json-schema", str(schema)], capsys)
    assert code == 0, err
    res = json.loads(out)
    jsonschema.validate(json.loads(res["text"]), RECORD)
    assert res["stats"]["constrained"] and "forced_tokens" in res["stats"]
    code, out, err = run_cli(["generate", "abc", "-m", json_model_dir, "--raw", "--json", "-n", "20", "--regex", "[ab]{2,4}-[0-9]"], capsys)
    assert code == 0, err
    import re

    assert re.fullmatch("[ab]{2,4}-[0-9]", json.loads(out)["text"])
    lark = tmp_path / "g.lark"
    lark.write_text('start: "id" | "true"\n')
    code, out, err = run_cli(["generate", "abc", "-m", json_model_dir, "--raw", "--grammar", str(lark), "-n", "8"], capsys)
    assert code == 0 and out.strip() in ("id", "true") and "forced" in err


@pytest.mark.parametrize("args,message", [
    (["--regex", "(("], "invalid regex"),
    (["--json-object", "--regex", "a"], "at most one"),
    (["--json-schema", "/nonexistent/s.json"], "cannot read"),
    (["--grammar", "BADFILE"], "invalid grammar"),
    (["--json-schema", "NOTJSON"], "is not JSON"),
])
def test_cli_bad_constraints_are_one_line_exit_2(args, message, json_model_dir, tmp_path, capsys):
    (tmp_path / "BADFILE").write_text("start: foo bar\n")
    (tmp_path / "NOTJSON").write_text("{nope")
    args = [str(tmp_path / a) if a in ("BADFILE", "NOTJSON") else a for a in args]
    code, out, err = run_cli(["generate", "abc", "-m", json_model_dir, "--raw", *args], capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


# ---- server -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(engine):
    with live_server(engine, served_name=MODEL, method="suffix") as url:
        yield url


@pytest.fixture
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def _schema_format(schema=RECORD):
    return {"type": "json_schema", "json_schema": {"name": "record", "schema": schema, "strict": True}}


def test_server_json_schema_equals_library(client, ref):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "abc"}], temperature=0,
                                       max_tokens=60, response_format=_schema_format())
    text = r.choices[0].message.content
    jsonschema.validate(json.loads(text), RECORD)
    assert r.choices[0].finish_reason == "stop"
    lib = ref.generate([{"role": "user", "content": "abc"}], method="suffix", max_new_tokens=60, response_format=RECORD)
    assert text == lib.text
    stats = r.model_extra["paradec"]
    assert stats["forced_tokens"] > 0 and "pruned_nodes" in stats and stats["incomplete"] is False


def test_server_json_object_and_stream(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "abc"}], temperature=0, max_tokens=40,
              response_format={"type": "json_object"})
    whole = client.chat.completions.create(**kw)
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True) if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    assert whole.choices[0].message.content.startswith("{")


def test_server_parse_with_a_pydantic_model(client):
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(model=MODEL, messages=[{"role": "user", "content": "abc"}], temperature=0, max_tokens=60, response_format=Record)
    rec = r.choices[0].message.parsed
    assert isinstance(rec, Record) and 0 <= rec.id <= 99


def test_server_completions_endpoint_with_response_format(client):
    r = client.completions.create(model=MODEL, prompt="abc", temperature=0, max_tokens=60,
                                  extra_body={"response_format": _schema_format()})
    jsonschema.validate(json.loads(r.choices[0].text), RECORD)
    chunks = list(client.completions.create(model=MODEL, prompt="abc", temperature=0, max_tokens=60, stream=True,
                                            extra_body={"response_format": _schema_format()}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_server_sampling_under_a_schema_stays_valid(client):
    for seed in range(3):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "abc"}], temperature=1.0,
                                           seed=seed, max_tokens=60, response_format=_schema_format())
        jsonschema.validate(json.loads(r.choices[0].message.content), RECORD)


def test_server_batches_constrained_plain_steps(client):
    """Concurrent ar requests are batched into one forward per plain step; every row is masked."""
    out: dict[int, str] = {}

    def go(i):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ab" * (i + 1)}], temperature=0,
                                           max_tokens=60, response_format=_schema_format(), extra_body={"paradec": {"method": "ar"}})
        out[i] = r.choices[0].message.content

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(out) == 4
    for text in out.values():
        jsonschema.validate(json.loads(text), RECORD)


@pytest.mark.parametrize("fmt,message", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}, "frob"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 3, "maximum": 1}}}, "nsatisfiable"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}, "not"),
    ({"type": "xml"}, "type"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "regex", "regex": "(("}, "regex"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_server_bad_response_format_is_400(base, path, fmt, message):
    import httpx

    body = {"model": MODEL, "max_tokens": 5, "response_format": fmt}
    body.update({"messages": [{"role": "user", "content": "abc"}]} if "chat" in path else {"prompt": "abc"})
    r = httpx.post(base + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error" and "\n" not in err["message"]


# ---- the structured benchmark's machinery ----------------------------------------------------------
def test_structured_bench_rows(json_model_dir, tmp_path):
    from paradec.bench.structured import StructuredConfig, run_structured, table

    out = tmp_path / "s.json"
    cfg = StructuredConfig(model=json_model_dir, methods=("ar", "suffix"), peers=("hf",), max_new_tokens=12, limit=2,
                           dtype="float64", json_path=str(out))
    result = run_structured(cfg, log=lambda line: None)
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"ar", "suffix", "hf"} and result["schemas"] == 2
    assert rows["suffix"]["identical_to_ar"] == "2/2" and rows["hf"]["identical_to_ar"] == "2/2"
    for r in rows.values():
        assert r["valid"] <= r["complete"] <= 2 and r["failed"] == 0
    assert json.loads(out.read_text())["rows"] and "| suffix |" in table(result)
    # the report: a table per row and per category, and a PNG of every row's tokens/s
    from paradec.bench.structured import per_category, write_report

    cats = per_category(result)
    assert cats and all(set(v) <= {"suffix", "hf"} and all(x > 0 for x in v.values()) for v in cats.values())
    files = write_report(result, str(tmp_path / "rep"), command="paradec bench --suite structured")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| suffix |" in md and "per category" in md and "paradec bench --suite structured" in md
    assert (tmp_path / "rep" / "structured.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(files) == 2
    with pytest.raises(ParadecError, match="cannot create"):
        write_report(result, str(out / "sub"))  # under a file


def test_llama_grammar_check_flags_schemas_llama_cpp_cannot_run():
    """The structured bench asks a child process which schemas llama.cpp can run: a grammar its
    own parser rejects would crash the bench process (an escaped dot in a pattern), a converter
    failure is named too, and a plain schema passes."""
    pytest.importorskip("llama_cpp")
    from paradec.bench.llama_grammar_check import REASONS, check
    from paradec.models.loader import resolve

    src = resolve("smollm2-135m")
    gguf = src.path
    semver = {"type": "object", "properties": {"v": {"type": "string", "pattern": "^[0-9]{1,3}\\.[0-9]{1,3}$"}}, "required": ["v"]}
    plain = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    recursive = {"$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
                 "$ref": "#/$defs/node"}
    bad = check(gguf, [("semver", semver), ("plain", plain), ("recursive", recursive)])
    assert bad == {"semver": REASONS["parse"], "recursive": REASONS["convert"]}
    assert "did not get to" in check("/nonexistent.gguf", [("plain", plain)])["plain"]
