"""Pure ASGI middleware, outermost first: request context, load shedding, body size limit.

* :class:`RequestContextMiddleware` gives every request an id (``X-Request-ID``, echoed in the
  response), records Prometheus counts and latency by *route template* (never the raw path,
  which holds customer ids), and turns an unhandled exception into a JSON 500 carrying the
  request id, logged once as our bug.
* :class:`LoadSheddingMiddleware` answers 503 with ``Retry-After`` at once when more than
  ``max_in_flight`` requests are being processed, or when the request has waited longer than
  ``max_queue_delay`` for the event loop (:class:`QueueDelayMonitor`): a cached customer's
  scores are computed without yielding, so under overload requests queue in front of the loop,
  never in flight, and only their wait shows it. Health, metrics and admin endpoints are never
  shed (probes must answer, an operator must be able to reload an overloaded server).
* :class:`BodySizeLimitMiddleware` reads the request body before routing, up to the limit:
  a ``Content-Length`` over the limit, or a chunked body that grows past it, gets 413 without
  reading further. The body read is then replayed to the app.

Pure ASGI (no ``BaseHTTPMiddleware``): a few microseconds per request, and the body check
holds for every route, including ones that never read the body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from crmscore.serving.api.metrics import ServiceMetrics

logger = logging.getLogger("crmscore.serving.api")
#: one DEBUG line per request: method, route template, status, milliseconds, request id (no
#: path, query, header or body: they can hold customer ids, attributes or keys)
access_logger = logging.getLogger("crmscore.serving.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")
#: paths never shed nor counted as in flight: probes, scrapes, and an operator's reload
UNLIMITED_PREFIXES = ("/health/", "/metrics", "/v1/admin/")


def route_template(scope: Scope) -> str:
    """The matched route's template (``/v1/customers/{customer_id}/scores``), never the raw path."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or "<unmatched>"


def request_id_of(scope: Scope) -> str | None:
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    *(headers or [])],
    })
    await send({"type": "http.response.body", "body": payload})


class RequestContextMiddleware:
    """Request id, metrics by route template and status, and the last line against a 500."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if _VALID_REQUEST_ID.match(value):
                    request_id = value.decode()
                break
        if request_id is None:
            request_id = os.urandom(8).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        rid_header = (REQUEST_ID_HEADER, request_id.encode())
        status = 500
        started = False
        begin = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("internal error (our bug) in %s %s, request %s", scope.get("method"),
                             route_template(scope), request_id)
            if not started:
                status = 500
                await send_json(send, 500, {
                    "detail": "internal server error; it has been logged, quote the request_id when reporting it",
                    "request_id": request_id,
                }, [rid_header])
            else:
                raise
        finally:
            seconds = time.perf_counter() - begin
            template = route_template(scope)
            self.metrics.observe(scope.get("method", ""), template, status, seconds)
            if access_logger.isEnabledFor(logging.DEBUG):
                access_logger.debug("%s %s %d %.2f ms request %s", scope.get("method"), template, status,
                                    seconds * 1000, request_id)


class QueueDelayMonitor:
    """How far behind the event loop runs: a timer due every ``interval_s`` seconds.

    While the loop is busy, the timer's callback waits in the same queue as the requests; a
    request handled while the timer is overdue by ``d`` seconds was itself ready at least about
    ``d`` seconds before the loop got to it (the event-loop-lag signal of Node's ``toobusy`` and
    of CoDel-style queue management). Once the timer has run, the delay reads 0 again, so one
    stall does not leave a stale figure behind. Started by the app's lifespan, not at import.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self._due: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="crmscore-queue-delay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task, self._due = None, None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)

    def delay(self) -> float:
        """Seconds the loop is behind right now; 0 when on time or not watching."""
        if self._due is None:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - self._due)


