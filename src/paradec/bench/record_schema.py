"""What a well-formed benchmark record holds: the fields each record type needs, with their JSON
types. ``problem(rec)`` says what is wrong with a record (None when nothing is), so a damaged line
is set aside with a reason instead of failing deep inside the figures with a KeyError.
"""

from __future__ import annotations

from typing import Any

# JSON types by name; "int" and "number" exclude booleans (in Python, bool is an int)
_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "int_list": lambda v: isinstance(v, list) and all(_CHECKS["int"](x) for x in v),
    "number_list": lambda v: isinstance(v, list) and all(_CHECKS["number"](x) for x in v),
    "dict_list": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "str_list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}

_NAMES = {"int_list": "a list of ints", "number_list": "a list of numbers", "dict_list": "a list of objects",
          "str_list": "a list of strings"}


def _json_type(v: Any) -> str:
    if isinstance(v, list):
        return "a list" if all(isinstance(x, int) and not isinstance(x, bool) for x in v) else "a list with other values"
    return {bool: "bool", int: "int", float: "float", str: "str", dict: "object", type(None): "null"}.get(type(v), type(v).__name__)


# field -> (type, required); an optional field may also be null
_WRITTEN = {"segment": ("int", True), "t": ("number", True), "loadavg": ("number", False)}  # added by the writer
_MEMORY = {"peak_rss_mb": ("number", False), "rss_mb": ("number", False), "peak_gpu_mb": ("number", False)}
SCHEMA: dict[str, dict[str, tuple[str, bool]]] = {
    "segment": {
        **_WRITTEN, "start": ("str", True), "command": ("str", False), "git_commit": ("str", False),
        "machine": ("dict", False), "model_name": ("str", False), "categories": ("list", False),
        "prompts": ("dict", False), "skipped": ("dict_list", False), "skipped_suites": ("list", False),
        "load_s": ("number", False),
    },
    "row": {
        **_WRITTEN, "name": ("str", True), "status": ("str", False), "error": ("str", False), "kind": ("str", False),
        "description": ("str", False), "rss_growth_mb": ("number", False), "quantization": ("str", False),
    },
    "roofline": {**_WRITTEN, "prompt_tokens": ("int", True), "k": ("int_list", True), "seconds": ("number_list", True),
                 "backend": ("str", False), "curves": ("dict", False), "bandwidth_gbs": ("number", False),
                 "weight_bytes": ("int", False)},
    "skip": {**_WRITTEN, "prompt_id": ("str", True), "turn": ("int", True), "reason": ("str", True)},
    "sample": {
        **_WRITTEN, **_MEMORY,
        "runner": ("str", True), "category": ("str", True), "prompt_id": ("str", True), "turn": ("int", True),
        "repeat": ("int", True), "prompt_tokens": ("int", True), "new_tokens": ("int", True),
        "seconds": ("number", True), "forwards": ("int", False), "forward_tokens": ("int", False),
        "committed": ("int", False), "accept_lengths": ("int_list", False), "draft_s": ("number", False),
        "forward_s": ("number", False), "verify_s": ("number", False), "prefill_s": ("number", False),
        "identical": ("bool", False), "token_ids": ("int_list", True),
    },
    "segment_end": {**_WRITTEN, "complete": ("bool", False), "peak_rss_mb": ("number", False)},
}

# the run's configuration, which the figures read from the header
FINGERPRINT: dict[str, tuple[str, bool]] = {
    "model": ("str", True), "draft_model": ("str", False), "dtype": ("str", True), "device": ("str", True),
    "temperature": ("number", True), "max_new_tokens": ("int", True), "methods": ("str_list", True),
    "peers": ("str_list", True), "suites": ("str_list", True), "prompts_per_category": ("int", False),
    "repeats": ("int", True), "seed": ("int", True), "threads": ("int", False), "machine": ("dict", False),
}


def _fields(rec: dict, schema: dict[str, tuple[str, bool]], what: str) -> str | None:
    for name, (kind, required) in schema.items():
        if name not in rec:
            if required:
                return f"{what} lacks field '{name}'"
            continue
        v = rec[name]
        if v is None and not required:
            continue
        if not _CHECKS[kind](v):
            return f"{what} field '{name}' is {_json_type(v)}, expected {_NAMES.get(kind, kind)}"
    return None


def problem(rec: Any, first: bool = False) -> str | None:
    """What is wrong with ``rec`` as a record (``first``: as the file's header), or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    kind = rec.get("type")
    if first or kind == "header":
        if not first:
            return "a second header"
        if kind != "header" or not isinstance(rec.get("fingerprint"), dict):
            return "not a header"
        return None
    if kind not in SCHEMA:
        return f"unknown record type {str(kind)[:40]!r}"
    bad = _fields(rec, SCHEMA[kind], f"a {kind} record")
    if bad is None and kind == "roofline" and len(rec["k"]) != len(rec["seconds"]):
        return "a roofline record with k and seconds of different lengths"
    return bad


def fingerprint_problem(fp: dict) -> str | None:
    """What the figures cannot read in a header's fingerprint, or None."""
    return _fields(fp, FINGERPRINT, "the header's fingerprint")
