"""Pure ASGI middleware, outermost first: request context, load shedding, body size limit.

* :class:`RequestContextMiddleware` gives every request an id (``X-Request-ID``, echoed in the
  response), records Prometheus counts and latency by *route template* (never the raw path,
  which holds customer ids), and turns an unhandled exception into a JSON 500 carrying the
  request id, logged once as our bug.
* :class:`LoadSheddingMiddleware` answers 503 with ``Retry-After`` at once when
  :class:`Admission` says so: ``max_in_flight`` requests admitted and not yet answered, or the
  request has waited longer than ``max_queue_delay`` for the event loop
  (:class:`QueueDelayMonitor`). A cached customer's scores are computed without yielding, so
  counted here, requests would never be more than one in flight; ``crmscore serve`` therefore
  takes the same decision earlier, in uvicorn's HTTP protocol as each request is parsed
  (:mod:`crmscore.serving.api.http_protocol`), and the middleware only passes on what that
  admitted. Health, metrics and admin endpoints are never shed (probes must answer, an operator
  must be able to reload an overloaded server).
* :class:`BodySizeLimitMiddleware` reads the request body before routing, up to the limit:
  a ``Content-Length`` over the limit, or a chunked body that grows past it, gets 413 without
  reading further. The body read is then replayed to the app.

Pure ASGI (no ``BaseHTTPMiddleware``): a few microseconds per request, and the body check
holds for every route, including ones that never read the body.
"""

from __future__ import annotations

import asyncio
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
    await send_json_bytes(send, status, json.dumps(body).encode(), headers)


