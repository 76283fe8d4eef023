"""Dependencies, declared once as ``Annotated`` aliases: the service state, API keys, the bundle.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool,
which costs more than the work these do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from crmscore.bundle import ModelKind
from crmscore.serving.api.metrics import ServiceMetrics
from crmscore.serving.api.middleware import Admission
from crmscore.serving.registry import BundleHolder, LoadError, ServingBundle
from crmscore.serving.security import ApiKey, KeyStore, Scope
from crmscore.serving.settings import ServingSettings

__all__ = ["API_KEY_REQUIRED", "AdminKey", "MetricsAccess", "ReaderBundle", "Service", "ServiceState", "service_of"]

API_KEY_HEADER = "X-API-Key"

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="An API key made by `crmscore keys create --scope reader|admin`.",
)


@dataclass(eq=False)
class ServiceState:
    """What the routes share: settings, the bundle holder, keys, metrics, the compute limiter."""

    settings: ServingSettings
    holder: BundleHolder
    keys: KeyStore
    metrics: ServiceMetrics
    #: bounds the threads doing expensive per-request work (set in the lifespan)
    compute: anyio.CapacityLimiter | None = field(default=None)
    #: admits or refuses requests (load shedding; set by create_app)
    admission: Admission | None = field(default=None)

    async def run_compute(self, func, *args):  # type: ignore[no-untyped-def]
        """Run blocking work (TreeSHAP, inline scoring) in a worker thread, a few at a time."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self.compute)

    async def reload(self) -> ServingBundle:
        """Load and swap a bundle (:meth:`BundleHolder.reload`), counting the outcome."""
        try:
            bundle = await self.holder.reload()
        except LoadError:
            self.metrics.loads.labels("failed").inc()
            raise
        self.metrics.bundle_swapped(
            {k.value: (k.registered_name, bundle.models.versions.get(k)) for k in ModelKind},
            bundle.n_customers, bundle.snapshot_as_of, bundle.load_seconds)
        return bundle


def service_of(request: Request) -> ServiceState:
    """The app's :class:`ServiceState` (set once by ``create_app``)."""
    return request.app.state.service  # type: ignore[no-any-return]


async def get_service(request: Request) -> ServiceState:
    return service_of(request)


Service = Annotated[ServiceState, Depends(get_service)]

# Dependencies read the service from the request instead of depending on get_service: every
# nested dependency costs FastAPI a resolution step (tens of µs per request).


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "APIKey"})


def authenticate(service: ServiceState, key: str | None) -> ApiKey:
    """The stored key matching ``X-API-Key``; 401 without a key or with an unknown one."""
    if not key:
        raise _unauthorized(f"missing API key: send it in the {API_KEY_HEADER} header")
    found = service.keys.verify(key)
    if found is None:
        raise _unauthorized("unknown API key")
    return found


async def require_admin(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> ApiKey:
    found = authenticate(service_of(request), key)
    if not found.scope.allows(Scope.ADMIN):
        raise HTTPException(status_code=403,
                            detail=f"this key has scope {found.scope.value}; /v1/admin/* needs scope admin")
    return found


AdminKey = Annotated[ApiKey, Depends(require_admin)]


async def metrics_access(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """A reader key for ``/metrics``, unless ``metrics_require_key`` is off."""
    service = service_of(request)
    if service.settings.metrics_require_key:
        authenticate(service, key)


MetricsAccess = Annotated[None, Depends(metrics_access)]


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


async def reader_bundle(request: Request) -> ServingBundle:
    """Any valid key (401 otherwise), then the bundle being served (503 while there is none).

    The hot path: one dependency reading ``X-API-Key`` from the raw headers. Routes using it
    declare the key in OpenAPI with ``openapi_extra=API_KEY_REQUIRED``.
    """
    service = service_of(request)
    authenticate(service, _header(request.scope, b"x-api-key"))
    bundle = service.holder.current
    if bundle is None:
        raise HTTPException(status_code=503, detail=f"not ready: {service.holder.not_ready_reason()}",
                            headers={"Retry-After": "5"})
    return bundle


ReaderBundle = Annotated[ServingBundle, Depends(reader_bundle)]
#: ``openapi_extra`` of the routes that use :data:`ReaderBundle`: they require the key (the
#: scheme itself is declared by the routes depending on ``api_key_header``: admin, metrics;
#: tests/serving/test_api.py walks the schema to hold every non-health route to it)
API_KEY_REQUIRED: dict[str, Any] = {"security": [{api_key_header.scheme_name: []}]}
