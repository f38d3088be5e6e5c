"""One worker thread owns the engine and serves every request, fairly.

Requests arrive tokenized (``tokenized``, run by the request handler in a thread pool, so a
huge prompt never holds the worker) and enter a bounded queue. The worker admits them (check
against the context window, build the drafter: bad input fails here, before the first forward),
then decodes up to ``max_active`` of them: each round advances every active request by exactly
one decode step (a plain token, or a whole speculative draft verified), so no request,
speculative or not, waits more than one step of each other active request. A request cancelled
(client gone) or past its deadline also stops inside a long step: its setup, prefill, draft and
verify run under ``paradec.interrupt.interruptible``, whose checkpoints sit in the long loops.

Continuous batching: in each round, the requests whose step is a plain decoding step (method
``ar``, or a drafter that proposed nothing this step) run in ONE target forward, each row on
its own KV cache (``HFCausalLM.forward_rows``); requests join and leave that batch from one
round to the next. Speculative steps (a draft tree per request, of its own shape) run one
forward each. ``batch=False`` turns batching off.

The worker talks to the asyncio side only through each job's event queue:
``("ready", prompt_tokens)`` once admitted, ``("text", piece)`` per step that made new text
(streaming jobs), then ``("done", Result)`` or ``("error", APIError)``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..decode import ForwardInput, context_room
from ..engine import Engine, Stream
from ..errors import ParadecError
from ..interrupt import Interrupted, interruptible
from ..models.causal_lm import BatchedLM
from ..stats import DecodeStats
from .errors import APIError, from_paradec
from .metrics import Metrics
from .request import GenParams, Result
from .sessions import SessionDrafters

log = logging.getLogger("paradec.server")


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Job:
    params: GenParams
    loop: asyncio.AbstractEventLoop
    timeout: float
    endpoint: str = ""
    want_pieces: bool = False  # send ("text", piece) events (streaming requests)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrival: float = field(default_factory=time.monotonic)
    cancelled: str = ""  # set (to a reason) by the asyncio side; the worker drops the job
    # worker-side state
    stream: Stream | None = None
    drafter: Any = None  # a session's kept drafter, checked out of SessionDrafters while decoding
    started: float = 0.0
    first_token: float = 0.0

    @property
    def deadline(self) -> float:
        return self.arrival + self.timeout

    def cancel(self, reason: str = "disconnect") -> None:
        self.cancelled = self.cancelled or reason

    def stopped(self) -> bool:
        """Cancelled or past its deadline: checked inside long steps (``paradec.interrupt``)."""
        return bool(self.cancelled) or time.monotonic() > self.deadline

    def emit(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass


def prompt_ids(engine: Engine, p: GenParams) -> list[int]:
    """The request's prompt as token ids (chat template applied), checked against the vocabulary
    and the context window by the one validation of prompts (``Engine.prompt_ids``)."""
    ctx = engine.target.max_context
    if not (isinstance(p.prompt, list) and p.prompt and all(isinstance(t, int) for t in p.prompt)):
        chars = len(p.prompt) if isinstance(p.prompt, str) else sum(
            len(m.get("content", "")) for m in p.prompt if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
        if chars > 2 * ctx * _max_token_bytes(engine):  # no need to tokenize it to know (and hold its tokens)
            raise APIError.bad_request(
                f"the prompt has {chars} characters: more than the context window of {ctx} tokens can hold", "prompt"
            )
    return engine.prompt_ids(p.prompt, chat=p.chat)


_TOKEN_BYTES: "weakref.WeakKeyDictionary[Engine, int]" = weakref.WeakKeyDictionary()


def _max_token_bytes(engine: Engine) -> int:
    """The most UTF-8 bytes one token of ``engine``'s vocabulary stands for (>= its characters),
    so a text of n characters has at least n / this many tokens. That holds for tokenizers that
    do not shrink text before splitting it (byte-level BPE); the factor 2 above leaves room for
    normalizers that do (whitespace folding), where it is a generous guard rather than a proof."""
    if engine not in _TOKEN_BYTES:
        tok = engine.tokenizer
        try:
            longest = max(len(tok.convert_tokens_to_string([t]).encode("utf-8", "replace")) for t in tok.get_vocab())
        except Exception:  # an odd tokenizer: a generous guess
            longest = 256
        _TOKEN_BYTES[engine] = max(16, longest)
    return _TOKEN_BYTES[engine]


def setup_error(e: Exception) -> APIError:
    """A failure while turning a request into a job: the client's input, answered 400."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ParadecError):
        return from_paradec(e)
    log.warning("request rejected while setting up: %s", e, exc_info=True)
    first = (str(e).splitlines() or [""])[0][:300]
    return APIError.bad_request(f"invalid request: {type(e).__name__}: {first}")


