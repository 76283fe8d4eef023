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
(``scope["state"][ADMITTED_KEY]``); past ``max_in_flight`` the 503 (the middleware's status,
``Retry-After`` and JSON body) is written straight to the transport, in the same read, and no
task is made. So the work of one iteration is bounded by ``max_in_flight`` requests and a
refusal waits for at most that, and the refusal costs a fraction of the ASGI path.

Only requests the protocol can answer on its own are refused here: no body (no
``Content-Length`` above 0, no ``Transfer-Encoding``), no upgrade, a path in origin form outside
the never-shed prefixes, and no earlier request of the same connection still being answered
(pipelining keeps its order). Everything else takes uvicorn's own path, and the middleware
still sheds it.
"""

from __future__ import annotations

import json
import os
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from crmscore.serving.api.middleware import (
    _VALID_REQUEST_ID,
    ADMITTED_KEY,
    REQUEST_ID_HEADER,
    UNLIMITED_PREFIXES,
    Admission,
    refusal_body,
)

__all__ = ["shedding_protocol"]

_UNLIMITED = tuple(prefix.encode() for prefix in UNLIMITED_PREFIXES)
_STATUS_LINE = b"HTTP/1.1 503 Service Unavailable\r\n"


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` if valid, else a new one (as RequestContextMiddleware does)."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _VALID_REQUEST_ID.match(value):
                return value.decode()
            break
    return os.urandom(8).hex()


def shedding_protocol(admission: Admission) -> type[HttpToolsProtocol]:
    """A uvicorn HTTP protocol class (``uvicorn.run(..., http=...)``) taking ``admission``'s decisions."""

    class SheddingHttpToolsProtocol(HttpToolsProtocol):
        _refused = False

        def on_headers_complete(self) -> None:
            begin = time.perf_counter()
            if not self._may_refuse():
                super().on_headers_complete()
                return
            why = admission.refusal()
            if why is not None:
                self._refuse(why, begin)
                return
            # uvicorn's own refusal past its connection limit never reaches the app: not admitted
            past_limit = self.limit_concurrency is not None and (
                len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency)
            super().on_headers_complete()
            if not past_limit:
                admission.admit()
                self.scope["state"][ADMITTED_KEY] = True

        def _unlimited(self) -> bool:
            return self.url.startswith(_UNLIMITED)

        def _may_refuse(self) -> bool:
            if not self.url.startswith(b"/") or self._unlimited():
                return False
            if self.cycle is not None and not self.cycle.response_complete:
                return False  # an earlier request of this connection is still being answered
            if self.parser.should_upgrade():
                return False
            for name, value in self.headers:
                if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
                    return False
            return True

        def _refuse(self, why: str, begin: float) -> None:
            keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
            request_id = _request_id(self.headers)
            body = json.dumps(refusal_body(why, request_id)).encode()
            head = [_STATUS_LINE]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                     b"\r\nretry-after: 1\r\nx-request-id: ", request_id.encode(), b"\r\n"]
            if not keep_alive:
                head.append(b"connection: close\r\n")
            head += [b"\r\n", body]
            self.transport.write(b"".join(head))
            self._refused = True
            admission.metrics.shed.inc()
            admission.metrics.observe(self.parser.get_method().decode("ascii", "replace"), "<unmatched>", 503,
                                      time.perf_counter() - begin)
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

