"""Portfolio rules: value, quadrant boundaries, strategic flags, actions, missing components.

Scores frames come from :func:`make_scores`, a seeded helper written here (independent of the
demo generator in the module): heavy-tailed CLV, some negative current values, NaN credit
for customers without invoices, a few NaN CLV / churn / propensity. The rules are checked
against hand-computed tables and against :func:`reference_row`, a slow per-customer version
written plainly in the test.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import date

import numpy as np
import pandas as pd
import pytest

from crmscore.serving.policy import Cutoffs, Policy, Quadrant, load_policy, parse_policy
from crmscore.serving.portfolio import (
    COMPONENTS,
    QUADRANTS,
    ActionCode,
    assess_customer,
    assign_portfolio,
    assign_quadrant,
    compute_expected_credit_loss,
    compute_value,
    make_demo_scores,
    output_columns,
    resolve_cutoffs,
)

CATEGORIES = ("books", "grocery", "home")


def make_scores(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A seeded scores frame in realistic ranges (currency units, probabilities)."""
    rng = np.random.default_rng(seed)
    margin = rng.lognormal(5.0, 1.2, n)
    cost = margin * rng.uniform(0.1, 1.4, n)  # some customers cost more than they bring
    clv = rng.pareto(1.6, n) * 300.0  # heavy tail
    on_account = rng.random(n) < 0.5
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "as_of": pd.Timestamp("2024-10-01"),
            "horizon_days": 90,
            "churn_prob": rng.beta(1.0, 2.0, n),
            "default_prob": np.where(on_account, rng.beta(0.7, 6.0, n), np.nan),
            "credit_grade": np.where(on_account, rng.choice(["A", "B", "C"], n), None),
            "outstanding_balance": np.where(on_account, rng.gamma(1.0, 500.0, n), np.nan),
            "clv": clv,
            "expected_margin": clv / 5,
            "margin_365d": margin,
            "cost_to_serve_365d": cost,
            "current_value": margin - cost,
            "segment": rng.choice(["B2B", "B2C"], n),
            "is_reference_account": rng.random(n) < 0.05,
        }
    )
    for c in CATEGORIES:
        frame[f"propensity_{c}"] = rng.beta(1.0, 3.0, n)
    # A few missing components beyond credit.
    for column, share in (("clv", 0.03), ("churn_prob", 0.03), ("current_value", 0.02)):
        frame.loc[rng.random(n) < share, column] = np.nan
    frame.loc[rng.random(n) < 0.03, [f"propensity_{c}" for c in CATEGORIES]] = np.nan
    return frame


def numeric_policy(**changes: object) -> Policy:
    """A policy with numeric cut-offs (no portfolio statistics), default thresholds."""
    return parse_policy(
        {
            "name": "test",
            "version": "1",
            "current_value_cutoff": 0,
            "future_potential_cutoff": 500,
            "retention_min_future_potential": 500,
            "flags": [{"name": "benchmark", "column": "is_reference_account", "equals": True}],
            **changes,
        }
    )


# --- value -----------------------------------------------------------------------------------


