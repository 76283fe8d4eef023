"""Wire schemas of the HTTP API: what clients send and receive, named by role.

Separate from the frames and arrays of scoring: field names are the stable vocabulary of the
batch output (``churn_prob``, ``default_prob``, ``clv``, ``quadrant``...), grouped for a CRM
screen. Probabilities are 0 to 1; money is in the base's currency; ``null`` marks a value that
is missing for this customer (listed in ``missing_components``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crmscore.serving.settings import MAX_BATCH_LIMIT

# --- examples (OpenAPI) -------------------------------------------------------------------------

REASON_EXAMPLE: dict[str, Any] = {
    "code": "CHN.days_since_last_purchase.UP",
    "feature": "days_since_last_purchase",
    "direction": "up",
    "contribution": 0.84,
    "value": 121.0,
    "text": "Recency: days from the last order to T = 121: raises churn risk",
}
ACTION_EXAMPLE: dict[str, Any] = {
    "code": "retention_offer",
    "reason": "Churn risk 62.0% >= 50.0% and future potential 1,250 >= 27 is worth keeping: make a "
    "retention offer.",
    "evidence": {"churn_prob": 0.62, "threshold": 0.5, "future_potential": 1250.3, "min_future_potential": 27.1},
}
CUSTOMER_EXAMPLE: dict[str, Any] = {
    "customer_id": "C0000042",
    "snapshot_as_of": "2025-01-01",
    "horizon_days": 90,
    "model_versions": {"churn": "3", "propensity": "3", "credit_risk": "2", "expected_margin": "3"},
    "policy_version": "default@1",
    "scores": {
        "churn_prob": 0.62,
        "propensity": {"books": 0.04, "electronics": 0.37, "fashion": 0.03},
        "default_prob": 0.021,
        "credit_points": 638.4,
        "credit_grade": "C",
        "expected_margin": 210.5,
        "clv": 1290.1,
    },
    "value": {
        "current_value": 412.6,
        "margin_365d": 701.6,
        "cost_to_serve_365d": 289.0,
        "outstanding_balance": 310.0,
        "credit_exposure": 310.0,
        "expected_credit_loss": 3.9,
        "future_potential": 1286.2,
    },
    "portfolio": {
        "quadrant": "invest",
        "currently_profitable": True,
        "high_potential": True,
        "strategically_significant": True,
        "flags": {"high_value": True, "benchmark": False},
        "top_category": "electronics",
        "top_propensity": 0.37,
        "primary_action": "develop_and_retain",
        "actions": [ACTION_EXAMPLE],
    },
    "missing_components": [],
    "reasons": {"churn": [REASON_EXAMPLE], "propensity": [], "credit_risk": [], "expected_margin": []},
    "reasons_source": "batch",
}


# --- customer scores ------------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReasonCode(_Wire):
    """A feature that pushed a score up or down (TreeSHAP contribution, adverse-action style)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [REASON_EXAMPLE]})

    code: str = Field(description="Stable id: model prefix, feature, direction.")
    feature: str
    direction: Literal["up", "down"]
    contribution: float = Field(description="Contribution to the model's raw score (log-odds or log margin).")
    value: float | str | None = Field(description="The customer's value of the feature; null if missing.")
    text: str


class Action(_Wire):
    """A recommended action with its reason and the numbers behind it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [ACTION_EXAMPLE]})

    code: str = Field(description="develop_and_retain, keep_cost_low, reduce_cost_to_serve, stop_investing, "
                      "review_strategic_account, require_prepayment, credit_review, retention_offer, cross_sell.")
    reason: str
    evidence: dict[str, Any]


class ModelScores(_Wire):
    churn_prob: float | None = Field(description="Probability of no purchase within the horizon.")
    propensity: dict[str, float | None] = Field(description="Probability of buying each product category.")
    default_prob: float | None = Field(description="Probability of default; null without credit history.")
    credit_points: float | None = Field(description="Scorecard points (higher is safer).")
    credit_grade: str | None = Field(description="Scorecard grade, A best.")
    expected_margin: float | None = Field(description="Expected margin within the horizon (currency).")
    clv: float | None = Field(description="Customer lifetime value: present value of expected margins.")


class CustomerValue(_Wire):
    current_value: float | None = Field(description="Trailing 12-month margin minus cost to serve.")
    margin_365d: float | None
    cost_to_serve_365d: float | None
    outstanding_balance: float | None
    credit_exposure: float | None
    expected_credit_loss: float | None = Field(description="default_prob x exposure x loss given default.")
    future_potential: float | None = Field(description="Risk-adjusted CLV: clv - expected_credit_loss.")


class Portfolio(_Wire):
    quadrant: Literal["invest", "nurture", "re-engineer", "sack"] = Field(
        description="Buttle's customer portfolio quadrant.")
    currently_profitable: bool
    high_potential: bool
    strategically_significant: bool
    flags: dict[str, bool] = Field(description="high_value and the policy's company-set flags.")
    top_category: str | None
    top_propensity: float | None
    primary_action: str
    actions: list[Action] = Field(description="Recommended actions, most important first.")


class CustomerScores(_Wire):
    """Everything a CRM screen shows for one customer."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [CUSTOMER_EXAMPLE]})

    customer_id: str
    snapshot_as_of: date | None = Field(description="As-of date of the features (null if unknown).")
    horizon_days: int
    model_versions: dict[str, str | None] = Field(description="Registry version of each model used.")
    policy_version: str
    scores: ModelScores
    value: CustomerValue
    portfolio: Portfolio
    missing_components: list[str] = Field(description="Components missing for this customer, e.g. credit.")
    reasons: dict[str, list[ReasonCode]] | None = Field(
        description="Top reason codes per model kind; null when not asked for.")
    reasons_source: Literal["batch", "computed", "mixed", "omitted"] = Field(
        description="batch: from the last batch scoring; computed: on demand (TreeSHAP); mixed: both.")


