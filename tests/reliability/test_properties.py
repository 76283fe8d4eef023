"""Issue 8, property 4 (pure functions): hypothesis on the portfolio rules and on scoring.

* ``assess_customer`` and ``assign_portfolio`` on any finite scores (probabilities in [0, 1],
  money any finite float, huge and negative included, NaN or None for a missing component):
  no exception, exactly one of Buttle's four quadrants per customer, and the single-customer
  path agrees with the frame path.
* ``score_matrix`` on any finite feature rows (numeric features any finite float or NaN,
  categorical codes known, unknown or NaN) with the session's trained champions:
  probabilities in [0, 1] (default probability NaN only without credit history), expected
  margin finite and >= 0, CLV finite.

Seeded (``derandomize``) and bounded so the file runs in a few seconds beyond the shared fixture.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crmscore.serving.policy import load_policy
from crmscore.serving.portfolio import (
    PROPENSITY_PREFIX,
    QUADRANTS,
    assess_customer,
    assign_portfolio,
    make_demo_scores,
    resolve_cutoffs,
)
from crmscore.serving.scoring import score_matrix

BOUNDED = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow])
POLICY = load_policy()
CUTOFFS = resolve_cutoffs(POLICY, make_demo_scores(500, random_state=3))
CATEGORIES = ("books", "electronics")

probability = st.one_of(st.floats(0.0, 1.0), st.just(math.nan), st.none())
money = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.just(math.nan), st.none())
grade = st.one_of(st.sampled_from(["A", "B", "C", "D"]), st.none())


@st.composite
def records(draw: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"customer_id": "C1"}
    if draw(st.booleans()):
        record["current_value"] = draw(money)
    else:
        record["margin_365d"], record["cost_to_serve_365d"] = draw(money), draw(money)
    record["clv"] = draw(money)
    for key in ("default_prob", "churn_prob"):
        if draw(st.booleans()):
            record[key] = draw(probability)
    if draw(st.booleans()):
        record["outstanding_balance"] = draw(money)
    for c in CATEGORIES:
        record[PROPENSITY_PREFIX + c] = draw(probability)
    if draw(st.booleans()):
        record["credit_grade"] = draw(grade)
    if draw(st.booleans()):
        record["is_reference_account"] = draw(st.booleans())
    return record


def _nan(value: Any) -> Any:
    return math.nan if value is None else value


@BOUNDED
@given(record=records())
def test_assess_customer_places_any_finite_customer_in_one_quadrant(record: dict[str, Any]) -> None:
    out = assess_customer(record, POLICY, CUTOFFS)
    assert out["quadrant"] in QUADRANTS
    for key, value in out.items():
        if isinstance(value, float):
            assert not math.isnan(value) or value is None  # NaN is reported as None
        if key.endswith("_prob") and value is not None:
            assert 0.0 <= value <= 1.0, (key, value)


@BOUNDED
@given(rows=st.lists(records(), min_size=1, max_size=8))
def test_assign_portfolio_agrees_with_assess_customer(rows: list[dict[str, Any]]) -> None:
    # a frame needs one layout: current_value given, propensities and the optional columns present
    columns = ["customer_id", "current_value", "clv", "default_prob", "churn_prob", "outstanding_balance",
               "is_reference_account",
               *(PROPENSITY_PREFIX + c for c in CATEGORIES)]
    uniform = []
    for i, r in enumerate(rows):
        current = r.get("current_value", math.nan) if "current_value" in r else math.nan
        uniform.append({c: _nan(r.get(c, math.nan)) for c in columns} | {"is_reference_account": bool(r.get("is_reference_account", False))} | {"customer_id": f"C{i}",
                                                                       "current_value": _nan(current)})
    frame = pd.DataFrame(uniform, columns=columns)
    placed = assign_portfolio(frame, POLICY, CUTOFFS)
    assert len(placed) == len(frame) and placed["quadrant"].notna().all()
    assert set(placed["quadrant"].astype(str)) <= set(QUADRANTS)
    for i, record in enumerate(uniform):
        assert assess_customer(record, POLICY, CUTOFFS)["quadrant"] == placed["quadrant"].iloc[i]
    # cut-offs resolved on such a portfolio are usable too, or refused with a clear message
    if frame["clv"].notna().any():
        with np.errstate(over="ignore"):  # means of huge values overflow to inf: still one quadrant
            assert set(assign_portfolio(frame, POLICY)["quadrant"].astype(str)) <= set(QUADRANTS)
    else:
        with pytest.raises(ValueError, match="no customer has a known future potential"):
            assign_portfolio(frame, POLICY)


@pytest.fixture(scope="module")
def models(rel_env: Any) -> Any:
    return rel_env.bundle.models  # the registered champions, as load_champions() returns them


def feature_rows(models: Any, n_max: int = 16) -> Any:
    columns = []
    for name in models.feature_names:
        if name in models.categorical_levels:
            k = len(models.categorical_levels[name])
            columns.append(st.one_of(st.integers(0, max(k - 1, 0)).map(float), st.just(math.nan),
                                     st.sampled_from([-1.0, float(k), 1e9])))
        else:
            columns.append(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.just(math.nan),
                                     st.floats(-1e3, 1e4)))
    row = st.tuples(*columns)
    return st.lists(row, min_size=1, max_size=n_max).map(lambda rows: np.array(rows, dtype=np.float64))


def test_score_matrix_on_any_finite_features(models: Any) -> None:
    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(X=feature_rows(models))
    def check(X: np.ndarray) -> None:
        out = score_matrix(models, X, num_threads=1)
        probabilities = ["churn_prob", *(k for k in out if k.startswith(PROPENSITY_PREFIX))]
        for key in probabilities:
            assert np.all((out[key] >= 0) & (out[key] <= 1)), (key, out[key])
        pd_ = out["default_prob"]
        known = ~np.isnan(pd_)
        assert np.all((pd_[known] >= 0) & (pd_[known] <= 1))
        assert np.all(np.isfinite(out["expected_margin"])) and np.all(out["expected_margin"] >= 0), \
            out["expected_margin"]
        assert np.all(np.isfinite(out["clv"])), out["clv"]

    check()
    assert hnp  # numpy strategies are available for future array properties