def test_expected_credit_loss_by_hand() -> None:
    exposure, loss, missing = compute_expected_credit_loss(
        [0.1, 0.5, np.nan, 0.2, 0.3], [1000.0, 200.0, 500.0, np.nan, -50.0], 0.6
    )
    np.testing.assert_allclose(exposure, [1000.0, 200.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(loss, [60.0, 60.0, 0.0, 0.0, 0.0])
    assert missing.tolist() == [False, False, True, True, False]


def test_value_components_against_a_row_by_row_computation() -> None:
    scores = make_scores(300, seed=1)
    value = compute_value(scores, loss_given_default=0.45)
    for i, row in scores.iterrows():
        known = not (math.isnan(row["default_prob"]) or math.isnan(row["outstanding_balance"]))
        ecl = row["default_prob"] * max(row["outstanding_balance"], 0.0) * 0.45 if known else 0.0
        assert value.at[i, "expected_credit_loss"] == pytest.approx(ecl)
        assert value.at[i, "credit_missing"] == (not known)
        if math.isnan(row["clv"]):
            assert math.isnan(value.at[i, "future_potential"])
        else:
            assert value.at[i, "future_potential"] == pytest.approx(row["clv"] - ecl)
    assert list(value.columns) == [
        "current_value",
        "clv",
        "default_prob",
        "outstanding_balance",
        "credit_exposure",
        "expected_credit_loss",
        "future_potential",
        "credit_missing",
    ]


# --- quadrants: boundaries -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current_value", "future_potential", "cv_cut", "fp_cut", "quadrant"),
    [
        (10.0, 600.0, 0.0, 500.0, "invest"),
        (10.0, 500.0, 0.0, 500.0, "nurture"),  # exactly at the potential cut-off: low
        (10.0, 400.0, 0.0, 500.0, "nurture"),
        (0.0, 600.0, 0.0, 500.0, "re-engineer"),  # exactly at the value cut-off: not profitable
        (-5.0, 500.0001, 0.0, 500.0, "re-engineer"),
        (0.0, 500.0, 0.0, 500.0, "sack"),  # at both cut-offs
        (-100.0, -20.0, 0.0, 500.0, "sack"),
        (np.nan, 600.0, 0.0, 500.0, "re-engineer"),  # unknown value: not shown profitable
        (10.0, np.nan, 0.0, 500.0, "nurture"),  # no CLV: not shown high potential
        (np.nan, np.nan, 0.0, 500.0, "sack"),
        (-10.0, 0.0, -20.0, -1.0, "invest"),  # negative cut-offs work the same way
        (-20.0, -1.0, -20.0, -1.0, "sack"),
        (1e12, 1e12, 0.0, 500.0, "invest"),
    ],
)
def test_quadrant_boundaries(
    current_value: float, future_potential: float, cv_cut: float, fp_cut: float, quadrant: str
) -> None:
    assert assign_quadrant([current_value], [future_potential], cv_cut, fp_cut).tolist() == [
        quadrant
    ]


def test_every_customer_gets_exactly_one_quadrant() -> None:
    scored = assign_portfolio(make_scores(1000, seed=2), load_policy())
    assert scored["quadrant"].notna().all()
    assert set(scored["quadrant"].astype(str)) <= set(QUADRANTS)
    expected = np.select(
        [
            scored["currently_profitable"] & scored["high_potential"],
            scored["currently_profitable"] & ~scored["high_potential"],
            ~scored["currently_profitable"] & scored["high_potential"],
        ],
        ["invest", "nurture", "re-engineer"],
        "sack",
    )
    assert (scored["quadrant"].astype(str).to_numpy() == expected).all()
    # One primary action per customer, the quadrant's.
    primary = {
        "invest": "develop_and_retain",
        "nurture": "keep_cost_low",
        "re-engineer": "reduce_cost_to_serve",
        "sack": "stop_investing",
    }
    assert (scored["primary_action"] == scored["quadrant"].astype(str).map(primary)).all()


@pytest.mark.parametrize(("old", "new"), [(0.0, 50.0), (50.0, -30.0), (-200.0, 400.0)])
def test_moving_the_current_value_cutoff_moves_exactly_the_customers_between(
    old: float, new: float
) -> None:
    scores = make_scores(800, seed=3)
    before = assign_portfolio(scores, numeric_policy(current_value_cutoff=old))
    after = assign_portfolio(scores, numeric_policy(current_value_cutoff=new))
    lo, hi = min(old, new), max(old, new)
    between = (scores["current_value"] > lo) & (scores["current_value"] <= hi)
    moved = before["quadrant"].astype(str) != after["quadrant"].astype(str)
    assert between.sum() > 0
    assert (moved == between).all()
    # They cross the horizontal line only: invest <-> re-engineer, nurture <-> sack.
    pairs = set(
        zip(
            before.loc[moved, "quadrant"].astype(str),
            after.loc[moved, "quadrant"].astype(str),
            strict=True,
        )
    )
    allowed = {
        ("invest", "re-engineer"),
        ("nurture", "sack"),
        ("re-engineer", "invest"),
        ("sack", "nurture"),
    }
    assert pairs <= allowed


@pytest.mark.parametrize(("old", "new"), [(500.0, 800.0), (800.0, 100.0)])
def test_moving_the_future_potential_cutoff_moves_exactly_the_customers_between(
    old: float, new: float
) -> None:
    scores = make_scores(800, seed=4)
    before = assign_portfolio(scores, numeric_policy(future_potential_cutoff=old))
    after = assign_portfolio(scores, numeric_policy(future_potential_cutoff=new))
    potential = before["future_potential"]
    between = (potential > min(old, new)) & (potential <= max(old, new))
    moved = before["quadrant"].astype(str) != after["quadrant"].astype(str)
    assert between.sum() > 0
    assert (moved == between).all()
    pairs = set(
        zip(
            before.loc[moved, "quadrant"].astype(str),
            after.loc[moved, "quadrant"].astype(str),
            strict=True,
        )
    )
    assert pairs <= {
        ("invest", "nurture"),
        ("nurture", "invest"),
        ("re-engineer", "sack"),
        ("sack", "re-engineer"),
    }


def test_median_cutoff_is_the_portfolio_median_of_future_potential() -> None:
    scores = make_scores(501, seed=5)
    policy = load_policy()
    cutoffs = resolve_cutoffs(policy, scores)
    potential = compute_value(scores, policy.loss_given_default)["future_potential"].dropna()
    assert cutoffs.future_potential == pytest.approx(float(np.median(potential)))
    assert cutoffs.retention_min_future_potential == cutoffs.future_potential
    assert cutoffs.high_value == pytest.approx(float(np.quantile(potential, 0.9)))
    assert cutoffs.current_value == 0.0
    assert cutoffs.n_customers == 501
    assert cutoffs.as_of == date(2024, 10, 1)
    scored = assign_portfolio(scores, policy, cutoffs)
    # Strictly above the median of k distinct known values: floor(k / 2) customers.
    assert potential.is_unique
    assert scored["high_potential"].sum() == len(potential) // 2


def test_numeric_cutoffs_are_kept_and_recorded_with_every_row() -> None:
    scores = make_scores(100, seed=6)
    policy = numeric_policy(current_value_cutoff=12.5)
    scored = assign_portfolio(scores, policy)
    assert (scored["policy_version"] == "test@1").all()
    assert (scored["current_value_cutoff"] == 12.5).all()
    assert (scored["future_potential_cutoff"] == 500.0).all()
    assert scored["high_value_cutoff"].nunique() == 1


def test_cutoffs_from_another_policy_are_refused() -> None:
    scores = make_scores(50)
    cutoffs = resolve_cutoffs(load_policy(), scores)
    with pytest.raises(ValueError) as info:
        assign_portfolio(scores, numeric_policy(), cutoffs)
    assert str(info.value) == (
        "the cut-offs were resolved for policy default@1 but the policy is test@1; "
        "resolve them again with resolve_cutoffs(policy, scores)"
    )


def test_cutoffs_need_some_known_future_potential() -> None:
    scores = make_scores(20).assign(clv=np.nan)
    with pytest.raises(ValueError) as info:
        resolve_cutoffs(load_policy(), scores)
    assert str(info.value) == (
        "cannot resolve the portfolio cut-offs of policy default@1: no customer has a known "
        "future potential (clv is missing for all 20 customers)"
    )


# --- strategically significant customers ------------------------------------------------------


def test_high_value_flag_is_the_top_decile_of_risk_adjusted_clv() -> None:
    scores = make_scores(1000, seed=7).assign(clv=lambda f: f["clv"].fillna(1.0))
    scored = assign_portfolio(scores, load_policy())
    potential = scored["future_potential"].to_numpy()
    top = potential >= np.quantile(potential, 0.9)
    assert (scored["flag_high_value"].to_numpy() == top).all()
    assert scored["flag_high_value"].sum() == 100


def test_company_flags_from_attributes() -> None:
    scores = make_scores(200, seed=8)
    scores["tier"] = np.where(np.arange(200) % 7 == 0, "key account", "standard")
    policy = numeric_policy(
        flags=[
            {"name": "benchmark", "column": "is_reference_account"},
            {"name": "key_account", "column": "tier", "equals": "key account"},
        ]
    )
    scored = assign_portfolio(scores, policy)
    assert (scored["flag_benchmark"] == scores["is_reference_account"]).all()
    assert (scored["flag_key_account"] == (scores["tier"] == "key account")).all()
    any_flag = scored["flag_high_value"] | scored["flag_benchmark"] | scored["flag_key_account"]
    assert (scored["strategically_significant"] == any_flag).all()


def test_a_flag_whose_column_is_absent_is_false_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scores = make_scores(50).drop(columns=["is_reference_account"])
    with caplog.at_level(logging.WARNING, logger="crmscore.serving.portfolio"):
        scored = assign_portfolio(scores, load_policy())
    assert not scored["flag_benchmark"].any()
    assert (
        "flag 'benchmark': column 'is_reference_account' is not in the scores; the flag is "
        "False for every customer"
    ) in caplog.messages


# --- actions ---------------------------------------------------------------------------------


def _actions(scored: pd.DataFrame, i: int) -> list[dict]:
    return json.loads(scored["actions"].iloc[i])


def test_names_from_the_data_are_escaped_in_the_actions_json() -> None:
    """Category names come from the models' training data (flag names are identifiers, checked
    by the policy): quotes, backslashes and control characters in one still give valid JSON,
    with the name intact in the reason and the evidence."""
    odd = 'toys "R" \\ us\tété'
    scores = make_scores(300, seed=4).rename(columns={"propensity_books": f"propensity_{odd}"})
    scores[f"propensity_{odd}"] = 0.99  # the top category of every customer with propensities
    scored = assign_portfolio(scores, numeric_policy())
    cross_sell = [a for i in range(len(scored)) for a in _actions(scored, i) if a["code"] == "cross_sell"]
    assert cross_sell
    for action in cross_sell:
        assert action["reason"] == f"Propensity to buy {odd} 99.0% >= 30.0%: offer {odd}."
        assert action["evidence"]["category"] == odd


def test_every_action_has_a_code_a_reason_and_evidence() -> None:
    scored = assign_portfolio(make_scores(600, seed=9), load_policy())
    codes = {c.value for c in ActionCode}
    for i in range(len(scored)):
        actions = _actions(scored, i)
        assert actions, "every customer has at least the primary action"
        assert actions[0]["code"] == scored["primary_action"].iloc[i]
        assert ";".join(a["code"] for a in actions) == scored["action_codes"].iloc[i]
        for a in actions:
            assert set(a) == {"code", "reason", "evidence"}
            assert a["code"] in codes
            assert isinstance(a["reason"], str) and len(a["reason"]) > 20
            assert isinstance(a["evidence"], dict) and a["evidence"]


def one_customer(**values: object) -> pd.DataFrame:
    """A customer with every component known and nothing triggered, then ``values``."""
    row = {
        "customer_id": "X1",
        "current_value": 100.0,
        "clv": 1000.0,
        "churn_prob": 0.1,
        "default_prob": 0.01,
        "outstanding_balance": 100.0,
        "propensity_books": 0.1,
        "propensity_grocery": 0.05,
        "is_reference_account": False,
    }
    row.update(values)
    return pd.DataFrame([row])


TRIGGERS = [
    # (changes, expected action codes) with cut-offs 0 / 500, retention floor 500
    ({}, ["develop_and_retain"]),
    ({"churn_prob": 0.5}, ["develop_and_retain", "retention_offer"]),  # at the threshold
    ({"churn_prob": 0.4999}, ["develop_and_retain"]),
    ({"churn_prob": 0.9, "clv": 499.0}, ["keep_cost_low"]),  # not worth keeping
    ({"churn_prob": 0.9, "clv": 501.0}, ["develop_and_retain", "retention_offer"]),
    # future potential exactly 500: low potential (> cut-off) yet worth keeping (>= floor)
    (
        {"churn_prob": 0.9, "clv": 500.0, "default_prob": np.nan},
        ["keep_cost_low", "retention_offer"],
    ),
    ({"churn_prob": np.nan}, ["develop_and_retain"]),
    ({"default_prob": 0.1}, ["develop_and_retain", "credit_review"]),  # at the review threshold
    ({"default_prob": 0.0999}, ["develop_and_retain"]),
    ({"default_prob": 0.29}, ["develop_and_retain", "credit_review"]),
    ({"default_prob": 0.3}, ["develop_and_retain", "require_prepayment"]),  # not both
    (
        {"default_prob": 0.3, "outstanding_balance": np.nan},
        ["develop_and_retain", "require_prepayment"],
    ),
    ({"default_prob": np.nan}, ["develop_and_retain"]),
    ({"propensity_books": 0.3}, ["develop_and_retain", "cross_sell"]),
    ({"propensity_books": 0.2999}, ["develop_and_retain"]),
    ({"propensity_books": 0.6, "current_value": -1.0, "clv": 10.0}, ["stop_investing"]),  # sack
    ({"propensity_books": 0.6, "current_value": 5.0, "clv": 10.0}, ["keep_cost_low", "cross_sell"]),
    ({"propensity_books": np.nan, "propensity_grocery": np.nan}, ["develop_and_retain"]),
    ({"current_value": -50.0}, ["reduce_cost_to_serve"]),
    (
        {"current_value": -50.0, "is_reference_account": True},
        ["reduce_cost_to_serve", "review_strategic_account"],
    ),
    ({"current_value": 50.0, "is_reference_account": True}, ["develop_and_retain"]),
    (
        {
            "current_value": -50.0,
            "clv": 20.0,
            "is_reference_account": True,
            "default_prob": 0.5,
            "churn_prob": 0.8,
            "propensity_grocery": 0.9,
        },
        ["stop_investing", "review_strategic_account", "require_prepayment"],
    ),
    (
        {"churn_prob": 0.7, "default_prob": 0.15, "propensity_grocery": 0.9},
        ["develop_and_retain", "credit_review", "retention_offer", "cross_sell"],  # the order
    ),
]


# The cut-offs numeric_policy() resolves to, with no customer high-value.
CUTOFFS = Cutoffs(
    policy_name="test",
    policy_version="1",
    current_value=0.0,
    future_potential=500.0,
    high_value=1e9,
    retention_min_future_potential=500.0,
    n_customers=1,
)


@pytest.mark.parametrize(("changes", "codes"), TRIGGERS)
def test_triggered_actions_and_their_order(changes: dict, codes: list[str]) -> None:
    scored = assign_portfolio(one_customer(**changes), numeric_policy(), CUTOFFS)
    assert scored["action_codes"].iloc[0] == ";".join(codes)
    assert [a["code"] for a in _actions(scored, 0)] == codes


def test_actions_carry_the_scores_behind_them() -> None:
    policy = numeric_policy()
    scores = one_customer(
        churn_prob=0.73,
        default_prob=0.12,
        outstanding_balance=2500.0,
        credit_grade="C",
        propensity_grocery=0.81,
        clv=4000.0,
    )
    scored = assign_portfolio(scores, policy, resolve_cutoffs(policy, scores))
    by_code = {a["code"]: a for a in _actions(scored, 0)}
    ecl = 0.12 * 2500.0 * 0.6
    assert by_code["develop_and_retain"]["evidence"] == {
        "quadrant": "invest",
        "current_value": 100.0,
        "current_value_cutoff": 0.0,
        "future_potential": 4000.0 - ecl,
        "future_potential_cutoff": 500.0,
        "clv": 4000.0,
        "expected_credit_loss": ecl,
    }
    assert by_code["develop_and_retain"]["reason"] == (
        "Invest: currently profitable (current value 100 > cut-off 0) and high future potential "
        "(risk-adjusted CLV 3,820 > cut-off 500); develop the relationship (account management, "
        "cross-sell, up-sell) and retain it."
    )
    assert by_code["credit_review"]["evidence"] == {
        "default_prob": 0.12,
        "threshold": 0.1,
        "outstanding_balance": 2500.0,
        "expected_credit_loss": ecl,
        "credit_grade": "C",
    }
    assert by_code["credit_review"]["reason"] == (
        "Default risk 12.0% >= 10.0%; open balance 2,500, expected credit loss 180: review the "
        "credit limit and payment terms."
    )
    assert by_code["retention_offer"]["evidence"] == {
        "churn_prob": 0.73,
        "threshold": 0.5,
        "future_potential": 4000.0 - ecl,
        "min_future_potential": 500.0,
    }
    assert by_code["cross_sell"] == {
        "code": "cross_sell",
        "reason": "Propensity to buy grocery 81.0% >= 30.0%: offer grocery.",
        "evidence": {"category": "grocery", "propensity": 0.81, "threshold": 0.3},
    }
    assert scored["top_category"].iloc[0] == "grocery"
    assert scored["top_propensity"].iloc[0] == 0.81


def test_reasons_with_quotes_in_category_names_stay_valid_json() -> None:
    scores = one_customer(**{'propensity_kids "toys"\\games': 0.9})
    scored = assign_portfolio(scores, numeric_policy())
    cross = _actions(scored, 0)[-1]
    assert cross["evidence"]["category"] == 'kids "toys"\\games'


# --- missing components ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "quadrant", "missing"),
    [
        ({}, "invest", ""),
        ({"clv": np.nan}, "nurture", "clv"),
        ({"current_value": np.nan}, "re-engineer", "current_value"),
        ({"current_value": np.nan, "clv": np.nan}, "sack", "current_value;clv"),
        ({"default_prob": np.nan}, "invest", "credit"),
        ({"outstanding_balance": np.nan}, "invest", "credit"),
        ({"churn_prob": np.nan}, "invest", "churn"),
        ({"propensity_books": np.nan, "propensity_grocery": np.nan}, "invest", "propensity"),
        ({"propensity_books": np.nan}, "invest", ""),  # one category known is enough
        (
            {"clv": np.nan, "default_prob": np.nan, "churn_prob": np.nan},
            "nurture",
            "clv;credit;churn",
        ),
    ],
)
def test_missing_components_still_get_a_quadrant(
    changes: dict, quadrant: str, missing: str
) -> None:
    scored = assign_portfolio(one_customer(**changes), numeric_policy(), CUTOFFS)
    assert scored["quadrant"].iloc[0] == quadrant
    assert scored["missing_components"].iloc[0] == missing
    if "credit" in missing:
        assert scored["expected_credit_loss"].iloc[0] == 0.0
    if "clv" in missing:
        assert "future potential unknown (no CLV)" in _actions(scored, 0)[0]["reason"]


