"""Dependencies, declared once as ``Annotated`` aliases: the service state, API keys, the bundle.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool,
which costs more than the work these do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from crmscore.serving.api.metrics import ServiceMetrics
from crmscore.bundle import ModelKind
from crmscore.serving.registry import BundleHolder, LoadError, ServingBundle
from crmscore.serving.security import ApiKey, KeyStore, Scope
from crmscore.serving.settings import ServingSettings

__all__ = ["AdminKey", "CurrentBundle", "MetricsAccess", "ReaderKey", "Service", "ServiceState"]

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


async def get_service(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[ServiceState, Depends(get_service)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "APIKey"})


async def authenticate(service: Service, key: Annotated[str | None, Security(api_key_header)]) -> ApiKey:
    """The stored key matching ``X-API-Key``; 401 without a key or with an unknown one."""
    if not key:
        raise _unauthorized(f"missing API key: send it in the {API_KEY_HEADER} header")
    found = service.keys.verify(key)
    if found is None:
        raise _unauthorized("unknown API key")
    return found


async def require_reader(key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
    return key  # every valid key reads


async def require_admin(key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
    if not key.scope.allows(Scope.ADMIN):
        raise HTTPException(status_code=403,
                            detail=f"this key has scope {key.scope.value}; /v1/admin/* needs scope admin")
    return key


ReaderKey = Annotated[ApiKey, Depends(require_reader)]
AdminKey = Annotated[ApiKey, Depends(require_admin)]


async def metrics_access(service: Service, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """A reader key for ``/metrics``, unless ``metrics_require_key`` is off."""
    if service.settings.metrics_require_key:
        await authenticate(service, key)


MetricsAccess = Annotated[None, Depends(metrics_access)]


async def get_bundle(service: Service) -> ServingBundle:
    """The bundle being served; 503 with the reason while there is none."""
    bundle = service.holder.current
    if bundle is None:
        raise HTTPException(status_code=503, detail=f"not ready: {service.holder.not_ready_reason()}",
                            headers={"Retry-After": "5"})
    return bundle


CurrentBundle = Annotated[ServingBundle, Depends(get_bundle)]
