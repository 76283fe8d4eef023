"""Health, open (no key): ``/health/live`` and ``/health/ready``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from crmscore.serving.api.deps import Service
from crmscore.serving.api.schemas import LiveResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=LiveResponse, summary="The process answers")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/health/ready",
    response_model=ReadyResponse,
    summary="Ready when a complete bundle (models, snapshot, scores) is loaded",
    responses={503: {"model": ReadyResponse, "description": "Not ready; the reason is given."}},
)
async def ready(service: Service) -> Any:
    holder = service.holder
    bundle = holder.current
    attempt = holder.last_attempt
    last_error = None if attempt is None or attempt.ok else attempt.reason
    if bundle is None:
        return JSONResponse(status_code=503, content={"status": "not_ready", "reason": holder.not_ready_reason()},
                            headers={"Retry-After": "5"})
    broken = holder.self_check(bundle)
    if broken is not None:
        return JSONResponse(status_code=503, content={"status": "not_ready", "reason": broken,
                                                      "bundle_id": bundle.bundle_id, "last_reload_error": last_error},
                            headers={"Retry-After": "5"})
    return {"status": "ready", "bundle_id": bundle.bundle_id, "model_versions": bundle.versions,
            "snapshot_as_of": bundle.snapshot_as_of, "last_reload_error": last_error}
