"""The HTTP edge's limits (no web framework needed to read them: the CLI shows their defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParadecError


@dataclass(frozen=True)
class TransportLimits:
    header_timeout: float = 10.0  # s from connect (or a new request's first byte) to the end of its headers
    body_timeout: float = 60.0  # s to receive a whole request body
    keep_alive: float = 5.0  # s an idle kept-alive connection stays open
    max_connections: int = 256  # open connections; more are answered 503 and closed
    max_header_bytes: int = 64 << 10  # request line + headers
    max_body_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "keep_alive"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ParadecError(f"{name} (--{name.replace('_', '-')}) must be a finite number of seconds > 0, got {value}")
        for name in ("max_connections", "max_header_bytes", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ParadecError(f"{name} must be an integer >= 1, got {value}")
