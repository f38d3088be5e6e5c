"""The FastAPI app: OpenAI-compatible routes over a Backend (one local Scheduler, or a cluster)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..version import __version__
from ..engine import Engine
from .backend import Backend, LocalBackend
from ..errors import ParadecError
from ..proposers import METHODS, check_options
from . import errors
from .errors import APIError
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .request import GenParams, Result
from .scheduler import Job, QueueFull
from .schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)
from .config import ServerConfig
from .limits import TransportLimits
from .transport import LimitBody

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # as OpenAI's legacy completions endpoint
MAX_BODY_BYTES = TransportLimits.max_body_bytes  # a larger body, declared or counted, answers 413
BACKSTOP_S = 5.0  # the asyncio side gives up on a job this long after its deadline
ERRORS = {status: {"model": ErrorResponse} for status in (400, 408, 413, 429, 500, 503)}


def create_app(engine: Engine, config: ServerConfig | None = None) -> FastAPI:
    """The single-process server: the routes over one local Scheduler."""
    cfg = config or ServerConfig()
    if cfg.method not in engine.methods:
        raise ParadecError(f"unknown or unavailable method '{cfg.method}' (choose from {', '.join(engine.methods)})")
    backend = LocalBackend(engine, cfg)
    app = build_app(backend, cfg)
    app.state.scheduler, app.state.engine = backend.scheduler, engine
    return app


def build_app(backend: Backend, cfg: ServerConfig) -> FastAPI:
    """The OpenAI-compatible routes over ``backend`` (one local scheduler, or a cluster of them)."""
    served = _Served.of(backend, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        backend.start()
        try:
            yield
        finally:
            backend.stop()

    app = FastAPI(
        title="paradec",
        version=__version__,
        summary="OpenAI-compatible completions with lossless speculative decoding.",
        lifespan=lifespan,
    )
    app.state.metrics, app.state.backend = backend.metrics, backend
    errors.install(app)

    app.add_middleware(LimitBody, limit=cfg.limits.max_body_bytes, timeout=cfg.limits.body_timeout)
    app.add_middleware(_CountRequests, metrics=backend.metrics)
    _add_info_routes(app, served)
    _add_completion_routes(app, served)
    return app


@dataclass(frozen=True)
class _Served:
    """What every route reads: the backend, the server's settings and the names the model answers to."""

    backend: Backend
    cfg: ServerConfig
    model_id: str
    names: frozenset[str]
    created: int  # the model card's creation time: when the app was built

    @classmethod
    def of(cls, backend: Backend, cfg: ServerConfig) -> "_Served":
        info = backend.info
        names = frozenset(n for n in (cfg.served_name, info.name) if n)
        return cls(backend, cfg, cfg.served_name or info.name, names, int(time.time()))


