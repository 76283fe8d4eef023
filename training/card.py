"""Model cards: one Markdown page per trained model, logged with its MLflow run.

After Mitchell et al. (2019), "Model Cards for Model Reporting": what the model is for, what
it was trained on, how well it does and where it should not be trusted.
"""

from __future__ import annotations

from typing import Any

from crmscore.bundle import ModelBundle, ModelKind

PURPOSE = {
    ModelKind.CHURN: "Probability that a customer who has bought before makes no purchase in the horizon.",
    ModelKind.PROPENSITY: "Probability that a customer buys each product category in the horizon.",
    ModelKind.CREDIT_RISK: "Probability that one of the customer's invoices reaches 90 days past due in the "
    "horizon; mapped to scorecard points and grades. Adverse-action reason codes come with every score.",
    ModelKind.EXPECTED_MARGIN: "Expected margin (revenue - cost) of the customer's purchases in the horizon; "
    "with the churn model, customer lifetime value.",
}
LIMITS = (
    "Scores describe the horizon after the snapshot's as-of date; a stale snapshot gives stale scores.",
    "Trained on the base named below: a base with other customers, products or payment terms needs retraining.",
    "Probabilities are calibrated on held-out customers of the training period; check the out-of-time "
    "calibration (ECE) below before using them as absolute probabilities.",
)


def render_model_card(bundle: ModelBundle, *, params: dict[str, Any], metrics: dict[str, float],
                      tags: dict[str, str], version: str | None = None) -> str:
    """The model card of one trained bundle, as Markdown."""
    kind = bundle.kind
    title = f"# Model card: {kind.registered_name}" + (f" version {version}" if version else "")
    lines = [title, "", f"**Purpose.** {PURPOSE[kind]}", ""]
    lines += ["## Training data", "", "| item | value |", "|---|---|"]
    for key in sorted(k for k in tags if k.startswith("crmscore.")):
        lines.append(f"| {key.removeprefix('crmscore.')} | {tags[key]} |")
    lines += ["", "## Model", "", f"LightGBM, {bundle.booster.num_trees()} trees over {len(bundle.feature_names)} features; "
              f"horizon {bundle.horizon_days} days."]
    if bundle.monotone:
        constrained = ", ".join(f"{k} ({'+' if v > 0 else '-'})" for k, v in sorted(bundle.monotone.items()))
        lines.append(f"Monotone constraints: {constrained}.")
    if bundle.calibrators:
        methods = sorted({c.method for c in bundle.calibrators.values()})
        lines.append(f"Calibration: {', '.join(methods)}, fitted on held-out customers.")
    if bundle.scorecard is not None:
        sc = bundle.scorecard
        lines.append(f"Scorecard: {sc.base_points:g} points at {sc.base_odds:g}:1 odds, {sc.pdo:g} points to double the odds.")
    if bundle.clv is not None:
        lines.append(f"CLV: {bundle.clv.years:g} years, discount rate {bundle.clv.discount_rate:.0%}.")
    lines += ["", "## Parameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(params.items())]
    lines += ["", "## Out-of-time evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
    lines += ["", "## Limits", ""] + [f"- {item}" for item in LIMITS] + [""]
    return "\n".join(lines)
