"""``GET /metrics``: Prometheus text format (a reader key unless ``metrics_require_key`` is off)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from crmscore.serving.api.deps import MetricsAccess, Service
from crmscore.serving.api.metrics import CONTENT_TYPE
from crmscore.serving.api.schemas import ErrorResponse

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."},
               401: {"model": ErrorResponse}},
)
async def metrics(_: MetricsAccess, service: Service) -> Response:
    return Response(content=service.metrics.render(), media_type=CONTENT_TYPE)
