"""Code tests of the evaluation metrics and plots.

Each vectorised metric is checked against a slow, obviously correct version written here with
plain loops, on seeded random data; small hand-computed cases pin the definitions down.
"""

from __future__ import annotations

import importlib
import math
import sys

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import mean_absolute_error, r2_score, roc_auc_score

from crmscore.training import evaluate as ev

# --------------------------------------------------------------------------- slow references


def slow_equal_mass_bin(values: list[float], i: int, n_bins: int) -> int:
    """Bin of row i: floor(n_bins * (rows strictly before it) / n), counted one by one."""
    ahead = 0
    for v in values:
        if v < values[i]:
            ahead += 1
    return (n_bins * ahead) // len(values)


def slow_ece(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    values = [float(v) for v in p]
    members: dict[int, list[int]] = {}
    for i in range(len(values)):
        members.setdefault(slow_equal_mass_bin(values, i, n_bins), []).append(i)
    ece = 0.0
    for rows in members.values():
        mean_y = sum(float(y[i]) for i in rows) / len(rows)
        mean_p = sum(float(p[i]) for i in rows) / len(rows)
        ece += len(rows) / len(values) * abs(mean_y - mean_p)
    return ece


def slow_ks(y: np.ndarray, score: np.ndarray) -> float:
    pos = [float(s) for s, t in zip(score, y, strict=True) if t == 1]
    neg = [float(s) for s, t in zip(score, y, strict=True) if t == 0]
    best = 0.0
    for t in score:
        cdf_pos = sum(1 for s in pos if s <= t) / len(pos)
        cdf_neg = sum(1 for s in neg if s <= t) / len(neg)
        best = max(best, abs(cdf_pos - cdf_neg))
    return best


def slow_top_share(y: np.ndarray, score: np.ndarray, fraction: float) -> float:
    """Top k rows by score (no ties in the random data), summed one by one."""
    k = max(1, int(math.floor(fraction * len(y) + 0.5)))
    ranked = sorted(range(len(y)), key=lambda i: -score[i])
    return sum(float(y[i]) for i in ranked[:k]) / float(sum(y))


def slow_lift_table(y: np.ndarray, score: np.ndarray, n_bins: int) -> pd.DataFrame:
    negated = [-float(s) for s in score]  # decile 1 = highest scores
    deciles: dict[int, list[int]] = {}
    for i in range(len(y)):
        deciles.setdefault(slow_equal_mass_bin(negated, i, n_bins) + 1, []).append(i)
    total = float(sum(y))
    overall_mean = total / len(y)
    records, seen_rows, seen_target = [], 0, 0.0
    for decile in sorted(deciles):
        rows = deciles[decile]
        target = sum(float(y[i]) for i in rows)
        seen_rows += len(rows)
        seen_target += target
        records.append(
            {
                "decile": decile,
                "count": len(rows),
                "score_min": min(float(score[i]) for i in rows),
                "score_max": max(float(score[i]) for i in rows),
                "mean_score": sum(float(score[i]) for i in rows) / len(rows),
                "target_sum": target,
                "rate": target / len(rows),
                "lift": target / len(rows) / overall_mean,
                "cum_share": seen_rows / len(y),
                "cum_gain": seen_target / total,
            }
        )
    return pd.DataFrame.from_records(records)


@pytest.fixture(params=[(1_003, 10), (500, 7), (37, 10), (8, 20)], ids=lambda c: f"n{c[0]}-b{c[1]}")
def binary_data(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray, int]:
    n, n_bins = request.param
    rng = np.random.default_rng(n)
    p = rng.beta(1.2, 4.0, size=n)
    y = (rng.random(n) < np.clip(p * 1.3, 0, 1)).astype(int)
    y[:2] = [0, 1]  # both classes, whatever the draw
    return y, p, n_bins


def spend_data(n: int = 800, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Zero-inflated spend and a noisy prediction of it."""
    rng = np.random.default_rng(seed)
    expected = rng.gamma(0.8, 50.0, size=n)
    y = np.where(rng.random(n) < 0.4, 0.0, rng.gamma(2.0, expected / 2.0))
    pred = expected * rng.lognormal(0.0, 0.3, size=n)
    return y, pred


# --------------------------------------------------------------------------- ECE


def test_ece_matches_slow_reference(binary_data: tuple[np.ndarray, np.ndarray, int]) -> None:
    y, p, n_bins = binary_data
    assert ev.expected_calibration_error(y, p, n_bins=n_bins) == pytest.approx(
        slow_ece(y, p, n_bins), abs=1e-12
    )


def test_ece_matches_slow_reference_with_ties() -> None:
    rng = np.random.default_rng(11)
    p = np.round(rng.random(300), 1)  # 11 distinct values: bins must keep ties together
    y = (rng.random(300) < p).astype(int)
    assert ev.expected_calibration_error(y, p) == pytest.approx(slow_ece(y, p, 10), abs=1e-12)


def test_ece_is_zero_on_perfectly_calibrated_bins() -> None:
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0, 1, 1, 0, 1]
    assert ev.expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.0, abs=1e-15)


def test_ece_by_hand() -> None:
    # bin 1: p 0.1, 0.2 (mean 0.15), y 0, 1 (rate 0.5) -> gap 0.35
    # bin 2: p 0.8, 0.9 (mean 0.85), y 1, 1 (rate 1.0) -> gap 0.15; ECE = (0.35 + 0.15) / 2
    assert ev.expected_calibration_error([0, 1, 1, 1], [0.1, 0.2, 0.8, 0.9], n_bins=2) == (
        pytest.approx(0.25)
    )


def test_calibration_table_keeps_ties_in_one_bin() -> None:
    table = ev.calibration_table([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.9], n_bins=2)
    assert table["count"].tolist() == [3, 1]
    assert table["mean_pred"].tolist() == pytest.approx([0.5, 0.9])
    assert table["observed_rate"].tolist() == pytest.approx([1 / 3, 1.0])


# --------------------------------------------------------------------------- KS, AUC, Gini


def test_ks_by_hand_on_four_points() -> None:
    # positives score 0.35, 0.8; negatives 0.1, 0.4. At t = 0.1 F0 = 1/2, F1 = 0;
    # at t = 0.4 F0 = 1, F1 = 1/2: KS = 0.5 (and AUC = 3/4 pairs ordered right).
    y, score = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert ev.ks_statistic(y, score) == pytest.approx(0.5)
    metrics = ev.binary_metrics(y, score)
    assert metrics["ks"] == pytest.approx(0.5)
    assert metrics["auc"] == pytest.approx(0.75)


def test_ks_matches_slow_reference_and_scipy(
    binary_data: tuple[np.ndarray, np.ndarray, int],
) -> None:
    y, p, _ = binary_data
    fast = ev.ks_statistic(y, p)
    assert fast == pytest.approx(slow_ks(y, p), abs=1e-12)
    assert fast == pytest.approx(stats.ks_2samp(p[y == 1], p[y == 0]).statistic, abs=1e-12)


def test_ks_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(5)
    score = rng.integers(0, 8, size=400).astype(float)
    y = (rng.random(400) < score / 10).astype(int)
    expected = stats.ks_2samp(score[y == 1], score[y == 0]).statistic
    assert ev.ks_statistic(y, score) == pytest.approx(expected, abs=1e-12)


def test_gini_is_twice_auc_minus_one(binary_data: tuple[np.ndarray, np.ndarray, int]) -> None:
    y, p, _ = binary_data
    metrics = ev.binary_metrics(y, p)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p))
    assert metrics["gini"] == pytest.approx(2 * metrics["auc"] - 1)


# --------------------------------------------------------------------------- capture and lift


def test_top_share_matches_slow_reference() -> None:
    y, pred = spend_data()
    for fraction in (0.1, 0.2, 0.33, 1.0):
        assert ev.top_share(y, pred, fraction=fraction) == pytest.approx(
            slow_top_share(y, pred, fraction), abs=1e-12
        )


def test_capture_by_hand_on_five_values() -> None:
    y = [10.0, 0.0, 5.0, 3.0, 2.0]  # total 20
    pred = [0.9, 0.1, 0.5, 0.7, 0.3]
    assert ev.top_share(y, pred, fraction=0.2) == pytest.approx(10 / 20)  # 1 row: 10
    assert ev.top_share(y, pred, fraction=0.4) == pytest.approx(13 / 20)  # 2 rows: 10 + 3
    metrics = ev.regression_metrics(y, pred)
    assert metrics["top20_capture"] == pytest.approx(0.5)
    assert metrics["top10_capture"] == pytest.approx(0.5)  # round(0.5) -> at least 1 row


def test_capture_shares_tied_places() -> None:
    y = [10.0, 0.0, 5.0, 3.0, 2.0]
    assert ev.top_share(y, [1.0] * 5, fraction=0.2) == pytest.approx(0.2)  # random baseline
    # top 2 rows: 10 for sure, then one place shared by the three rows tied at 0.5
    assert ev.top_share(y, [0.9, 0.5, 0.5, 0.5, 0.1], fraction=0.4) == pytest.approx(
        (10 + (0 + 5 + 3) / 3) / 20
    )


@pytest.mark.parametrize("kind", ["binary", "continuous", "ties"])
def test_lift_table_matches_slow_reference(kind: str) -> None:
    rng = np.random.default_rng(9)
    if kind == "continuous":
        y, score = spend_data(n=503)
    else:
        score = rng.random(503)
        if kind == "ties":
            score = np.round(score * 6)  # 7 distinct scores: fewer than 10 deciles survive
        y = (rng.random(503) < 0.3).astype(float)
    fast = ev.lift_table(y, score)
    slow = slow_lift_table(y, score, 10)
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False, rtol=1e-12)
    assert fast["count"].sum() == len(y)
    assert fast["cum_gain"].iloc[-1] == pytest.approx(1.0)


def test_lift_table_by_hand() -> None:
    table = ev.lift_table([1, 0, 1, 0], [0.9, 0.8, 0.2, 0.1], n_bins=2)
    assert table["decile"].tolist() == [1, 2]
    assert table["target_sum"].tolist() == [1, 1]
    assert table["lift"].tolist() == pytest.approx([1.0, 1.0])
    assert table["cum_gain"].tolist() == pytest.approx([0.5, 1.0])


def test_binary_top_decile_figures_agree_with_top_share() -> None:
    rng = np.random.default_rng(2)
    p = rng.random(1_000)
    y = (rng.random(1_000) < p).astype(int)
    metrics = ev.binary_metrics(y, p)
    assert metrics["gain_top_decile"] == pytest.approx(ev.top_share(y, p, fraction=0.1))
    assert metrics["gain_top_20pct"] == pytest.approx(ev.top_share(y, p, fraction=0.2))
    top = np.argsort(-p)[:100]
    assert metrics["lift_top_decile"] == pytest.approx(y[top].mean() / y.mean())


# --------------------------------------------------------------------------- metric sets


def test_binary_metrics_keys_and_simple_values() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0])
    p = np.array([0.1, 0.3, 0.7, 0.4, 0.2, 0.9, 0.6, 0.05])
    metrics = ev.binary_metrics(y, p)
    assert set(metrics) == {
        "auc",
        "pr_auc",
        "brier",
        "ece",
        "log_loss",
        "base_rate",
        "mean_pred",
        "lift_top_decile",
        "gain_top_decile",
        "gain_top_20pct",
        "ks",
        "gini",
    }
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["base_rate"] == pytest.approx(3 / 8)
    assert metrics["mean_pred"] == pytest.approx(p.mean())
    assert metrics["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert metrics["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_regression_metrics_against_sklearn_and_scipy() -> None:
    y, pred = spend_data()
    metrics = ev.regression_metrics(y, pred)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert metrics["mae"] == pytest.approx(mean_absolute_error(y, pred))
    assert metrics["r2"] == pytest.approx(r2_score(y, pred))
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(y, pred).statistic)
    assert metrics["aggregate_error"] == pytest.approx(pred.sum() / y.sum() - 1)


def test_regression_metrics_of_a_margin_netting_to_a_loss_leave_out_the_shares() -> None:
    # losses and gains summing to -2: errors and ranks are defined, shares of the total are not
    y, pred = np.array([1.0, -3.0, 0.5, -0.5]), np.array([1.5, -2.0, 0.25, -1.0])
    metrics = ev.regression_metrics(y, pred)
    assert set(metrics) == {"rmse", "mae", "spearman", "r2"}
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert metrics["spearman"] == pytest.approx(1.0)
    assert set(ev.regression_metrics(-y, -pred)) >= {"top20_capture", "top10_capture", "aggregate_error"}


def test_regression_metrics_constant_prediction_has_no_rank_correlation() -> None:
    metrics = ev.regression_metrics([1.0, 2.0, 3.0, 4.0, 5.0], [3.0] * 5)
    assert math.isnan(metrics["spearman"])
    assert metrics["top20_capture"] == pytest.approx(0.2)
    assert metrics["aggregate_error"] == pytest.approx(0.0)


def test_oracle_ratios() -> None:
    rng = np.random.default_rng(4)
    p_true = rng.beta(2, 5, size=20_000)
    y = (rng.random(20_000) < p_true).astype(int)
    same = ev.oracle_ratios(y, p_true, p_true)
    assert same["auc_ratio"] == pytest.approx(1.0)
    assert same["ece_truth"] < 0.02  # the truth is calibrated up to sampling noise
    noisy = ev.oracle_ratios(y, np.clip(p_true + rng.normal(0, 0.1, 20_000), 0, 1), p_true)
    assert noisy["auc_ratio"] < 1.0
    assert noisy["auc_ratio"] == pytest.approx(noisy["auc_model"] / noisy["auc_truth"])


def test_regression_oracle_ratio_by_hand() -> None:
    out = ev.regression_oracle_ratio([0.0, 0.0, 0.0, 0.0], [2.0, 2.0, -2.0, -2.0], [1.0] * 4)
    assert out == pytest.approx({"rmse_ratio": 2.0, "rmse_model": 2.0, "rmse_truth": 1.0})


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        ([0, 0, 0], "y_true has a single class (all 0): AUC is undefined"),
        ([1, 1, 1], "y_true has a single class (all 1): AUC is undefined"),
    ],
)
def test_single_class_is_a_clear_error(y: list[int], expected: str) -> None:
    with pytest.raises(ValueError) as info:
        ev.binary_metrics(y, [0.2, 0.5, 0.7])
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda: ev.ks_statistic([1, 1], [0.1, 0.2]),
            "y_true has a single class (all 1): KS is undefined",
        ),
        (
            lambda: ev.binary_metrics([0, 1], [0.1]),
            "y_true and p must have the same length; got 2 and 1",
        ),
        (
            lambda: ev.binary_metrics([0, 2, 1], [0.1, 0.2, 0.3]),
            "y_true must hold 0/1 labels; got other values: 2",
        ),
        (
            lambda: ev.binary_metrics([0, 1], [-0.1, 1.2]),
            "p must be probabilities in [0, 1]; got values from -0.1 to 1.2",
        ),
        (
            lambda: ev.binary_metrics([0, 1], [0.1, float("nan")]),
            "p has 1 NaN or infinite values; every value must be finite",
        ),
        (lambda: ev.binary_metrics([], []), "y_true is empty; metrics need at least one row"),
        (
            lambda: ev.expected_calibration_error([0, 1], [0.1, 0.2], n_bins=0),
            "n_bins must be an integer >= 1; got 0",
        ),
        (
            lambda: ev.top_share([1.0, 2.0], [1.0, 2.0], fraction=0.0),
            "fraction must be in (0, 1]; got 0.0",
        ),
        (
            lambda: ev.lift_table([0, 0], [0.1, 0.2]),
            "y_true sums to 0; lift_table needs a positive total of the target",
        ),
        (
            lambda: ev.regression_oracle_ratio([1.0, 2.0], [1.0, 1.0], [1.0, 2.0]),
            "pred_true equals y_true on every row (RMSE 0): rmse_ratio is undefined",
        ),
        (
            lambda: ev.regression_metrics([[1.0, 2.0]], [[1.0, 2.0]]),
            "y_true must be 1-D; got shape (1, 2)",
        ),
    ],
)
def test_bad_input_messages(call, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == expected


# --------------------------------------------------------------------------- plots


def _plots() -> list[tuple[str, Figure]]:
    rng = np.random.default_rng(8)
    p = rng.beta(1.5, 5, size=2_000)
    y = (rng.random(2_000) < p).astype(int)
    spend, pred = spend_data()
    return [
        ("calibration", ev.plot_calibration(y, p, "Churn - calibration (validation)")),
        ("gain", ev.plot_gain(y, p, "Churn - gain and lift (validation)")),
        ("gain_value", ev.plot_gain(spend, pred, "Margin - gain (validation)")),
        ("roc", ev.plot_roc(y, p, "Churn - ROC (validation)")),
        ("ks", ev.plot_ks(y, p, "Credit risk - KS (validation)")),
        (
            "pred_vs_actual",
            ev.plot_predicted_vs_actual(
                spend, pred, "Margin - predicted vs actual", unit="currency"
            ),
        ),
    ]


def test_every_plot_saves_a_png(tmp_path) -> None:
    for name, fig in _plots():
        assert isinstance(fig, Figure), name
        assert fig.get_suptitle(), name
        for ax in fig.axes:
            assert ax.get_xlabel() or ax.get_shared_x_axes().get_siblings(ax) != [ax], name
            assert ax.get_ylabel(), name
        path = ev.save_figure(fig, tmp_path / "plots" / f"{name}.png")
        assert path.stat().st_size > 0
        height, width, channels = mpimg.imread(path).shape
        assert height >= 400 and width >= 600 and channels in (3, 4), name


def test_save_figure_wants_png(tmp_path) -> None:
    with pytest.raises(ValueError) as info:
        ev.save_figure(Figure(), tmp_path / "plot.jpg")
    assert str(info.value) == f"path must end in .png; got {str(tmp_path / 'plot.jpg')!r}"


def test_importing_touches_no_pyplot(monkeypatch: pytest.MonkeyPatch) -> None:
    # run the module body again with pyplot unloaded: it must not come back
    for name in ("crmscore.training.evaluate", "matplotlib.pyplot"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.import_module("crmscore.training.evaluate")
    assert "matplotlib.pyplot" not in sys.modules
