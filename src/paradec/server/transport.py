"""The HTTP edge: limits that hold before a request reaches a route.

- ``LimitBody`` (ASGI middleware) reads the body itself, counting bytes however it is framed
  (Content-Length or chunked), and answers 413 as soon as it passes the limit: it never holds
  more than the limit plus one received chunk. A body that takes longer than ``body_timeout``
  to arrive answers 408.
- ``protocol_class(limits)`` is uvicorn's httptools protocol with what uvicorn lacks: a header
  timeout (a client that has not finished its request headers within ``header_timeout`` seconds
  of connecting, or of starting a new request on a kept-alive connection, gets 408 and is
  closed), a cap on header bytes (431), a cap on open connections (503 at accept time), and the
  parser's own 400 (a malformed Content-Length such as ``abc`` or ``-5``, or any unparsable
  request) as an OpenAI error object instead of plain text.

Why a protocol subclass: uvicorn (0.55) has no header timeout (``timeout_keep_alive`` only runs
between requests), its ``limit_concurrency`` answers a plain-text 503 and only once a request's
headers are in (so trickling sockets all stay open), ``h11_max_incomplete_event_size`` applies to
its h11 parser only, and the parser's 400 is written before the app is ever called. The hooks
used (``connection_made``, ``data_received``, ``on_url``, ``on_header``, ``on_headers_complete``,
``send_400_response``) are those of uvicorn's ``HttpToolsProtocol``.
"""

from __future__ import annotations

import asyncio
import json
import time
from .errors import APIError
from .limits import TransportLimits


# ---- ASGI: the body limit, below the routes ---------------------------------------------------------
class LimitBody:
    """Read each HTTP request's body up to ``limit`` bytes, then hand it to the app in one
    message; past the limit (declared or counted), answer 413 without reading further."""

    def __init__(self, app, limit: int, timeout: float = 60.0) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            error = APIError(413, self._too_large()) if length.isdigit() else APIError.bad_request("malformed Content-Length header")
            return await _answer(error, scope, receive, send)
        chunks: list[bytes] = []
        size, deadline = 0, time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                error = APIError(408, f"the request body did not arrive within {self.timeout:g} s", code="timeout")
                return await _answer(error, scope, receive, send)
            if message["type"] != "http.request":  # the client left before sending its body
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                chunks.clear()
                return await _answer(APIError(413, self._too_large()), scope, receive, send)
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        chunks.clear()
        sent = False

        async def receive_replayed():
            nonlocal sent
            if not sent:
                sent = True
                return replay
            return await receive()  # after the body: the disconnect, when it comes

        return await self.app(scope, receive_replayed, send)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.limit} bytes"


async def _answer(error: APIError, scope, receive, send) -> None:
    """Send ``error`` and close the connection (the rest of the body is never read)."""
    response = error.response()
    response.headers["connection"] = "close"
    await response(scope, receive, send)


# ---- uvicorn: the connection level ----------------------------------------------------------------------
def _raw_response(status: int, reason: str, error: APIError) -> bytes:
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Refused(Exception):
    """Raised in a parser callback once the connection has been answered and closed."""


class _GuardedHeaders:
    """The guards, mixed in before uvicorn's ``HttpToolsProtocol`` (whose hooks they extend through
    ``super()``): kept apart from it so that uvicorn is imported only when a server starts."""

    _limits: TransportLimits  # set on the class by protocol_class

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_headers = True  # between a request's first byte (or the connect) and its headers' end
        self._header_bytes = 0  # request line and headers parsed so far
        self._raw_header_bytes = 0  # bytes received since the headers began

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            self._refuse(503, "Service Unavailable", APIError(
                503, f"the server has {self._limits.max_connections} open connections; retry later", code="too_many_connections",
            ))
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._raw_header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._raw_header_bytes > self._limits.max_header_bytes:
            self._headers_too_large()  # still no end of the headers in sight

    def on_url(self, url: bytes) -> None:
        self._count_header(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self._limits.max_header_bytes:
            self._headers_too_large()
            raise _Refused()  # stops the parser (uvicorn then calls send_400_response: a no-op here)

    def _headers_too_large(self) -> None:
        self._refuse(431, "Request Header Fields Too Large", APIError(
            431, f"the request headers are larger than {self._limits.max_header_bytes} bytes",
            type="invalid_request_error", code="headers_too_large",
        ))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers, self._raw_header_bytes = False, 0
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:  # the parser could not read the request
        self._refuse(400, "Bad Request", APIError.bad_request(
            "malformed HTTP request (for example a Content-Length that is not a non-negative integer)",
            code="malformed_request",
        ))

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._limits.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._in_headers:
            self._refuse(408, "Request Timeout", APIError(
                408, f"the request headers did not arrive within {self._limits.header_timeout:g} s", code="timeout",
            ))

    def _refuse(self, status: int, reason: str, error: APIError) -> None:
        self._disarm()
        self._in_headers = False
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, error))
            self.transport.close()


def protocol_class(limits: TransportLimits) -> type:
    """uvicorn's httptools protocol, guarded by ``limits`` (pass as ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return type("GuardedProtocol", (_GuardedHeaders, HttpToolsProtocol), {"_limits": limits})