# ---- request -> job --------------------------------------------------------------------
def _reject_unsupported(body) -> None:
    """The OpenAI fields every endpoint shares that paradec does not implement: a 400, never ignored."""
    if body.n not in (None, 1):
        raise APIError.bad_request("only n=1 is supported", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise APIError.bad_request(f"{name} is not supported (paradec samples the model's own distribution)", name)
    if body.logit_bias:
        raise APIError.bad_request("logit_bias is not supported", "logit_bias")


def _method_and_options(served: _Served, ext) -> tuple[str, dict[str, Any]]:
    """The request's method (``paradec.method`` or the server's) and its checked options (the
    request's, bounded; else the server's own for the server's method)."""
    cfg, info = served.cfg, served.backend.info
    method = ext.method if ext and ext.method is not None else cfg.method
    if method not in info.methods:
        why = "needs a draft model, which this server has not loaded" if method in METHODS else "is unknown"
        raise APIError.bad_request(
            f"method '{method}' {why} (available: {', '.join(info.methods)})", "paradec.method", "invalid_method"
        )
    if ext and ext.options is not None:
        try:
            return method, check_options(method, ext.options, cfg.option_limits)
        except ParadecError as e:
            raise APIError.bad_request(str(e), "paradec.method" if "takes no options" in str(e) else "paradec.options") from None
    return method, dict(cfg.options) if method == cfg.method else {}


def _gen_params(served: _Served, body, prompt, chat: bool, max_tokens: int | None, default_max: int | None) -> GenParams:
    """Check a request body's shared fields and turn them into the scheduler's GenParams."""
    if body.model not in served.names:
        raise APIError.bad_request(
            f"unknown model '{body.model}'; this server serves '{served.model_id}'", "model", "model_not_found"
        )
    _reject_unsupported(body)
    ext = body.paradec
    method, options = _method_and_options(served, ext)
    temperature = 1.0 if body.temperature is None else float(body.temperature)
    if 0 < temperature < 1e-5:  # below float precision of the logits: the greedy limit
        temperature = 0.0
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:  # compiled with the prompt (scheduler.tokenized): a bad one is the request's 400
        response_format = None if body.response_format is None else body.response_format.as_format()
    except ParadecError as e:
        raise APIError.bad_request(str(e), "response_format", "invalid_response_format") from None
    return GenParams(
        prompt=prompt, chat=chat, method=method, options=options, max_tokens=max_tokens, default_max_tokens=default_max,
        temperature=temperature, top_p=1.0 if body.top_p is None else float(body.top_p),
        top_k=body.top_k or 0, seed=body.seed, stop=stop, session=(ext.session if ext else None) or body.user,
        response_format=response_format,
    )


async def _admit(served: _Served, request: Request, params: GenParams, endpoint: str, stream: bool) -> Job:
    """Tokenize (locally: in a thread pool, never on the worker), queue the job and wait until
    it is admitted (or refused)."""
    arrival = time.monotonic()
    params = await served.backend.prepare(params)
    try:
        job = served.backend.submit(params, endpoint, stream, arrival=arrival)
    except QueueFull as e:
        served.backend.metrics.rejected.labels("queue_full").inc()
        raise APIError(429, str(e), code="queue_full") from None
    await _next_event(job, request)
    return job


def _stats_field(r: Result) -> dict[str, Any]:
    d = r.stats.to_dict()
    d.pop("accept_lengths", None)
    d["queue_s"] = r.queue_s
    if r.replica:
        d["replica"] = r.replica
    return d


def _usage(r: Result) -> dict[str, Any]:
    return Usage(prompt_tokens=r.prompt_tokens, completion_tokens=len(r.token_ids),
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=r.stats.cached_prompt_tokens),
                 total_tokens=r.prompt_tokens + len(r.token_ids)).model_dump()


def _completion_prompt(body: CompletionRequest) -> Any:
    """The one prompt of a legacy completions request (text or token ids), after refusing the
    fields paradec does not implement."""
    for name, ok in (("echo", not body.echo), ("logprobs", body.logprobs is None),
                     ("best_of", body.best_of in (None, 1)), ("suffix", not body.suffix)):
        if not ok:
            raise APIError.bad_request(f"{name} is not supported", name)
    prompt: Any = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise APIError.bad_request("batched prompts are not supported: send one prompt per request", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str) and not prompt.strip():
        raise APIError.bad_request("the prompt is empty", "prompt")
    return prompt


def _chat_messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    """The chat request's messages as role/content dicts ("developer" is the system role), after
    refusing the fields paradec does not implement."""
    for name in ("logprobs", "top_logprobs", "tools"):
        if getattr(body, name):
            raise APIError.bad_request(f"{name} is not supported", name)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    if not any(m["content"].strip() for m in messages):
        raise APIError.bad_request("the messages are empty", "messages")
    return messages


