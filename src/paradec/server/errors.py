"""OpenAI-style error objects, and the handlers that turn every failure into one.

A client only ever sees ``{"error": {"message", "type", "param", "code"}}`` with a 4xx for its
own mistakes; an unexpected failure answers 500 with a generic message (the traceback goes to
the server log, never to the client).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ParadecError

log = logging.getLogger("paradec.server")

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
}


class APIError(Exception):
    """An error with an HTTP status, shown to the client as an OpenAI error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def __reduce__(self):  # picklable (a cluster's replicas send errors to the router)
        return (APIError, (self.status, self.message, self.param, self.code, self.type))

    @classmethod
    def bad_request(cls, message: str, param: str | None = None, code: str | None = None) -> "APIError":
        return cls(400, message, param, code)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def from_paradec(e: ParadecError) -> APIError:
    msg = str(e)
    param = None
    for key, name in (("method", "paradec.method"), ("option", "paradec.options"), ("max_new_tokens", "max_tokens"),
                      ("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                      ("context window", "prompt"), ("prompt", "prompt"), ("messages", "messages"), ("message", "messages")):
        if key in msg:
            param = name
            break
    return APIError.bad_request(msg, param)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = max(errors, key=lambda err: len(err.get("loc", ())))  # the deepest is the most specific (unions)
    if e.get("type") == "json_invalid":
        return f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}", None
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    # drop pydantic's union-branch labels ("str", "list[str]", ...) from the location
    loc = [p for p in loc if not any(c in p for c in "[]") and p not in ("str", "int", "bool", "float", "function-after")]
    param = ".".join(loc) or None
    msg = e.get("msg", "invalid value")
    if e.get("type") == "missing":
        msg = f"'{param}' is a required field" if param else "the request body is missing"
    elif param:
        msg = f"{param}: {msg}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return msg, param


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(ParadecError)
    async def _paradec_error(request: Request, exc: ParadecError):
        return from_paradec(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        msg, param = _validation_message(exc)
        return APIError.bad_request(msg, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        resp = APIError(exc.status_code, detail).response()
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error", type="server_error").response()
