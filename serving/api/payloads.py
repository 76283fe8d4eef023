"""Scored rows -> the wire shape of :class:`~crmscore.serving.api.schemas.CustomerScores`.

Plain dicts: FastAPI validates and serialises them against the declared response model in
pydantic-core (Rust), which is faster than building the nested models in Python.
"""

from __future__ import annotations

import json
from typing import Any

from crmscore.bundle import ModelKind
from crmscore.serving.registry import ServingBundle

KINDS = tuple(k.value for k in ModelKind)


def reasons_source(cached: int, computed: int) -> str:
    if cached and computed:
        return "mixed"
    if computed:
        return "computed"
    return "batch"


def customer_payload(bundle: ServingBundle, customer_id: str, record: dict[str, Any],
                     reasons: dict[str, list[dict[str, Any]]] | None, source: str) -> dict[str, Any]:
    """One customer's response body from its scored record (see ``ScoredRows.record``)."""
    flags = {"high_value": record["flag_high_value"]}
    for flag in bundle.policy.flags:
        flags[flag.name] = record[flag.output_column]
    missing = record["missing_components"]
    if reasons is not None:
        reasons = {kind: reasons.get(kind, []) for kind in KINDS}
    return {
        "customer_id": customer_id,
        "snapshot_as_of": bundle.snapshot_as_of,
        "horizon_days": bundle.horizon_days,
        "model_versions": bundle.versions,
        "policy_version": record["policy_version"],
        "scores": {
            "churn_prob": record["churn_prob"],
            "propensity": {c: record[f"propensity_{c}"] for c in bundle.categories},
            "default_prob": record["default_prob"],
            "credit_points": record["credit_points"],
            "credit_grade": record["credit_grade"],
            "expected_margin": record["expected_margin"],
            "clv": record["clv"],
        },
        "value": {
            "current_value": record["current_value"],
            "margin_365d": record["margin_365d"],
            "cost_to_serve_365d": record["cost_to_serve_365d"],
            "outstanding_balance": record["outstanding_balance"],
            "credit_exposure": record["credit_exposure"],
            "expected_credit_loss": record["expected_credit_loss"],
            "future_potential": record["future_potential"],
        },
        "portfolio": {
            "quadrant": record["quadrant"],
            "currently_profitable": record["currently_profitable"],
            "high_potential": record["high_potential"],
            "strategically_significant": record["strategically_significant"],
            "flags": flags,
            "top_category": record["top_category"],
            "top_propensity": record["top_propensity"],
            "primary_action": record["primary_action"],
            "actions": json.loads(record["actions"]) if record["actions"] else [],
        },
        "missing_components": missing.split(";") if missing else [],
        "reasons": reasons,
        "reasons_source": source if reasons is not None else "omitted",
    }
