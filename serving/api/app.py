"""The FastAPI app: :func:`create_app` builds it, :func:`run_server` serves it with uvicorn.

Nothing happens at import. ``create_app(settings)`` wires routes, error handlers and
middleware; the bundle (models, snapshot, batch scoring) is loaded by the lifespan, in the
background, so ``/health/live`` answers at once and ``/health/ready`` says ``not_ready`` with
the reason until a complete bundle is in place (and keeps retrying a failed first load every
``load_retry_seconds``).

Middleware, outermost first (see :mod:`crmscore.serving.api.middleware`): request context
(request id, metrics, the JSON 500), load shedding (503), body size limit (413), then
FastAPI's routing and exception handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crmscore.serving.api.deps import ServiceState
from crmscore.serving.api.metrics import ServiceMetrics
from crmscore.serving.api.middleware import (
    Admission,
    BodySizeLimitMiddleware,
    LoadSheddingMiddleware,
    QueueDelayMonitor,
    RequestContextMiddleware,
    request_id_of,
)
from crmscore.serving.api.routes import admin, customers, health, metrics, models, portfolio, scores
from crmscore.serving.loader_process import limit_malloc_arenas
from crmscore.serving.registry import BundleHolder, Loader, LoadError, ReloadInProgress
from crmscore.serving.security import KeyStore
from crmscore.serving.settings import ServingSettings

__all__ = ["create_app", "create_app_from_env", "run_server"]

logger = logging.getLogger("crmscore.serving.api")

DESCRIPTION = """\
Scores for CRM front ends: churn, propensity per product category, credit risk, expected
margin and CLV, Buttle's portfolio quadrant, recommended actions and reason codes.

Every `/v1` route and `/metrics` need an API key in the `X-API-Key` header
(`crmscore keys create --scope reader|admin`); `/v1/admin/*` needs an admin key.
`/health/live` and `/health/ready` are open. Errors are JSON `{"detail": ..., "request_id": ...}`.
"""


async def _keep_loading(state: ServiceState) -> None:
    """The first load, retried every ``load_retry_seconds`` while no bundle is loaded."""
    retry = state.settings.load_retry_seconds
    while state.holder.current is None:
        with contextlib.suppress(LoadError, ReloadInProgress):
            await state.reload()
            return
        if retry <= 0:
            return
        await asyncio.sleep(retry)


def _error_body(request: Request, detail: Any) -> dict[str, Any]:
    return {"detail": detail, "request_id": request_id_of(request.scope)}


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each field path and what is wrong, never echoing the values sent."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    return JSONResponse(status_code=422, content=_error_body(request, errors))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(status_code=exc.status_code, content=_error_body(request, exc.detail),
                        headers=getattr(exc, "headers", None))


def create_app(settings: ServingSettings | None = None, *, loader: Loader | None = None,
               watch_queue_delay: bool = False) -> FastAPI:
    """Build the scoring API.

    Parameters
    ----------
    settings : ServingSettings, optional
        Default: read from the environment (``CRMSCORE_*``).
    loader : callable, optional
        ``loader(settings) -> ServingBundle``; default
        :func:`~crmscore.serving.registry.load_serving_bundle` (tests pass their own).
    watch_queue_delay : bool
        Shed requests that waited longer than ``settings.max_queue_delay_ms`` for the event
        loop (``crmscore serve`` turns it on). Off for an app driven in-process, where the
        caller's own code runs on the same loop and would read as queueing.
    """
    from crmscore import __version__

    settings = settings if settings is not None else ServingSettings()
    service_metrics = ServiceMetrics()
    state = ServiceState(
        settings=settings,
        holder=BundleHolder(settings, loader),
        keys=KeyStore(settings.keys_file),
        metrics=service_metrics,
    )

    queue_delay = QueueDelayMonitor() if watch_queue_delay and settings.max_queue_delay_ms > 0 else None
    state.admission = Admission(settings.max_in_flight, service_metrics, queue_delay=queue_delay,
                                max_queue_delay_s=settings.max_queue_delay_ms / 1000,
                                shedding_in_flight=settings.max_in_flight_shedding)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.compute = anyio.CapacityLimiter(settings.compute_threads)
        task = asyncio.create_task(_keep_loading(state), name="crmscore-initial-load")
        await asyncio.sleep(0)  # let the load start, so readiness says "loading" from the first request
        if queue_delay is not None:
            queue_delay.start()
        try:
            yield
        finally:
            if queue_delay is not None:
                await queue_delay.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await anyio.to_thread.run_sync(state.holder.close)  # the loader process, if started

    app = FastAPI(
        title="crmscore scoring API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry (on when opentelemetry is installed, as MLflow does) is
        # off: metrics are Prometheus, and its logs of failed validations could carry customer
        # data to whatever exporter a host configures.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        openapi_tags=[
            {"name": "scores", "description": "Customer scores, portfolio placement, actions and reasons."},
            {"name": "portfolio", "description": "The portfolio view of the last batch scoring."},
            {"name": "models", "description": "What is loaded."},
            {"name": "admin", "description": "Reload the models and the snapshot (admin key)."},
            {"name": "health", "description": "Liveness and readiness (open)."},
            {"name": "metrics", "description": "Prometheus metrics."},
        ],
    )
    app.state.service = state  # the one typed object routes reach through deps.get_service
    for router in (customers.router, scores.router, portfolio.router, models.router, admin.router,
                   health.router, metrics.router):
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(LoadSheddingMiddleware, admission=state.admission)
    app.add_middleware(RequestContextMiddleware, metrics=service_metrics)
    return app


#: malloc arenas of a server process (glibc; ``MALLOC_ARENA_MAX`` in the environment wins):
#: bounds the memory that reloads leave mapped in per-thread arenas (docs/reliability.md)
MALLOC_ARENAS = 2


def create_app_from_env() -> FastAPI:
    """App factory for uvicorn workers: settings from the ``CRMSCORE_*`` environment."""
    limit_malloc_arenas(MALLOC_ARENAS)
    return create_app(ServingSettings(), watch_queue_delay=True)


def _settings_env(settings: ServingSettings) -> dict[str, str]:
    """The settings as ``CRMSCORE_*`` variables, so worker processes rebuild the same settings."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"CRMSCORE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def run_server(settings: ServingSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the API with uvicorn until interrupted (``crmscore serve``).

    Parameters
    ----------
    settings : ServingSettings
    host, port : where to listen (default loopback only: put a TLS proxy in front for a network).
    workers : int
        uvicorn worker processes, each loading its own bundle. With more than one, an admin
        reload reaches only the worker that answers it: prefer one worker per replica.

    uvicorn's access log is off (paths hold customer ids); requests are counted in ``/metrics``
    by route template. With one worker, load shedding refuses in uvicorn's HTTP protocol, before
    a request costs a task (:mod:`crmscore.serving.api.http_protocol`); with more, in the
    middleware only.
    """
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be a positive number of processes; got {workers}")
    limit_malloc_arenas(MALLOC_ARENAS)  # before uvicorn starts threads
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": False,
        "limit_concurrency": settings.max_connections,
        "server_header": False,
        "timeout_graceful_shutdown": 10,
    }
    if workers == 1:
        from crmscore.serving.api.http_protocol import shedding_protocol

        app = create_app(settings, watch_queue_delay=True)
        # overload is refused as soon as a request's headers are parsed (docs/reliability.md)
        uvicorn.run(app, http=shedding_protocol(app.state.service.admission), **options)
        return
    os.environ.update(_settings_env(settings))
    uvicorn.run("crmscore.serving.api.app:create_app_from_env", factory=True, workers=workers, **options)
