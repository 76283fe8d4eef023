"""``POST /v1/scores``: up to 1,000 customers in one call, by id or with features inline."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError

from crmscore.bundle import ModelKind
from crmscore.serving.api.deps import API_KEY_REQUIRED, ReaderBundle, Service
from crmscore.serving.api.payloads import customer_json, encode, item_json, reasons_source
from crmscore.serving.api.schemas import ErrorResponse, ScoresRequest, ScoresResponse
from crmscore.serving.registry import ServingBundle

router = APIRouter(prefix="/v1", tags=["scores"])


def _score_inline(bundle: ServingBundle, ids: list[str], X: np.ndarray, attributes: dict[str, list[Any]],
                  reason_rows: list[int], reason_kinds: list[list[ModelKind]], with_inline_reasons: bool
                  ) -> tuple[list[dict[str, Any]], list[dict[str, list]], list[dict[str, list]]]:
    """The blocking part, in a worker thread: inline rows scored, reasons computed."""
    records: list[dict[str, Any]] = []
    inline_reasons: list[dict[str, list]] = []
    if ids:
        scored = bundle.score_rows(ids, X, attributes)
        records = [scored.record(i) for i in range(len(ids))]
        if with_inline_reasons:
            inline_reasons = bundle.compute_reasons(X)
    # Snapshot customers without cached reasons: one TreeSHAP call per set of missing kinds.
    snapshot_reasons: list[dict[str, list]] = [{} for _ in reason_rows]
    groups: dict[tuple[ModelKind, ...], list[int]] = {}
    for k, missing in enumerate(reason_kinds):
        groups.setdefault(tuple(missing), []).append(k)
    for group, members in groups.items():
        computed = bundle.compute_reasons(bundle.X[[reason_rows[k] for k in members]], list(group))
        for k, found in zip(members, computed, strict=True):
            snapshot_reasons[k] = found
    return records, inline_reasons, snapshot_reasons


@router.post(
    "/scores",
    response_model=ScoresResponse,
    summary="Score up to 1,000 customers: by id, or with features inline",
    openapi_extra=API_KEY_REQUIRED,
    responses={
        400: {"model": ErrorResponse, "description": "The body cannot be decoded (e.g. it is not UTF-8)."},
        401: {"model": ErrorResponse},
        413: {"model": ErrorResponse, "description": "The body is larger than the limit (1 MiB by default)."},
        422: {"model": ErrorResponse, "description": "Invalid body: each error names its field path."},
        503: {"model": ErrorResponse},
    },
)
async def post_scores(bundle: ReaderBundle, service: Service, body: ScoresRequest) -> Response:
    """Score a list of customers.

    * ``{"customer_id": ...}``: a customer of the snapshot, as ``GET /v1/customers/{id}/scores``;
      an id not in the snapshot gives an item with ``status: "not_found"`` (the call still
      succeeds for the others).
    * ``{"customer_id": ..., "features": {...}}``: scored now from the features sent, which
      replace the snapshot's for a known customer (all missing for a new one). Unknown feature
      names, non-finite numbers and non-string categories are rejected with 422 naming
      ``body.customers[i].features.<name>``; an unknown category level is treated as missing
      (and said so in ``warnings``).

    Items come back in the order sent.
    """
    settings = service.settings
    n = len(body.customers)
    if n > settings.max_batch:
        raise RequestValidationError([{
            "loc": ("body", "customers"), "type": "too_long",
            "msg": f"at most {settings.max_batch} customers per call; got {n}: split the batch"}])
    n_features = len(bundle.models.feature_names)
    items: list[str | None] = [None] * n
    problems: list[dict[str, Any]] = []
    by_id: list[tuple[int, int]] = []
    inline_pos: list[int] = []
    inline_ids: list[str] = []
    inline_rows: list[np.ndarray] = []
    inline_attrs: dict[str, list[Any]] = {c: [] for c in bundle.flag_columns}
    inline_warnings: list[list[str]] = []
    for pos, customer in enumerate(body.customers):
        row = bundle.row_of(customer.customer_id)
        if customer.features is None:
            if row is None:
                items[pos] = item_json(customer.customer_id, "not_found", None,
                                       "unknown customer: not in the snapshot; send its features inline to "
                                       "score it", [])
            else:
                by_id.append((pos, row))
            continue
        base = None if row is None else bundle.X[row]
        base_attrs = None if row is None else {c: bundle.attributes[c][row] for c in bundle.flag_columns}
        x, attrs, found, warnings = bundle.encode_features(customer.features, base, base_attrs)
        problems += [{"loc": ("body", "customers", pos, "features", p.feature), "msg": p.message, "type": p.type}
                     for p in found]
        sent = sum(1 for f in customer.features if f in bundle.feature_position)
        if row is None:
            warnings.insert(0, f"customer not in the snapshot: {n_features - sent} of {n_features} model "
                            "features not sent, treated as missing")
        else:
            warnings.insert(0, f"features of the snapshot as of {bundle.snapshot_as_of}, {sent} replaced by "
                            "the values sent")
        inline_pos.append(pos)
        inline_ids.append(customer.customer_id)
        inline_rows.append(x)
        for c in bundle.flag_columns:
            inline_attrs[c].append(attrs.get(c, False))
        inline_warnings.append(warnings)
    if problems:
        raise RequestValidationError(problems)

    # Snapshot customers: precomputed rows; cached reasons, the rest computed in the thread.
    records: dict[int, dict[str, Any]] = {}
    reasons: dict[int, dict[str, Any]] = {}
    sources: dict[int, str] = {}
    need_rows: list[int] = []
    need_kinds: list[list[ModelKind]] = []
    need_pos: list[int] = []
    for pos, row in by_id:
        records[pos] = bundle.scored.record(row)
        if body.reasons:
            cached, missing = bundle.cached_reasons(row)
            reasons[pos] = dict(cached)
            sources[pos] = reasons_source(len(cached), len(missing))
            if missing:
                need_rows.append(row)
                need_kinds.append(missing)
                need_pos.append(pos)
    if inline_ids or need_rows:
        X = np.vstack(inline_rows) if inline_rows else np.empty((0, n_features))
        inline_records, inline_reasons, computed = await service.run_compute(
            _score_inline, bundle, inline_ids, X, inline_attrs, need_rows, need_kinds, body.reasons)
        for pos, found_reasons in zip(need_pos, computed, strict=True):
            reasons[pos].update(found_reasons)
        for k, pos in enumerate(inline_pos):
            records[pos] = inline_records[k]
            if body.reasons:
                reasons[pos] = inline_reasons[k]
                sources[pos] = "computed"
    warnings_of = dict(zip(inline_pos, inline_warnings, strict=True))
    for pos, record in records.items():
        customer_id = body.customers[pos].customer_id
        result = customer_json(bundle, customer_id, record, reasons.get(pos) if body.reasons else None,
                               sources.get(pos, "omitted"))
        items[pos] = item_json(customer_id, "ok", result, None, warnings_of.get(pos, []))
    n_not_found = n - len(records)
    text = ('{"results":[' + ",".join(items) + f'],"n_ok":{len(records)},"n_not_found":{n_not_found},'  # type: ignore[arg-type]
            + '"model_versions":' + encode(bundle.versions) + ',"snapshot_as_of":'
            + encode(bundle.snapshot_as_of_text) + "}")
    return Response(text, media_type="application/json")