async def send_json_bytes(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer through ASGI with ``payload``, JSON already encoded."""
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


def refusal_body(why: str, request_id: str | None) -> dict[str, Any]:
    return {"detail": f"server overloaded: {why}; retry shortly", "request_id": request_id}


#: the share of a window's requests refused above which shedding goes on for the next window:
#: an overloaded server refuses most (70-98% at 3x its capacity, docs/reliability.md); one below
#: capacity at the shedding limit, a few bursts (0.2-0.4% at 80% of it)
SHEDDING_SHARE = 0.05
#: the most queue-delay refusals kept (one per millisecond figure); then they are built afresh
_MAX_KEPT_REFUSALS = 1024
_ID_SLOT = "\x00"  # where the request id goes in a refusal's body; json.dumps writes it "\u0000"
_STATUS_503 = b"HTTP/1.1 503 Service Unavailable\r\n"


class Refusal:
    """One reason's 503, its bytes built once: what every overloaded request is answered.

    The body is :func:`refusal_body` as JSON, kept in two pieces around its request id; the
    headers are ``content-type``, ``content-length`` and ``Retry-After: 1``. Both ways of
    refusing take it from :meth:`Admission.refuse`: :class:`LoadSheddingMiddleware` sends it
    through ASGI (:meth:`send`), and the HTTP protocol of ``crmscore serve``
    (:mod:`crmscore.serving.api.http_protocol`) writes :meth:`http_response` straight to the
    transport, where nothing of it is built per request but the request id and the length.
    """

    def __init__(self, why: str) -> None:
        self.why = why
        slot = json.dumps(_ID_SLOT).encode()
        self._before_id, self._after_id = json.dumps(refusal_body(why, _ID_SLOT)).encode().split(slot)
        self._length = len(self._before_id) + len(self._after_id)
        self._defaults: list[tuple[bytes, bytes]] | None = None
        self._head = b""

    def body(self, request_id: str | None) -> bytes:
        """The JSON of :func:`refusal_body`."""
        return b"".join((self._before_id, json.dumps(request_id).encode(), self._after_id))

    async def send(self, send: Send, request_id: str | None) -> None:
        """Answer through ASGI."""
        await send_json_bytes(send, 503, self.body(request_id), [(b"retry-after", b"1")])

    def http_response(self, request_id: bytes, default_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
        """The whole HTTP/1.1 response, with ``X-Request-ID`` (as :class:`RequestContextMiddleware`
        adds it) and ``default_headers`` (uvicorn's: its ``date``, renewed every second).

        ``request_id`` must need no escaping in JSON: one that matched ``_VALID_REQUEST_ID``, or
        a new hex one.
        """
        if default_headers is not self._defaults:
            self._head = b"".join([_STATUS_503, *(b"%b: %b\r\n" % header for header in default_headers),
                                   b"content-type: application/json\r\ncontent-length: "])
            self._defaults = default_headers
        return b'%b%d\r\nretry-after: 1\r\nx-request-id: %b\r\n%b\r\n%b"%b"%b' % (
            self._head, self._length + 2 + len(request_id), request_id,
            b"" if keep_alive else b"connection: close\r\n", self._before_id, request_id, self._after_id)


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
        Requests admitted and not yet answered.
    metrics : ServiceMetrics
    queue_delay : QueueDelayMonitor, optional
        Also refuse while the event loop is more than ``max_queue_delay_s`` behind (0 = no limit).
    shedding_in_flight : int, optional
        The limit while shedding (default ``max_in_flight``: no change): for a window of
        ``shedding_window_s`` after a window in which at least :data:`SHEDDING_SHARE` of the
        requests were refused (a burst that reaches the full limit now and then is no
        overload). Under ``crmscore serve`` the requests admitted in one read all run in the
        loop's next iteration, so the limit is the work between two reads: the lower one keeps
        the wait of refusals and of the requests still served short while overloaded, and the
        full one does not refuse the bursts of a server below capacity (measured:
        docs/reliability.md, section 2).
    """

    def __init__(self, max_in_flight: int, metrics: ServiceMetrics, queue_delay: QueueDelayMonitor | None = None,
                 max_queue_delay_s: float = 0.0, shedding_in_flight: int | None = None,
                 shedding_window_s: float = 1.0) -> None:
        self.max_in_flight = max_in_flight
        self.metrics = metrics
        self.queue_delay = queue_delay
        self.max_queue_delay_s = max_queue_delay_s
        self.shedding_in_flight = min(max_in_flight, shedding_in_flight or max_in_flight)
        self.shedding_window_s = shedding_window_s
        self.in_flight = 0
        self.shedding = False
        self._window_end = 0.0  # time.monotonic() at which the window's share is judged
        self._admitted = self._refused = 0  # in the window
        self._full: dict[tuple[int, int], Refusal] = {}  # by the count in flight and the limit
        self._late: dict[int, Refusal] = {}  # by the milliseconds waited

    def refuse(self) -> Refusal | None:
        """The refusal of a request arriving now, counted as shed; or None: admit it (:meth:`admit`).
        Also counts the decision in the window that decides whether the shedding limit applies.

        Each reason's :class:`Refusal` is built once and kept: under overload this runs for
        thousands of requests a second, almost all for the same reason.
        """
        now = time.monotonic()
        if now >= self._window_end:  # judge the window that ends: still overloaded?
            total = self._admitted + self._refused
            self.shedding = total > 0 and self._refused >= SHEDDING_SHARE * total
            self._admitted = self._refused = 0
            self._window_end = now + self.shedding_window_s
        refusal = None
        limit = self.shedding_in_flight if self.shedding else self.max_in_flight
        if self.in_flight >= limit:
            refusal = self._full.get((self.in_flight, limit))
            if refusal is None:
                refusal = self._full[self.in_flight, limit] = Refusal(f"{self.in_flight} requests in flight (limit {limit})")
        elif self.queue_delay is not None and self.max_queue_delay_s > 0:
            waited = self.queue_delay.delay()
            if waited > self.max_queue_delay_s:
                waited_ms = round(waited * 1000)
                refusal = self._late.get(waited_ms)
                if refusal is None:
                    if len(self._late) >= _MAX_KEPT_REFUSALS:
                        self._late.clear()
                    refusal = self._late[waited_ms] = Refusal(
                        f"requests wait {waited_ms} ms to start (limit {self.max_queue_delay_s * 1000:.0f} ms)")
        if refusal is None:
            self._admitted += 1
            return None
        self._refused += 1
        self.metrics.shed.inc()
        return refusal

    def admit(self) -> None:
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)


class LoadSheddingMiddleware:
    """503 + Retry-After (a :class:`Refusal`) when :meth:`Admission.refuse` says so:
    ``max_in_flight`` requests already admitted and not answered, or the event loop too far behind."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if not scope.get("state", {}).get(ADMITTED_KEY):  # else admitted by the HTTP protocol already
            refusal = admission.refuse()
            if refusal is not None:
                await refusal.send(send, request_id_of(scope))
                return
            admission.admit()
        try:
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