class TurnGate:
    """At most ``per_turn`` requests start their work per event-loop iteration; the others wait
    their turn, first come first served.

    A cached customer's scores are computed without yielding, so without the gate every request
    parsed in one iteration runs its work in the next, one after another: under overload that
    iteration grows to hundreds of milliseconds, and never more than one request is in flight,
    so ``max_in_flight`` never refuses anything. A refusal decided in such an iteration comes
    after the work of every request read before it, and with uvloop (uvicorn's loop when it is
    installed) it is not even written before the iteration ends: uvloop writes an iteration's
    responses at its end. With the gate an iteration holds at most ``per_turn`` requests' work
    besides the cheap admission checks of the requests just read, so a refusal is on the wire
    within about one request's work of being read, and the admitted requests wait in the gate's
    queue, counted in flight and so bounded by ``max_in_flight``, instead of in front of the
    loop. A request that finds nobody waiting and the turn not used up goes through without
    yielding.
    """

    def __init__(self, per_turn: int = 1) -> None:
        if per_turn < 1:
            raise ValueError(f"per_turn must be a positive number of requests; got {per_turn}")
        self.per_turn = per_turn
        self._started = 0  # requests let through since the last turn began
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._turn_scheduled = False

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return len(self._waiting)

    async def wait_turn(self) -> None:
        """Return when the caller may start its work: at once if the turn has room, else in FIFO order."""
        if not self._waiting and self._started < self.per_turn:
            self._started += 1
            self._next_turn_soon()
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._next_turn_soon()
        try:
            await future
        except asyncio.CancelledError:
            if not future.done():
                self._waiting.remove(future)
            raise

    def _next_turn_soon(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """Once per loop iteration while anyone waits: let the next ``per_turn`` through (each
        resumes in the next iteration)."""
        self._turn_scheduled = False
        self._started = 0
        while self._waiting and self._started < self.per_turn:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                self._started += 1
        if self._waiting or self._started:
            self._next_turn_soon()


#: the ``scope["state"]`` key by which the HTTP protocol of ``crmscore serve`` tells the
#: middleware that it has already admitted the request (and counted it in flight)
ADMITTED_KEY = "crmscore_admitted"


class Admission:
    """Whether a request may start now, and how many are admitted: the one decision that
    :class:`LoadSheddingMiddleware` takes and, under ``crmscore serve``, the HTTP protocol
    (:mod:`crmscore.serving.api.http_protocol`) takes first, before a request costs a task.

    Parameters
    ----------
    max_in_flight : int
        Requests admitted at once (working, or waiting their turn at the :class:`TurnGate`).
    metrics : ServiceMetrics
    queue_delay : QueueDelayMonitor, optional
        Also refuse while the event loop is more than ``max_queue_delay_s`` behind (0 = no limit).
    per_turn : int
        Admitted requests that start their work per loop iteration (:class:`TurnGate`).
    """

    def __init__(self, max_in_flight: int, metrics: ServiceMetrics, queue_delay: QueueDelayMonitor | None = None,
                 max_queue_delay_s: float = 0.0, per_turn: int = 1) -> None:
        self.max_in_flight = max_in_flight
        self.metrics = metrics
        self.queue_delay = queue_delay
        self.max_queue_delay_s = max_queue_delay_s
        self.gate = TurnGate(per_turn)
        self.in_flight = 0

    def refusal(self) -> str | None:
        """Why a request arriving now must be refused, or None to admit it."""
        if self.in_flight >= self.max_in_flight:
            return f"{self.in_flight} requests in flight (limit {self.max_in_flight})"
        if self.queue_delay is not None and self.max_queue_delay_s > 0:
            waited = self.queue_delay.delay()
            if waited > self.max_queue_delay_s:
                return f"requests wait {waited * 1000:.0f} ms to start (limit {self.max_queue_delay_s * 1000:.0f} ms)"
        return None

    def admit(self) -> None:
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)


def refusal_body(why: str, request_id: str | None) -> dict[str, Any]:
    return {"detail": f"server overloaded: {why}; retry shortly", "request_id": request_id}


class LoadSheddingMiddleware:
    """503 + Retry-After when :meth:`Admission.refusal` says so: ``max_in_flight`` requests
    already admitted (working or waiting their turn), or the event loop too far behind.
    Admitted requests start their work when the :class:`TurnGate` lets them."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if not scope.get("state", {}).get(ADMITTED_KEY):  # else admitted by the HTTP protocol already
            why = admission.refusal()
            if why is not None:
                admission.metrics.shed.inc()
                await send_json(send, 503, refusal_body(why, request_id_of(scope)), [(b"retry-after", b"1")])
                return
            admission.admit()
        try:
            await admission.gate.wait_turn()
            await self.app(scope, receive, send)
        finally:
            admission.release()


class BodySizeLimitMiddleware:
    """413 for a body over ``max_body_bytes``, declared or streamed (chunked), before routing."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await send_json(send, 413, {
            "detail": f"request body too large: the limit is {self.max_body_bytes} bytes",
            "request_id": request_id_of(scope),
        }, [(b"connection", b"close")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_json(send, 400, {"detail": "invalid Content-Length header",
                                                "request_id": request_id_of(scope)})
                    return
                if declared > self.max_body_bytes:
                    await self._too_large(scope, send)
                    return
                break
        # Read the whole body now (at most the limit), then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away: pass it on
                replay: list[Message] = [message]
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                await self._too_large(scope, send)
                return
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replay_receive() -> Message:
            if replay:
                return replay.pop()
            return await receive()

        await self.app(scope, replay_receive, send)
