"""The HTTP edge's limits (no web framework needed to read them: the CLI shows their defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParadecError
from ..options import option


@dataclass(frozen=True)
class TransportLimits:
    # header_timeout: from connect (or a new request's first byte) to the end of its headers
    header_timeout: float = option(10.0, "--header-timeout", help="Seconds a client has to send its request headers (else 408).")
    body_timeout: float = option(60.0, "--body-timeout", help="Seconds a client has to send its request body (else 408).")
    keep_alive: float = option(5.0, "--keep-alive", help="Seconds an idle connection stays open.")
    max_connections: int = option(256, "--max-connections", help="Open connections; more are answered 503 and closed.")
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
