"""uvicorn's httptools protocol, refusing overload before a request reaches the app (``crmscore serve``).

A refusal through the ASGI stack waits its turn on the event loop behind the work of every
request read before it: a cached customer's scores are computed without yielding, so the
requests read in one iteration all run in the next, one after another, and never more than one
is in flight (1,024 closed-loop clients: refusal p99 ~0.5 s, benchmarks/reload.py).
:func:`shedding_protocol` makes a protocol that takes
:class:`~crmscore.serving.api.middleware.Admission`'s decision as soon as a request's headers
are parsed: an admitted request is counted in flight there and then, so the next request parsed
in the same read sees it, and goes on to the app, whose
:class:`~crmscore.serving.api.middleware.LoadSheddingMiddleware` knows it is admitted already
(``scope["state"][ADMITTED_KEY]``); past ``max_in_flight`` the 503 is written straight to the
transport, in the same read, and no task is made. So the work of one iteration is bounded by
``max_in_flight`` requests and a refusal waits for at most that.

Under overload nearly every request is refused, so a refusal's own cost decides how long the
others wait (docs/reliability.md, section 2): its response is the
:class:`~crmscore.serving.api.middleware.Refusal` that :meth:`Admission.refuse
<crmscore.serving.api.middleware.Admission.refuse>` returns, the same the middleware sends,
whose bytes are built once per reason (and per second, for uvicorn's ``date``); only the
request id and the length are put in per request, the headers are scanned once, and the
refusal's metric children are looked up once per method.

Only requests the protocol can answer on its own are refused here: no body (no
``Content-Length`` above 0, no ``Transfer-Encoding``), no upgrade, a path in origin form outside
the never-shed prefixes, and no earlier request of the same connection still being answered
(pipelining keeps its order). Everything else takes uvicorn's own path, and the middleware
still sheds it.
"""

from __future__ import annotations

import os
from time import perf_counter

from prometheus_client import Counter, Histogram
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from crmscore.serving.api.middleware import (
    _VALID_REQUEST_ID,
    ADMITTED_KEY,
    REQUEST_ID_HEADER,
    UNLIMITED_PREFIXES,
    Admission,
)

__all__ = ["shedding_protocol"]

_UNLIMITED = tuple(prefix.encode() for prefix in UNLIMITED_PREFIXES)
#: the route label of a request refused before routing (as RequestContextMiddleware labels it)
_UNROUTED = "<unmatched>"


def shedding_protocol(admission: Admission) -> type[HttpToolsProtocol]:
    """A uvicorn HTTP protocol class (``uvicorn.run(..., http=...)``) taking ``admission``'s decisions."""
    metrics = admission.metrics
    #: the request counter and latency histogram of a refusal, by method: looked up once
    refused_metrics: dict[bytes, tuple[Counter, Histogram]] = {}

    class SheddingHttpToolsProtocol(HttpToolsProtocol):
        _refused = False

        def on_headers_complete(self) -> None:
            begin = perf_counter()
            cycle = self.cycle
            if (not self.url.startswith(b"/") or self.url.startswith(_UNLIMITED)
                    or (cycle is not None and not cycle.response_complete)  # pipelined: keep the order
                    or self.parser.should_upgrade()):
                super().on_headers_complete()
                return
            request_id = None
            for name, value in self.headers:
                if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
                    super().on_headers_complete()  # a body: uvicorn's path (the middleware still sheds)
                    return
                if name == REQUEST_ID_HEADER and request_id is None:
                    request_id = value
            refusal = admission.refuse()
            if refusal is None:
                # uvicorn's own refusal past its connection limit never reaches the app: not admitted
                past_limit = self.limit_concurrency is not None and (
                    len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency)
                super().on_headers_complete()
                if not past_limit:
                    admission.admit()
                    self.scope["state"][ADMITTED_KEY] = True
                return
            # the client's X-Request-ID if valid, else a new one (as RequestContextMiddleware does)
            if request_id is None or not _VALID_REQUEST_ID.match(request_id):
                request_id = os.urandom(8).hex().encode()
            parser = self.parser
            keep_alive = parser.should_keep_alive() and parser.get_http_version() != "1.0"
            self.transport.write(refusal.http_response(request_id, self.server_state.default_headers, keep_alive))
            self._refused = True
            method = parser.get_method()
            counted = refused_metrics.get(method)
            if counted is None:
                counted = refused_metrics[method] = metrics.children(method.decode("ascii", "replace"), _UNROUTED, 503)
            requests, latency = counted
            requests.inc()
            latency.observe(perf_counter() - begin)
            if not keep_alive:
                self.transport.close()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()
                return
            self._refused = False
            if not self.transport.is_closing():
                self.on_response_complete()  # arms the keep-alive timeout, as after any response

    return SheddingHttpToolsProtocol
