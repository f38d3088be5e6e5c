"""What a request asks the scheduler for (``GenParams``) and what it gets back (``Result``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..stats import DecodeStats


@dataclass
class GenParams:
    prompt: str | list[dict[str, str]] | list[int]
    chat: bool
    method: str
    options: dict[str, Any]
    max_tokens: int | None  # None: default_max_tokens, or up to the context window
    default_max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[str] = ()
    session: str | None = None  # a conversation id: its drafter state may be kept across requests
    response_format: Any = None  # a structured-output format (compiled by tokenized()), or None


@dataclass
class Result:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    stats: DecodeStats
    finish_reason: str  # "stop" or "length"
    queue_s: float
    replica: str = ""  # which replica of a cluster decoded it ("" for the single-process server)
