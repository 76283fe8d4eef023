"""``GET /v1/portfolio/summary``: the portfolio view of the last batch scoring."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from crmscore.serving.api.deps import API_KEY_REQUIRED, ReaderBundle
from crmscore.serving.api.schemas import ErrorResponse, PortfolioSummary

router = APIRouter(prefix="/v1", tags=["portfolio"])


@router.get(
    "/portfolio/summary",
    response_model=PortfolioSummary,
    summary="Quadrant shares, 80/20 figures, value bands and actions of the last batch scoring",
    openapi_extra=API_KEY_REQUIRED,
    responses={
        401: {"model": ErrorResponse},
        404: {"model": ErrorResponse, "description": "No batch scoring is loaded (scores_path unset or missing)."},
        503: {"model": ErrorResponse},
    },
)
async def get_portfolio_summary(bundle: ReaderBundle) -> dict[str, Any]:
    """``portfolio_summary`` of the batch scoring file, with its provenance under ``batch``."""
    if bundle.summary is None:
        info = bundle.scores_file
        why = {
            "not_configured": "no batch scoring configured: set CRMSCORE_SCORES_PATH to the output of "
                              "batch scoring and reload",
            "missing": "the batch scoring file does not exist yet: run batch scoring, then POST /v1/admin/reload",
        }.get(info.status, "the batch scoring file has no portfolio summary: " + "; ".join(info.notes))
        raise HTTPException(status_code=404, detail=why)
    info = bundle.scores_file
    current = info.as_of == bundle.snapshot_as_of and all(
        info.model_versions.get(k) == v for k, v in bundle.versions.items() if v is not None)
    return {**bundle.summary, "batch": {"as_of": info.as_of, "model_versions": info.model_versions,
                                        "matches_loaded_bundle": current}}
