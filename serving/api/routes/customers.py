"""``GET /v1/customers/{customer_id}/scores``: one customer, everything a CRM screen shows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from crmscore.serving.api.deps import CurrentBundle, ReaderKey, Service
from crmscore.serving.api.payloads import customer_payload, reasons_source
from crmscore.serving.api.schemas import CustomerScores, ErrorResponse

router = APIRouter(prefix="/v1", tags=["scores"])


@router.get(
    "/customers/{customer_id:path}/scores",
    response_model=CustomerScores,
    summary="One customer's scores, portfolio placement, actions and reasons",
    responses={
        401: {"model": ErrorResponse, "description": "No API key, or an unknown one."},
        404: {"model": ErrorResponse, "description": "No customer with this id in the snapshot."},
        422: {"model": ErrorResponse, "description": "The id is empty or longer than 256 characters."},
        503: {"model": ErrorResponse, "description": "No bundle loaded yet (the reason is given)."},
    },
)
async def get_customer_scores(
    _: ReaderKey,
    bundle: CurrentBundle,
    service: Service,
    customer_id: Annotated[str, Path(min_length=1, max_length=256,
                                      description="Customer id; URL-encode '/' and other reserved characters.")],
    reasons: Annotated[bool, Query(description="Include reason codes (computed on demand when the last "
                                   "batch scoring has none for this customer).")] = True,
) -> dict:
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
        return customer_payload(bundle, customer_id, record, None, "omitted")
    found, missing = bundle.cached_reasons(i)
    if missing:
        computed = await service.run_compute(bundle.compute_reasons, bundle.X[i:i + 1], missing)
        found.update(computed[0])
        service.metrics.reasons.labels("computed").inc()
    else:
        service.metrics.reasons.labels("batch").inc()
    return customer_payload(bundle, customer_id, record, found,
                            reasons_source(len(bundle.models.bundles) - len(missing), len(missing)))