def tokenized(engine: Engine, p: GenParams) -> GenParams:
    """``p`` with its prompt tokenized: run by the request handler in a thread pool (never on the
    worker, which decodes for everyone), so the context-window check comes before queueing."""
    try:
        p = replace(p, prompt=prompt_ids(engine, p))
    except Exception as e:
        raise setup_error(e) from None
    if p.response_format is not None:  # compiled for this model's tokenizer once, before queueing
        try:
            p = replace(p, response_format=engine.constraint(p.response_format))
        except ParadecError as e:
            raise APIError.bad_request(str(e), "response_format", "invalid_response_format") from None
    return p


def finish_reason(stats: DecodeStats) -> str:
    return "stop" if stats.stop_reason in ("eos", "stop") else "length"


class Scheduler:
    def __init__(
        self, engine: Engine, metrics: Metrics, max_queue: int = 64, max_active: int = 16, batch: bool = True,
        sessions: int = 0,
    ) -> None:
        if max_queue < 1 or max_active < 1:
            raise ParadecError("max_queue and max_active must be >= 1")
        self.engine, self.metrics = engine, metrics
        self.max_queue, self.max_active = max_queue, max_active
        self.batch = batch  # continuous batching of plain decoding steps across requests
        self._batchable = isinstance(engine.target, BatchedLM)
        self._cv = threading.Condition()
        self._inbox: deque[Job] = deque()  # submitted, not yet admitted
        self._waiting: deque[Job] = deque()  # admitted, waiting for a decode slot
        self._active: list[Job] = []
        self._queued = 0  # inbox + waiting, kept under the lock so the bound is exact
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.sessions = SessionDrafters(engine, sessions)  # worker-thread only
        metrics.bind(lambda: self._queued, lambda: len(self._active))

    # ---- asyncio side ------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping or not self.alive:
                why = "the server is shutting down" if self._stopping else "the decoding worker is not running"
                raise APIError(503, why, type="server_error")
            if self._queued >= self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} waiting); retry later")
            self._queued += 1
            self._inbox.append(job)
            self._cv.notify()

    def start(self) -> None:
        _max_token_bytes(self.engine)  # measured once, before the first request needs it
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="paradec-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---- worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.no_grad():
            while True:
                with self._cv:
                    while not self._stopping and not (self._inbox or self._waiting or self._active):
                        self._cv.wait()
                    if self._stopping:
                        break
                    new = list(self._inbox)
                    self._inbox.clear()
                t0 = time.perf_counter()
                try:
                    self._round(new)
                except Exception:  # a bug here must not kill the worker: fail the round's jobs
                    log.exception("scheduler round failed")
                    self._fail_all(APIError(500, "internal scheduler error", type="server_error"))
                self.metrics.busy.inc(time.perf_counter() - t0)
        self._fail_all(APIError(503, "the server is shutting down", type="server_error"))

    def _round(self, new: list[Job]) -> None:
        for job in new:
            self._admit(job)
        self._fill_slots()
        self.rounds += 1
        plain: list[tuple[Job, ForwardInput]] = []
        for job in list(self._active):
            step = self._prepare(job)
            if step is None:
                self._active.remove(job)
            elif step.plain and self.batch and self._batchable:
                plain.append((job, step))  # run below, in one forward with the others
            else:
                self._forward_one(job, step)
        if len(plain) == 1:
            self._forward_one(*plain[0])
        elif plain:
            self._forward_batch(plain)

    def _forward_one(self, job: Job, step: ForwardInput) -> None:
        t0 = time.perf_counter()
        try:
            with interruptible(job.stopped):
                logits = job.stream.decoder.forward(step)  # [n+1, V]
        except Interrupted:
            self._drop_active(job)
            return
        except Exception:
            self._decode_failed(job)
            return
        self._commit(job, logits, time.perf_counter() - t0)

    def _forward_batch(self, plain: list[tuple["Job", ForwardInput]]) -> None:
        """Continuous batching: one forward for every request at a plain decoding step."""
        t0 = time.perf_counter()
        try:
            ids = torch.cat([step.ids for _, step in plain])  # [B, 1]
            positions = torch.cat([step.positions for _, step in plain])  # [B, 1]
            logits = self.engine.target.forward_rows(ids, positions, [step.cache for _, step in plain])  # [B, 1, V]
        except Exception:
            for job, _ in plain:
                self._decode_failed(job)
            return
        dt = time.perf_counter() - t0
        self.metrics.batch_size.observe(len(plain))
        for i, (job, _) in enumerate(plain):
            self._commit(job, logits[i], dt)

    def _prepare(self, job: Job) -> ForwardInput | None:
        """Propose ``job``'s next step; None when it finished, failed or was dropped."""
        if self._dropped(job):
            return None
        try:
            with interruptible(job.stopped):  # a long prefill or a large draft stops midway
                step = job.stream.decoder.prepare()
        except Interrupted:
            self._dropped(job)
            return None
        except ParadecError as e:
            self._close(job)
            job.emit("error", from_paradec(e))
            return None
        except Exception:
            log.exception("decoding failed")
            self._close(job)
            job.emit("error", APIError(500, "internal error while decoding", type="server_error"))
            return None
        if step is None:
            self._piece(job, job.stream.tail())
            self._finish(job)
        return step

    def _commit(self, job: Job, logits: torch.Tensor, forward_s: float) -> None:
        try:
            with interruptible(job.stopped):
                new = job.stream.decoder.commit(logits, forward_s)
            piece = job.stream.absorb(new)
        except Interrupted:
            self._drop_active(job)
            return
        except Exception:
            self._decode_failed(job)
            return
        self._piece(job, piece)

    def _drop_active(self, job: Job) -> None:
        """``job`` was interrupted mid-step (cancelled or past its deadline): end it."""
        self._dropped(job)
        if job in self._active:
            self._active.remove(job)

    def _decode_failed(self, job: Job) -> None:
        log.exception("decoding failed")
        self._close(job)
        job.emit("error", APIError(500, "internal error while decoding", type="server_error"))
        if job in self._active:
            self._active.remove(job)

    def _fail_all(self, error: APIError) -> None:
        with self._cv:
            rest = [*self._inbox, *self._waiting, *self._active]
            self._inbox.clear()
            self._waiting.clear()
            self._active = []
            self._queued = 0
        for job in rest:
            self._close(job)
            job.emit("error", error)

    def _dequeue(self, job: Job) -> None:
        with self._cv:
            self._queued -= 1

    def _admit(self, job: Job) -> None:
        if self._dropped(job):
            self._dequeue(job)
            return
        try:
            with interruptible(job.stopped):
                job.stream, job.drafter = self._open(job)
        except Interrupted:  # the client left (or time ran out) while its drafter was being built
            self._dropped(job)
            self._dequeue(job)
            return
        except Exception as e:  # everything here derives from the request: the client's input
            self._dequeue(job)
            job.emit("error", setup_error(e))
            return
        self._waiting.append(job)
        job.emit("ready", len(job.stream.prompt_ids))

    def _open(self, job: Job) -> tuple[Stream, Any]:
        engine, p = self.engine, job.params
        ids = prompt_ids(engine, p)  # the server tokenized it already: only the cheap id checks here
        ctx = engine.target.max_context
        room = context_room(len(ids), ctx, engine.name)
        if p.max_tokens is not None:
            if p.max_tokens > room:
                raise APIError.bad_request(
                    f"max_tokens is {p.max_tokens}, but the context window is {ctx} tokens and the prompt "
                    f"has {len(ids)}: at most {room} new tokens fit",
                    "max_tokens",
                )
            max_new_tokens = p.max_tokens
        else:
            max_new_tokens = min(p.default_max_tokens or room, room)
        drafter = self.sessions.checkout(p)
        try:
            stream = engine.stream(
                ids, method=p.method, max_new_tokens=max_new_tokens, temperature=p.temperature, top_p=p.top_p,
                top_k=p.top_k, seed=p.seed, stop=list(p.stop), options=p.options,
                proposer=drafter.proposer if drafter else None, response_format=p.response_format,
            )
        except BaseException:
            self.sessions.checkin(drafter)
            raise
        return stream, drafter

    def _dropped(self, job: Job) -> bool:
        """True (and the job ended) when it was cancelled or ran past its deadline."""
        if not job.cancelled and time.monotonic() > job.deadline:
            job.cancel("timeout")
            job.emit("error", APIError(408, f"the request took longer than the server's timeout ({job.timeout:g} s)", code="timeout"))
        if job.cancelled:
            self.metrics.cancelled.labels(job.cancelled).inc()
            self._close(job)
            return True
        return False

    def _fill_slots(self) -> None:
        for job in list(self._waiting):  # drop cancelled / expired waiters first
            if self._dropped(job):
                self._waiting.remove(job)
                self._dequeue(job)
        while self._waiting and len(self._active) < self.max_active:
            job = self._waiting.popleft()
            self._dequeue(job)
            job.started = time.monotonic()
            self.metrics.queue_wait.observe(job.started - job.arrival)
            self._active.append(job)

    def _piece(self, job: Job, piece: str) -> None:
        if piece:
            if not job.first_token:
                job.first_token = time.monotonic()
                self.metrics.ttft.observe(job.first_token - job.arrival)
            if job.want_pieces:
                job.emit("text", piece)

    def _finish(self, job: Job) -> None:
        s = job.stream
        now = time.monotonic()
        if not job.first_token:
            self.metrics.ttft.observe(now - job.arrival)
        self.metrics.finished(s.stats, len(s.token_ids))
        self.metrics.latency.labels(job.endpoint).observe(now - job.arrival)
        self._close(job)
        job.emit("done", Result(s.text, list(s.token_ids), len(s.prompt_ids), s.stats, finish_reason(s.stats), job.started - job.arrival))

    def _close(self, job: Job) -> None:
        if job.stream is not None:
            job.stream.decoder.close()
        self.sessions.checkin(job.drafter)
        job.drafter = None
