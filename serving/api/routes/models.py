"""``GET /v1/models``: the loaded model versions, their headline metrics and the feature contract."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from crmscore.serving.api.deps import API_KEY_REQUIRED, ReaderBundle, Service
from crmscore.serving.api.schemas import ErrorResponse, ModelsResponse

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelsResponse,
    summary="Loaded model versions, headline metrics, snapshot, cut-offs and features",
    openapi_extra=API_KEY_REQUIRED,
    responses={401: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def get_models(bundle: ReaderBundle, service: Service) -> dict[str, Any]:
    info = bundle.scores_file
    attempt = service.holder.last_attempt
    return {
        "bundle_id": bundle.bundle_id,
        "loaded_at": bundle.loaded_at,
        "load_seconds": bundle.load_seconds,
        "models": bundle.models_description(),
        "snapshot": {"as_of": bundle.snapshot_as_of, "customers": bundle.n_customers},
        "cutoffs": {
            "policy_version": bundle.cutoffs.label,
            "current_value": bundle.cutoffs.current_value,
            "future_potential": bundle.cutoffs.future_potential,
            "high_value": bundle.cutoffs.high_value,
            "retention_min_future_potential": bundle.cutoffs.retention_min_future_potential,
            "source": bundle.cutoffs_source,
        },
        "scores_file": {
            "status": info.status, "as_of": info.as_of, "model_versions": info.model_versions,
            "policy_version": info.policy_version, "cutoffs_used": info.cutoffs_used,
            "reasons_kinds": list(info.reasons_kinds), "customers_with_reasons": info.customers_with_reasons,
            "notes": list(info.notes),
        },
        "features": bundle.features_description(),
        "last_reload_error": None if attempt is None or attempt.ok else attempt.reason,
    }