def test_absent_optional_columns_mean_missing_for_everyone() -> None:
    scores = make_scores(60)[["customer_id", "current_value", "clv"]]
    scored = assign_portfolio(scores, load_policy())
    assert (scored["missing_components"].str.contains("credit;churn;propensity")).all()
    assert scored["top_category"].isna().all()
    assert set(scored["primary_action"]) <= {
        "develop_and_retain",
        "keep_cost_low",
        "reduce_cost_to_serve",
        "stop_investing",
    }


def test_current_value_is_derived_from_margin_and_cost_when_absent() -> None:
    scores = make_scores(40).drop(columns=["current_value"])
    scored = assign_portfolio(scores, load_policy())
    np.testing.assert_allclose(
        scored["current_value"], scores["margin_365d"] - scores["cost_to_serve_365d"]
    )


def test_required_columns() -> None:
    with pytest.raises(ValueError) as info:
        assign_portfolio(make_scores(5).drop(columns=["clv"]), numeric_policy())
    assert str(info.value) == (
        "scores frame lacks required column(s) 'clv'; a scores frame needs customer_id, "
        "current_value, clv (current_value may instead come from margin_365d and "
        "cost_to_serve_365d)"
    )
    with pytest.raises(ValueError) as info:
        assign_portfolio(make_scores(5).assign(clv="lots"), numeric_policy())
    assert str(info.value) == "scores column 'clv' must be numeric; got dtype object"