# ---- routes --------------------------------------------------------------------------------
def _add_info_routes(app: FastAPI, served: _Served) -> None:
    """Health, Prometheus metrics and the model list."""
    backend, cfg, info = served.backend, served.cfg, served.backend.info

    @app.get("/health")
    async def health() -> JSONResponse:
        alive, body = await backend.health()
        return JSONResponse({"model": served.model_id, **body}, status_code=200 if alive else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(await backend.render_metrics(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> dict[str, Any]:
        card = ModelCard(
            id=served.model_id, created=served.created,
            paradec={"methods": list(info.methods), "default_method": cfg.method, "max_context": info.max_context},
        )
        return ModelList(data=[card]).model_dump()


def _add_completion_routes(app: FastAPI, served: _Served) -> None:
    """The two generating endpoints: legacy completions and chat completions, each whole or streamed."""

    @app.post("/v1/completions", response_model=CompletionResponse, responses=ERRORS)
    async def completions(body: CompletionRequest, request: Request):
        params = _gen_params(served, body, _completion_prompt(body), False, body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        job = await _admit(served, request, params, "/v1/completions", bool(body.stream))

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": now, "model": served.model_id,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            return _sse(job, request, lambda piece: chunk(piece, None), lambda r: chunk("", r.finish_reason),
                        lambda r: {**chunk("", None), "choices": [], "usage": _usage(r), "paradec": _stats_field(r)})
        r = await _result(job, request)
        return {**chunk(r.text, r.finish_reason), "usage": _usage(r), "paradec": _stats_field(r)}

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        messages = _chat_messages(body)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = _gen_params(served, body, messages, True, max_tokens, None)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        job = await _admit(served, request, params, "/v1/chat/completions", bool(body.stream))

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": served.model_id,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            return _sse(job, request, lambda piece: chunk({"content": piece}, None), lambda r: chunk({}, r.finish_reason),
                        lambda r: {**chunk({}, None), "choices": [], "usage": _usage(r), "paradec": _stats_field(r)},
                        first=chunk({"role": "assistant", "content": ""}, None))
        r = await _result(job, request)
        return {
            "id": rid, "object": "chat.completion", "created": now, "model": served.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                         "finish_reason": r.finish_reason}],
            "usage": _usage(r), "paradec": _stats_field(r),
        }


_KNOWN = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}


class _CountRequests:
    """ASGI middleware: count answered requests by endpoint and status (streams included)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            self.metrics.requests.labels(path if path in _KNOWN else "other", str(status["code"])).inc()


# ---- waiting on the worker, watching the client ---------------------------------------------------
async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)


_GONE = object()


async def _until(job: Job, request: Request, awaitable):
    """Await ``awaitable`` (the job's next event) unless the client disconnects first: then
    cancel the job and return ``_GONE``. A backstop past the job's deadline (the worker enforces
    it between steps) turns a stuck job into a timeout error event."""
    get = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_disconnected(request))
    backstop = max(0.0, job.deadline - time.monotonic()) + BACKSTOP_S
    try:
        done, _ = await asyncio.wait({get, gone}, timeout=backstop, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        job.cancel("disconnect")
        raise
    finally:
        for t in (get, gone):
            if not t.done():
                t.cancel()
    if get in done:
        return get.result()
    if gone in done:
        job.cancel("disconnect")
        return _GONE
    job.cancel("timeout")
    return "error", APIError(408, f"the request took longer than the server's timeout ({job.timeout:g} s)", code="timeout")


def _gone() -> APIError:
    return APIError(499, "client closed the request", code="client_disconnected")


async def _next_event(job: Job, request: Request) -> tuple[str, Any]:
    """The job's next event as ``(kind, payload)``; a gone client (499) and an error event raise."""
    event = await _until(job, request, job.events.get())
    if event is _GONE:
        raise _gone()
    kind, payload = event
    if kind == "error":
        raise payload
    return kind, payload


async def _result(job: Job, request: Request) -> Result:
    """Wait for a whole (unstreamed) job's result."""
    while True:
        kind, payload = await _next_event(job, request)
        if kind == "done":
            return payload


def _sse(job: Job, request: Request, piece_chunk, finish_chunk, usage_chunk, first: dict | None = None) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield _data(first)
            while True:
                event = await _until(job, request, job.events.get())
                if event is _GONE:
                    return
                kind, payload = event
                if kind == "text":
                    yield _data(piece_chunk(payload))
                elif kind == "done":
                    yield _data(finish_chunk(payload))
                    yield _data(usage_chunk(payload))
                    break
                elif kind == "error":
                    yield _data(payload.body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel("disconnect")  # no-op for a finished job; stops decoding for a gone client

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
