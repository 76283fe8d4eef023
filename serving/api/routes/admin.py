"""``POST /v1/admin/reload``: load the current champions and snapshot, swap atomically."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from crmscore.serving.api.deps import AdminKey, Service
from crmscore.serving.api.middleware import request_id_of
from crmscore.serving.api.schemas import ErrorResponse, ReloadResponse
from crmscore.serving.registry import LoadError, ReloadInProgress

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post(
    "/reload",
    response_model=ReloadResponse,
    summary="Reload the models at the alias, the snapshot and the batch scoring",
    responses={
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse, "description": "The key is not an admin key."},
        409: {"model": ErrorResponse, "description": "A reload is already running."},
        503: {"model": ErrorResponse, "description": "The load failed; the previous bundle keeps serving."},
    },
)
async def reload_bundle(_: AdminKey, service: Service, request: Request) -> Any:
    """Load a complete new bundle (models, snapshot, batch scoring), warm it up, then swap.

    Requests in flight finish on the bundle they started with. When the load fails, the
    previous bundle keeps serving and the response (503) says why.
    """
    previous = service.holder.current
    request_id = request_id_of(request.scope)
    try:
        bundle = await service.reload()
    except ReloadInProgress as exc:
        return JSONResponse(status_code=409, content={"detail": str(exc), "request_id": request_id})
    except LoadError as exc:
        keeps = (f"; bundle {previous.bundle_id} (model versions "
                 f"{', '.join(f'{k}={v}' for k, v in previous.versions.items())}) keeps serving"
                 if previous is not None else "; no bundle is loaded")
        return JSONResponse(status_code=503, content={"detail": f"reload failed: {exc}{keeps}",
                                                      "request_id": request_id})
    return {
        "status": "reloaded",
        "bundle_id": bundle.bundle_id,
        "model_versions": bundle.versions,
        "previous_model_versions": previous.versions if previous is not None else None,
        "snapshot_as_of": bundle.snapshot_as_of,
        "customers": bundle.n_customers,
        "load_seconds": bundle.load_seconds,
    }