# --- the frame as a whole ---------------------------------------------------------------------


def test_output_keeps_the_input_and_adds_the_documented_columns() -> None:
    scores = make_scores(80).set_index(pd.Index(range(1000, 1080)))
    original = scores.copy()
    policy = load_policy()
    scored = assign_portfolio(scores, policy)
    pd.testing.assert_frame_equal(scores, original)  # the input is not modified
    assert scored.index.equals(scores.index)
    assert list(scored.columns) == list(scores.columns) + output_columns(policy)
    pd.testing.assert_frame_equal(scored[list(scores.columns)], scores)
    assert isinstance(scored["quadrant"].dtype, pd.CategoricalDtype)
    assert list(scored["quadrant"].cat.categories) == list(QUADRANTS)


def test_empty_and_one_row_frames() -> None:
    policy = load_policy()
    scores = make_scores(100, seed=10)
    cutoffs = resolve_cutoffs(policy, scores)
    empty = assign_portfolio(scores.iloc[:0], policy, cutoffs)
    assert len(empty) == 0 and "actions" in empty.columns
    full = assign_portfolio(scores, policy, cutoffs)
    for i in (0, 17, 63):
        one = assign_portfolio(scores.iloc[[i]], policy, cutoffs)
        pd.testing.assert_frame_equal(one, full.iloc[[i]], check_categorical=False)


