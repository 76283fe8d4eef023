"""``GET /v1/customers/{customer_id}/scores``: one customer, everything a CRM screen shows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from crmscore.serving.api.deps import API_KEY_REQUIRED, ReaderBundle, service_of
from crmscore.serving.api.payloads import customer_json, reasons_source
from crmscore.serving.api.schemas import CustomerScores, ErrorResponse

router = APIRouter(prefix="/v1", tags=["scores"])


@router.get(
    "/customers/{customer_id:path}/scores",
    response_model=CustomerScores,
    summary="One customer's scores, portfolio placement, actions and reasons",
    openapi_extra=API_KEY_REQUIRED,
    responses={
        401: {"model": ErrorResponse, "description": "No API key, or an unknown one."},
        404: {"model": ErrorResponse, "description": "No customer with this id in the snapshot."},
        422: {"model": ErrorResponse, "description": "The id is empty or longer than 256 characters."},
        503: {"model": ErrorResponse, "description": "No bundle loaded yet (the reason is given)."},
    },
)
async def get_customer_scores(
    bundle: ReaderBundle,
    request: Request,
    customer_id: Annotated[str, Path(min_length=1, max_length=256,
                                      description="Customer id; URL-encode '/' and other reserved characters.")],
    reasons: Annotated[bool, Query(description="Include reason codes (computed on demand when the last "
                                   "batch scoring has none for this customer).")] = True,
) -> Response:
    """Scores of a customer in the loaded snapshot.

    Scores and the portfolio placement were computed with the batch functions when the bundle
    was loaded; reason codes come from the last batch scoring when it has them for this
    customer and these model versions, else they are computed now (TreeSHAP, a few ms).
    """
    i = bundle.row_of(customer_id)
    if i is None:
        raise HTTPException(status_code=404, detail="unknown customer: no customer with this id in the "
                            f"snapshot as of {bundle.snapshot_as_of}")
    record = bundle.scored.record(i)
    if not reasons:
        return Response(customer_json(bundle, customer_id, record, None, "omitted"), media_type="application/json")
    found: dict = {}
    cached, missing = bundle.cached_reasons(i)
    found.update(cached)
    service = service_of(request)
    if missing:
        computed = await service.run_compute(bundle.compute_reasons, bundle.X[i:i + 1], missing)
        found.update(computed[0])
        service.metrics.reasons.labels("computed").inc()
    else:
        service.metrics.reasons.labels("batch").inc()
    body = customer_json(bundle, customer_id, record, found, reasons_source(len(cached), len(missing)))
    return Response(body, media_type="application/json")
