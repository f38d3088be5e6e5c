"""The `structured` suite's data file: every row is a well-formed draft 2020-12 JSON Schema with
a prompt and a valid example, small enough for a small model to fill, and every schema compiles
with the grammar engine (llguidance), which accepts the example and rejects a broken one."""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache

import pytest
from jsonschema import Draft202012Validator

from paradec.suites import DATA_DIR

DATA_FILE = DATA_DIR / "structured.jsonl"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
CATEGORIES = ("flat", "nested", "array", "enum", "number", "string", "optional", "recursive")
# String formats whose values have a bounded length on their own.
BOUNDED_FORMATS = ("date", "date-time", "uuid")


@lru_cache(maxsize=1)
def rows() -> tuple[dict, ...]:
    with open(DATA_FILE, encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def row_ids() -> list[str]:
    return [r["id"] for r in rows()]


def by_id(id_: str) -> dict:
    return next(r for r in rows() if r["id"] == id_)


def root_object(schema: dict) -> dict:
    """The schema the top-level value must match (following a root `$ref` into `$defs`)."""
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/$defs/"), ref
    return schema["$defs"][ref.removeprefix("#/$defs/")]


def with_extra_key(example: dict) -> dict:
    return {**example, "zz_unexpected": 1}


# ---- the file ---------------------------------------------------------------------------------
def test_file_has_60_plus_rows_unique_ids_and_every_category():
    rs = rows()
    assert len(rs) >= 60
    ids = [r["id"] for r in rs]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    for r in rs:
        assert set(r) == {"id", "category", "schema", "prompt", "example"}, r["id"]
        assert r["category"] in CATEGORIES, r["id"]
        assert r["id"].startswith(r["category"] + "-"), r["id"]
        assert isinstance(r["prompt"], str) and r["prompt"].strip(), r["id"]
    counts = Counter(r["category"] for r in rs)
    assert set(counts) == set(CATEGORIES), counts
    assert 2 <= counts["recursive"] <= 4
    assert all(counts[c] >= 8 for c in CATEGORIES if c != "recursive"), counts


# ---- each schema ------------------------------------------------------------------------------
@pytest.mark.parametrize("id_", row_ids())
def test_schema_is_valid_and_the_example_validates(id_):
    r = by_id(id_)
    assert r["schema"].get("$schema") == DRAFT
    Draft202012Validator.check_schema(r["schema"])
    v = Draft202012Validator(r["schema"], format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [e.message for e in v.iter_errors(r["example"])]
    assert not errors, errors
    assert not v.is_valid(with_extra_key(r["example"]))  # the root object is closed


def _bound_problems(node, path: str) -> list[str]:
    """Free strings without maxLength, arrays without maxItems, objects open to any key."""
    out = []
    if isinstance(node, list):
        for i, x in enumerate(node):
            out += _bound_problems(x, f"{path}/{i}")
        return out
    if not isinstance(node, dict):
        return out
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "string" in types and "maxLength" not in node and node.get("format") not in BOUNDED_FORMATS:
        out.append(f"{path}: string without maxLength")
    if "array" in types and "maxItems" not in node:
        out.append(f"{path}: array without maxItems")
    if "object" in types and node.get("additionalProperties") is not False:
        out.append(f"{path}: object without additionalProperties: false")
    if "patternProperties" in node and "maxProperties" not in node:
        out.append(f"{path}: patternProperties without maxProperties")
    for k, v in node.items():
        if k not in ("enum", "const", "examples", "default"):
            out += _bound_problems(v, f"{path}/{k}")
    return out


@pytest.mark.parametrize("id_", row_ids())
def test_schema_bounds_the_output_and_the_prompt_names_the_fields(id_):
    r = by_id(id_)
    assert not _bound_problems(r["schema"], "#")
    assert len(json.dumps(r["example"])) <= 320  # a few dozen tokens
    missing = [k for k in root_object(r["schema"])["properties"] if k not in r["prompt"]]
    assert not missing, f"prompt does not name {missing}"


# ---- the grammar engine -------------------------------------------------------------------------
class _ByteTokens:
    """A 257-token vocabulary (the 256 bytes and an end token), enough to feed text to a matcher."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([b]) for b in range(256)] + [b"<end>"]
    special_token_ids = [256]

    def __call__(self, text):
        return list(text.encode("utf-8") if isinstance(text, str) else text)


@lru_cache(maxsize=1)
def byte_tokenizer():
    llg = pytest.importorskip("llguidance", reason="llguidance is not installed")
    return llg.LLTokenizer(llg.TokenizerWrapper(_ByteTokens()))


def engine_accepts(schema: dict, value) -> bool:
    from llguidance import LLMatcher

    m = LLMatcher(byte_tokenizer(), LLMatcher.grammar_from_json_schema(schema), log_level=0)
    assert not m.is_error(), m.get_error()
    return m.consume_tokens(list(json.dumps(value).encode("utf-8"))) and m.is_accepting()


@pytest.mark.parametrize("id_", row_ids())
def test_schema_compiles_with_llguidance_which_accepts_the_example_only(id_):
    llg = pytest.importorskip("llguidance", reason="llguidance is not installed")
    r = by_id(id_)
    grammar = llg.LLMatcher.grammar_from_json_schema(r["schema"])
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    assert not is_error and not messages, messages
    # Serialized in the schema's property order, as the engine generates it.
    assert engine_accepts(r["schema"], r["example"])
    assert not engine_accepts(r["schema"], with_extra_key(r["example"]))


def test_llguidance_rejects_what_the_suite_avoids():
    """The keywords left out of the suite are the ones this engine does not implement."""
    llg = pytest.importorskip("llguidance", reason="llguidance is not installed")
    for schema in ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
                   {"type": "string", "format": "no-such-format"},
                   {"not": {"type": "string"}}):
        is_error, _ = llg.LLMatcher.validate_grammar_with_warnings(llg.LLMatcher.grammar_from_json_schema(schema))
        assert is_error, schema
    # ... and it checks bounds and formats, so the accept test above can fail.
    person = by_id("flat-person")
    assert not engine_accepts(person["schema"], {**person["example"], "age": 121})
    assert not engine_accepts(by_id("string-phone")["schema"], {"name": "A", "phone": "+44 20 7946"})