def reference_row(row: pd.Series, policy: Policy, cutoffs: Cutoffs) -> tuple[str, list[str], str]:
    """The rules, customer by customer, written plainly: (quadrant, action codes, missing)."""

    def known(x: object) -> bool:
        return x is not None and not (isinstance(x, float) and math.isnan(x))

    pd_, bal = row["default_prob"], row["outstanding_balance"]
    credit = known(pd_) and known(bal)
    ecl = pd_ * max(bal, 0.0) * policy.loss_given_default if credit else 0.0
    fp = row["clv"] - ecl if known(row["clv"]) else math.nan
    cv = row["current_value"]
    profitable = known(cv) and cv > cutoffs.current_value
    high = known(fp) and fp > cutoffs.future_potential
    quadrant = {
        (True, True): "invest",
        (True, False): "nurture",
        (False, True): "re-engineer",
        (False, False): "sack",
    }[(profitable, high)]
    codes = [
        {
            "invest": "develop_and_retain",
            "nurture": "keep_cost_low",
            "re-engineer": "reduce_cost_to_serve",
            "sack": "stop_investing",
        }[quadrant]
    ]
    flagged = (known(fp) and fp >= cutoffs.high_value) or bool(row["is_reference_account"])
    if flagged and quadrant in ("re-engineer", "sack"):
        codes.append("review_strategic_account")
    if known(pd_) and pd_ >= policy.prepayment_default_prob:
        codes.append("require_prepayment")
    elif known(pd_) and pd_ >= policy.credit_review_default_prob:
        codes.append("credit_review")
    churn = row["churn_prob"]
    if (
        known(churn)
        and churn >= policy.retention_churn_prob
        and known(fp)
        and fp >= cutoffs.retention_min_future_potential
    ):
        codes.append("retention_offer")
    props = [row[f"propensity_{c}"] for c in CATEGORIES if known(row[f"propensity_{c}"])]
    if (
        props
        and max(props) >= policy.cross_sell_min_propensity
        and quadrant in policy.cross_sell_quadrants
    ):
        codes.append("cross_sell")
    missing = [
        name
        for name, gone in (
            ("current_value", not known(cv)),
            ("clv", not known(row["clv"])),
            ("credit", not credit),
            ("churn", not known(churn)),
            ("propensity", not props),
        )
        if gone
    ]
    return quadrant, codes, ";".join(missing)


