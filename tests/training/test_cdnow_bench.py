"""Smoke tests of the CDNOW benchmark's helpers (benchmarks/cdnow.py) on tiny data.

The benchmark itself is not a test (it reads the whole CDNOW file and fits five models);
these check its pieces: the BG/NBD no-purchase probability (simulate and check), the fold
split, the measures, the goal verdicts and that cross-fitting never predicts a row with a
model that learnt its label.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "cdnow.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cdnow_bench", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def simulate_bgnbd(params: dict[str, float], ages: np.ndarray, horizon: float, seed: int):
    """BG/NBD histories (Fader, Hardie & Lee 2005): first purchase at 0, Poisson(lambda) repeat
    purchases, dropout with probability p right after each repeat purchase. Returns x, t_x
    over (0, age] and whether the customer bought nothing in (age, age + horizon]."""
    rng = np.random.default_rng(seed)
    n = ages.size
    lam = rng.gamma(params["r"], 1.0 / params["alpha"], n)
    p = rng.beta(params["a"], params["b"], n)
    now = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    x = np.zeros(n)
    t_x = np.zeros(n)
    quiet = np.ones(n, dtype=bool)
    while alive.any():
        now = np.where(alive, now + rng.exponential(1.0, n) / lam, now)
        alive &= now <= ages + horizon
        in_cal = alive & (now <= ages)
        x += in_cal
        t_x = np.where(in_cal, now, t_x)
        quiet &= ~(alive & (now > ages))
        alive &= rng.random(n) >= p
    return x, t_x, quiet


def test_bgnbd_no_purchase_probability_matches_simulation(bench):
    params = {"r": 0.5, "alpha": 5.0, "a": 0.8, "b": 2.5}
    ages = np.random.default_rng(1).uniform(20, 39, 40_000)
    x, t_x, quiet = simulate_bgnbd(params, ages, 39.0, seed=2)
    p0 = bench.bgnbd_probability_no_purchase(params, x, t_x, ages, 39.0)
    assert np.all((p0 >= 0) & (p0 <= 1))
    # the law of total probability, overall and within history groups
    assert p0.mean() == pytest.approx(quiet.mean(), abs=0.01)
    for group in (x == 0, (x >= 1) & (x <= 2), x >= 3):
        assert p0[group].mean() == pytest.approx(quiet[group].mean(), abs=0.02)


def test_bgnbd_no_purchase_probability_of_a_new_customer(bench):
    params = {"r": 0.3, "alpha": 7.0, "a": 0.7, "b": 2.4}
    p0 = bench.bgnbd_probability_no_purchase(
        params, np.array([0.0]), np.array([0.0]), np.array([0.0]), 39.0
    )
    assert p0[0] == pytest.approx((7.0 / 46.0) ** 0.3)


def test_assign_folds_is_seeded_and_balanced(bench):
    folds = bench.assign_folds(11, 2, 0)
    assert sorted(np.bincount(folds)) == [5, 6]
    assert np.array_equal(folds, bench.assign_folds(11, 2, 0))
    assert not np.array_equal(bench.assign_folds(1000, 2, 0), bench.assign_folds(1000, 2, 1))
    with pytest.raises(ValueError, match=r"^n_folds must be at least 2 for cross-fitting; got 1$"):
        bench.assign_folds(10, 1)


def test_measures_by_hand(bench):
    spend = np.array([0.0, 0.0, 10.0, 30.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    predicted = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    m = bench.spend_measures(spend, predicted)
    assert m["top10_capture"] == pytest.approx(0.75)  # the top customer holds 30 of 40
    assert m["top20_capture"] == pytest.approx(1.0)
    assert m["aggregate_error"] == pytest.approx(10.0 / 40.0 - 1.0)
    assert m["predicted_total"] == 10.0 and m["actual_total"] == 40.0
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((spend - predicted) ** 2)))
    churned = np.array([1, 1, 0, 0])
    assert bench.churn_measures(churned, np.array([0.9, 0.8, 0.2, 0.1]))["churn_auc"] == 1.0
    assert bench.churn_measures(churned, np.array([0.1, 0.2, 0.8, 0.9]))["churn_auc"] == 0.0
    calibrated = bench.churn_measures(
        churned, np.array([1.0, 1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0, 0.0])
    )
    assert calibrated["churn_brier"] == 0.0


@pytest.mark.parametrize(
    ("measure", "value", "expected"),
    [
        ("churn_auc", 0.785, "met"),
        ("churn_auc", 0.7849, "MISSED"),
        ("rmse", 90.0, "met"),
        ("rmse", 90.1, "MISSED"),
        ("aggregate_error", -0.03, "met"),
        ("aggregate_error", 0.031, "MISSED"),
        ("aggregate_error", float("nan"), "MISSED"),
        ("mae", 1.0, ""),
    ],
)
def test_goal_status(bench, measure, value, expected):
    assert bench.goal_status(measure, value) == expected


def test_cross_fit_never_predicts_a_row_from_its_own_label(bench):
    from crmscore.bundle import ModelKind

    rng = np.random.default_rng(0)
    n = 240  # 120 training rows a fold: above fit_table's minimum of 100
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i:04d}" for i in range(n)],
            "recency": rng.uniform(0, 100, n),
            "frequency": rng.poisson(2, n).astype(float),
        }
    )
    frame["label_churn"] = (rng.random(n) < 1 / (1 + np.exp(-(frame["recency"] - 50) / 20))).astype(
        float
    )
    folds = bench.assign_folds(n, 2, 0)
    features = ["recency", "frequency"]
    fit = bench.cross_fit(ModelKind.CHURN, frame, features, "label_churn", folds)
    assert np.isfinite(fit.predictions).all()
    assert [f["test_rows"] for f in fit.folds] == [120, 120]
    # scramble fold 0's labels: fold 0's predictions come from fold 1's model and must not move
    scrambled = frame.copy()
    held = folds == 0
    scrambled.loc[held, "label_churn"] = 1.0 - scrambled.loc[held, "label_churn"]
    again = bench.cross_fit(ModelKind.CHURN, scrambled, features, "label_churn", folds)
    np.testing.assert_array_equal(again.predictions[held], fit.predictions[held])
    assert not np.array_equal(again.predictions[~held], fit.predictions[~held])