# --- batch scoring -------------------------------------------------------------------------------

FeatureValue = float | int | str | bool | None


class CustomerRequest(_Wire):
    """One customer: by id (looked up in the snapshot) or with features inline."""

    customer_id: str = Field(min_length=1, max_length=256)
    features: dict[str, FeatureValue] | None = Field(
        default=None, max_length=500,
        description="Feature values that replace the snapshot's (all features when the customer is "
        "not in the snapshot). Numbers finite, categories as strings; null = missing; an unknown "
        "category level is treated as missing. GET /v1/models lists the features.")


class ScoresRequest(_Wire):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "customers": [
            {"customer_id": "C0000042"},
            {"customer_id": "C0000043", "features": {"days_since_last_purchase": 3, "segment": "B2B"}},
        ],
        "reasons": True,
    }]})

    customers: list[CustomerRequest] = Field(min_length=1, max_length=MAX_BATCH_LIMIT)
    reasons: bool = Field(default=True, description="Include reason codes (computed on demand when the "
                          "batch scoring has none for a customer; inline customers always compute).")


class ScoresItem(_Wire):
    customer_id: str
    status: Literal["ok", "not_found"]
    result: CustomerScores | None = None
    error: str | None = Field(default=None, description="Why there is no result (never echoes input).")
    warnings: list[str] = Field(default_factory=list)


class ScoresResponse(_Wire):
    results: list[ScoresItem] = Field(description="One item per customer sent, in the same order.")
    n_ok: int
    n_not_found: int
    model_versions: dict[str, str | None]
    snapshot_as_of: date | None


# --- models, portfolio, admin, health ------------------------------------------------------------


class ModelInfo(_Wire):
    kind: str
    registered_name: str
    alias: str
    version: str | None
    loaded: bool
    horizon_days: int | None
    trees: int | None
    n_features: int | None
    targets: list[str]
    metrics: dict[str, float | None] = Field(description="Headline metrics from the model's evaluation.")


class FeatureInfo(_Wire):
    name: str
    type: Literal["number", "category", "attribute"]
    levels: list[str] | None


class SnapshotInfo(_Wire):
    as_of: date | None
    customers: int


class ScoresFileSummary(_Wire):
    status: Literal["loaded", "missing", "not_configured"]
    as_of: date | None
    model_versions: dict[str, str]
    policy_version: str | None
    cutoffs_used: bool
    reasons_kinds: list[str]
    customers_with_reasons: int
    notes: list[str]


class CutoffsInfo(_Wire):
    policy_version: str
    current_value: float
    future_potential: float
    high_value: float
    retention_min_future_potential: float
    source: Literal["scores_file", "snapshot"]


class ModelsResponse(_Wire):
    bundle_id: str
    loaded_at: datetime
    load_seconds: float
    models: list[ModelInfo]
    snapshot: SnapshotInfo
    cutoffs: CutoffsInfo
    scores_file: ScoresFileSummary
    features: list[FeatureInfo]
    last_reload_error: str | None = None


class PortfolioSummary(BaseModel):
    """The portfolio view of the last batch scoring (see docs/portfolio.md), plus provenance."""

    model_config = ConfigDict(extra="allow")

    policy_version: str | list[str] | None = None
    as_of: str | None = None
    n_customers: int
    quadrants: dict[str, Any]
    batch: dict[str, Any] = Field(description="as_of and model_versions of the batch scoring, and whether "
                                  "they match the loaded models and snapshot.")


class ReloadResponse(_Wire):
    status: Literal["reloaded"]
    bundle_id: str
    model_versions: dict[str, str | None]
    previous_model_versions: dict[str, str | None] | None
    snapshot_as_of: date | None
    customers: int
    load_seconds: float


class ErrorResponse(BaseModel):
    """Error body: ``detail`` says what is wrong (never echoing customer data)."""

    detail: str | list[dict[str, Any]]
    request_id: str | None = None


class LiveResponse(_Wire):
    status: Literal["alive"]


class ReadyResponse(_Wire):
    status: Literal["ready", "not_ready"]
    reason: str | None = None
    bundle_id: str | None = None
    model_versions: dict[str, str | None] | None = None
    snapshot_as_of: date | None = None
    last_reload_error: str | None = None