@pytest.mark.parametrize("seed", [11, 12])
def test_vectorised_rules_match_the_plain_reference(seed: int) -> None:
    scores = make_scores(700, seed=seed)
    policy = load_policy()
    cutoffs = resolve_cutoffs(policy, scores)
    scored = assign_portfolio(scores, policy, cutoffs)
    for i in range(len(scores)):
        quadrant, codes, missing = reference_row(scores.iloc[i], policy, cutoffs)
        assert scored["quadrant"].iloc[i] == quadrant, i
        assert scored["action_codes"].iloc[i] == ";".join(codes), i
        assert scored["missing_components"].iloc[i] == missing, i
    assert set(COMPONENTS) == {"current_value", "clv", "credit", "churn", "propensity"}


def test_assess_customer_matches_the_batch_row() -> None:
    """The API's one-customer path gives what the batch gives for the same row."""
    scores = make_scores(300, seed=13)
    policy = load_policy()
    cutoffs = resolve_cutoffs(policy, scores)
    scored = assign_portfolio(scores, policy, cutoffs)
    for i in range(0, 300, 7):
        record = {
            k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
            for k, v in scores.iloc[i].to_dict().items()
        }
        one = assess_customer(record, policy, cutoffs)
        row = scored.iloc[i]
        for column in output_columns(policy):
            expected = row[column]
            if column == "actions":
                assert one[column] == json.loads(expected)
            elif isinstance(expected, float) and math.isnan(expected):
                assert one[column] is None, column
            else:
                assert one[column] == expected, column
        assert one["customer_id"] == row["customer_id"]


