"""``response_format`` -> a grammar for the engine (llguidance's grammar string), or None.

Accepted forms (a bad one raises ``ParadecError`` with a one-line message):

- ``None`` or ``{"type": "text"}``: no constraint;
- ``{"type": "json_object"}``: any JSON object;
- ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}`` (OpenAI's);
- ``{"type": "regex", "regex": "..."}``: the whole output matches the regex;
- ``{"type": "grammar", "grammar": "..."}``: a Lark-like grammar in llguidance's syntax;
- a JSON Schema itself (a dict, or ``True``/``False``) or a pydantic model class.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ParadecError

# JSON is written compactly but readably: ", " between items, ": " after keys, no other
# whitespace (flexible whitespace lets a small model pad forever)
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
FORMAT_TYPES = ("text", "json_object", "json_schema", "regex", "grammar")
SCHEMA_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


def _schema_of(obj: Any) -> dict | bool | None:
    """The JSON Schema of a pydantic model class, else None. Its objects are closed (no
    properties besides the declared ones), as OpenAI's structured outputs make them."""
    if isinstance(obj, type):
        dump = getattr(obj, "model_json_schema", None)
        if callable(dump):
            return _closed(dump())
    return None


def _closed(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _json_schema_grammar(schema: Any) -> str:
    from llguidance import LLMatcher

    if not isinstance(schema, (dict, bool)):
        raise ParadecError(f"a JSON Schema must be an object or a boolean, got {type(schema).__name__}")
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise ParadecError(f"the JSON Schema is not JSON: {e}") from None
    try:
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as e:
        raise ParadecError(f"invalid JSON Schema: {one_line(str(e))}") from None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ParadecError(f"response_format {what} must be a non-empty string")
    return value


def grammar_for(response_format: Any) -> tuple[str, str] | None:
    """(grammar, kind) for ``response_format``, or None when it does not constrain."""
    from llguidance import LLMatcher

    if response_format is None:
        return None
    schema = _schema_of(response_format)
    if schema is not None:
        return _json_schema_grammar(schema), "json_schema"
    if isinstance(response_format, bool):
        return _json_schema_grammar(response_format), "json_schema"
    if not isinstance(response_format, dict):
        raise ParadecError(
            f"response_format must be a dict or a pydantic model class, got {type(response_format).__name__}"
        )
    kind = response_format.get("type")
    if kind not in FORMAT_TYPES:
        if "type" not in response_format or kind in SCHEMA_TYPES or isinstance(kind, list):
            return _json_schema_grammar(response_format), "json_schema"  # a JSON Schema itself
        raise ParadecError(f"unknown response_format type {kind!r} (expected one of: {', '.join(FORMAT_TYPES)})")
    if kind == "text":
        return None
    if kind == "json_object":
        return _json_schema_grammar({"type": "object"}), "json_object"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise ParadecError("response_format json_schema needs a 'json_schema' object with a 'schema'")
        return _json_schema_grammar(spec["schema"]), "json_schema"
    if kind == "regex":
        return LLMatcher.grammar_from_regex(_text(response_format.get("regex"), "regex")), "regex"
    return LLMatcher.grammar_from_lark(_text(response_format.get("grammar"), "grammar")), "grammar"


def one_line(message: str) -> str:
    """An engine message (often several lines with a caret diagram) as one line."""
    parts = [p.strip() for p in message.splitlines() if p.strip() and set(p.strip()) != {"^"}]
    return " ".join(parts)[:400]


def from_options(json_schema: str | None = None, json_object: bool = False, regex: str | None = None,
                 grammar: str | None = None) -> dict | None:
    """The ``response_format`` of the command line's ``--json-schema FILE``, ``--json-object``,
    ``--regex R`` and ``--grammar FILE`` (at most one of them), or None."""
    given = [n for n, v in (("--json-schema", json_schema), ("--json-object", json_object), ("--regex", regex),
                            ("--grammar", grammar)) if v]
    if len(given) > 1:
        raise ParadecError(f"give at most one of {', '.join(given)}")
    if json_object:
        return {"type": "json_object"}
    if regex is not None:
        return {"type": "regex", "regex": _text(regex, "regex")}
    path = json_schema or grammar
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ParadecError(f"cannot read {path}: {e.strerror or e}") from None
    if grammar is not None:
        return {"type": "grammar", "grammar": _text(text, "grammar")}
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParadecError(f"{path} is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    return {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
