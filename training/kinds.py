"""The four model kinds: their labels, objectives, monotone constraints and headline metric."""

from __future__ import annotations

from dataclasses import dataclass, field

from crmscore.bundle import ModelKind

# More days late never lowers default risk (behavioural credit scoring, as utilities and banks
# rate customers from their payment history and its trend).
CREDIT_MONOTONE: dict[str, int] = {
    "current_days_past_due": 1,
    "mean_days_late": 1,
    "max_days_late": 1,
    "paid_late_share": 1,
    "overdue_balance": 1,
    "days_late_trend": 1,
    "open_dpd_1_30_count": 1,
    "open_dpd_31_60_count": 1,
    "open_dpd_61_89_count": 1,
    "open_dpd_90_plus_count": 1,
}
# A more recent purchase never raises churn risk.
CHURN_MONOTONE: dict[str, int] = {
    "days_since_last_purchase": 1,
    "order_count_30d": -1,
    "order_count_90d": -1,
}


@dataclass(frozen=True)
class KindSpec:
    kind: ModelKind
    label: str | None  # label column; None for propensity (one per category)
    objective: str
    monotone: dict[str, int] = field(default_factory=dict)
    headline: str = "auc"  # the metric the promotion gate compares
    higher_is_better: bool = True

    @property
    def registered_name(self) -> str:
        return self.kind.registered_name


SPECS: dict[ModelKind, KindSpec] = {
    ModelKind.CHURN: KindSpec(ModelKind.CHURN, "label_churn", "binary", CHURN_MONOTONE),
    ModelKind.PROPENSITY: KindSpec(ModelKind.PROPENSITY, None, "binary", headline="mean_auc"),
    ModelKind.CREDIT_RISK: KindSpec(ModelKind.CREDIT_RISK, "label_default", "binary", CREDIT_MONOTONE),
    ModelKind.EXPECTED_MARGIN: KindSpec(
        ModelKind.EXPECTED_MARGIN, "label_margin", "tweedie", headline="rmse", higher_is_better=False
    ),
}


def parse_kinds(value: str) -> list[ModelKind]:
    """``all`` or one kind name -> the kinds to train."""
    if value == "all":
        return list(ModelKind)
    return [ModelKind.parse(value)]