def test_assess_customer_needs_the_value_components() -> None:
    policy, cutoffs = load_policy(), resolve_cutoffs(load_policy(), make_scores(30))
    with pytest.raises(ValueError) as info:
        assess_customer({"customer_id": "X", "current_value": 3.0}, policy, cutoffs)
    assert str(info.value) == "customer record lacks 'clv'"
    with pytest.raises(ValueError) as info:
        assess_customer({"customer_id": "X", "clv": 3.0, "current_value": "a lot"}, policy, cutoffs)
    assert str(info.value) == "current_value must be a number; got 'a lot'"


def test_quadrant_shares_are_stable_under_row_order() -> None:
    scores = make_scores(300, seed=14)
    policy = load_policy()
    a = assign_portfolio(scores, policy)
    b = assign_portfolio(scores.sample(frac=1.0, random_state=1), policy).loc[a.index]
    pd.testing.assert_series_equal(a["quadrant"], b["quadrant"])
    pd.testing.assert_series_equal(a["actions"], b["actions"])


def test_demo_scores_are_seeded_and_realistic() -> None:
    a, b = make_demo_scores(500, random_state=3), make_demo_scores(500, random_state=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(make_demo_scores(500, random_state=4))
    assert (a["current_value"] < 0).mean() > 0.05
    assert a["default_prob"].isna().mean() > 0.3
    assert a["clv"].max() > 20 * a["clv"].median()  # heavy tail
    scored = assign_portfolio(a, load_policy())
    assert set(scored["quadrant"].astype(str)) == set(QUADRANTS)
    assert scored["flag_benchmark"].any()
    assert Quadrant.SACK.value in set(scored["quadrant"].astype(str))
