"""The model bundle's maths: scorecard, CLV, calibration, reasons, persistence."""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from crmscore.bundle import Calibrator, ClvConfig, ModelBundle, ModelKind, ScorecardConfig


def test_scorecard_anchors_and_doubling() -> None:
    sc = ScorecardConfig()  # 600 points at 50:1, 20 points to double the odds
    pd_at_base = 1 / 51
    assert sc.points(np.array([pd_at_base]))[0] == pytest.approx(600.0)
    pd_double = 1 / 101  # odds 100:1
    assert sc.points(np.array([pd_double]))[0] == pytest.approx(620.0)
    points = sc.points(np.linspace(0.001, 0.9, 50))
    assert np.all(np.diff(points) < 0)  # higher default probability, fewer points


def test_scorecard_grades_at_boundaries() -> None:
    sc = ScorecardConfig()
    grades = sc.grade(np.array([700.0, 680.0, 679.9, 640.0, 600.0, 560.0, 559.0, np.nan]))
    assert grades.tolist() == ["A", "A", "B", "B", "C", "D", "E", None]


def test_clv_matches_the_sum_written_out() -> None:
    cfg = ClvConfig(years=2, discount_rate=0.1)
    m, churn, h = np.array([100.0, 0.0, 50.0]), np.array([0.2, 0.5, 1.0]), 91
    periods = round(2 * 365 / h)
    expected = [
        sum(mi * (1 - ci) ** k / 1.1 ** ((k + 1) * h / 365) for k in range(periods))
        for mi, ci in zip(m, churn, strict=True)
    ]
    np.testing.assert_allclose(cfg.clv(m, churn, h), expected)
    assert cfg.clv(np.array([100.0]), np.array([0.0]), 365)[0] == pytest.approx(
        100 / 1.1 + 100 / 1.1**2
    )


def test_calibrators_are_monotone() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-(0.5 * raw - 1)))).astype(float)
    for n in (5000, 300):  # beta, then Platt on a small set
        cal = Calibrator.fit(raw[:n], y[:n])
        assert cal.method == ("beta" if n == 5000 else "platt")
        grid = np.linspace(-4, 4, 200)
        p = cal.apply(grid)
        # strictly increasing: no two customers the booster ranked apart get the same score
        assert np.all(np.diff(p) > 0) and p.min() > 0 and p.max() < 1


def test_beta_calibration_recovers_a_distorted_probability_and_keeps_the_ranking() -> None:
    """A booster's raw score that is over-confident and shifted (what up-weighting rare
    positives does): beta calibration restores the true probability on fresh rows, and the
    calibrated score ranks rows exactly as the raw score does (same AUC, no ties)."""
    from sklearn.metrics import roc_auc_score

    from crmscore.training.evaluate import expected_calibration_error

    rng = np.random.default_rng(3)
    true_logit = rng.normal(-3.0, 1.5, size=60_000)
    y = (rng.random(true_logit.size) < 1 / (1 + np.exp(-true_logit))).astype(float)
    raw = 1.6 * true_logit + 2.0  # over-confident and shifted by the class weight
    fit, fresh = slice(0, 30_000), slice(30_000, None)
    cal = Calibrator.fit(raw[fit], y[fit])
    assert cal.method == "beta"
    p = cal.apply(raw[fresh])
    p_true = 1 / (1 + np.exp(-true_logit[fresh]))
    assert np.abs(p - p_true).max() < 0.03
    assert expected_calibration_error(y[fresh], p) < 0.01
    assert expected_calibration_error(y[fresh], 1 / (1 + np.exp(-raw[fresh]))) > 0.05
    assert roc_auc_score(y[fresh], p) == pytest.approx(roc_auc_score(y[fresh], raw[fresh]), abs=1e-12)
    assert np.unique(p).size == np.unique(raw[fresh]).size


def test_isotonic_calibrators_of_older_bundles_still_apply() -> None:
    cal = Calibrator("isotonic", knots_x=[-1.0, 0.0, 1.0], knots_y=[0.1, 0.4, 0.8])
    np.testing.assert_allclose(cal.apply(np.array([-2.0, -0.5, 0.5, 3.0])), [0.1, 0.25, 0.6, 0.8])


def small_bundle(kind: ModelKind = ModelKind.CHURN) -> tuple[ModelBundle, pd.DataFrame]:
    rng = np.random.default_rng(1)
    n = 600
    frame = pd.DataFrame({"x": rng.normal(size=n), "segment": pd.Categorical(rng.choice(["B2B", "B2C"], n))})
    y = (frame["x"] + (frame["segment"] == "B2B") + rng.normal(size=n) > 0).astype(float)
    bundle = ModelBundle(kind, ["x", "segment"], {"segment": ["B2B", "B2C"]}, None, [kind.value])  # type: ignore[arg-type]
    X = bundle.encode(frame)
    data = lgb.Dataset(X, y, feature_name=["x", "segment"], categorical_feature=[1])
    bundle.booster = lgb.train({"objective": "binary", "verbosity": -1, "num_leaves": 7}, data, 30)
    bundle.calibrators[kind.value] = Calibrator.fit(bundle.raw(X), y)
    return bundle, frame


def test_encode_maps_unknown_levels_to_missing() -> None:
    bundle, _ = small_bundle()
    frame = pd.DataFrame({"x": [1.0, 2.0], "segment": ["B2C", "Partner"]})
    X = bundle.encode(frame)
    assert X[0, 1] == 1.0 and math.isnan(X[1, 1])
    with pytest.raises(KeyError, match="features missing for the churn model: segment"):
        bundle.encode(frame[["x"]])


def test_contributions_sum_to_the_raw_score_and_reasons_are_stable() -> None:
    bundle, frame = small_bundle()
    X = bundle.encode(frame.head(20))
    contrib = bundle.contributions(X)
    np.testing.assert_allclose(contrib.sum(axis=1), bundle.raw(X), atol=1e-9)
    reasons = bundle.reasons(X, top=2)
    assert all(1 <= len(r) <= 2 for r in reasons)
    first = reasons[0][0]
    assert first.code == f"CHN.{first.feature}.{first.direction.upper()}"
    assert ("raises churn risk" in first.text) == (first.contribution > 0)


def test_reason_texts_read_for_people() -> None:
    """The text shows a number to two decimals without trailing zeros ("= 25", not "= 25.0";
    "= 846" for 845.9987 days), three significant digits below 1, a level by name, and a
    missing value as missing; the ``value`` field keeps the number."""
    bundle, frame = small_bundle()
    bundle.descriptions = {"x": "Orders in the last 90 days", "segment": "Customer segment"}
    frame = pd.DataFrame({"x": [25.0, 5.76861, 2073.734, 0.1254, np.nan, 845.9987, 0.0],
                          "segment": ["B2B", "B2C", None, "B2B", "B2C", "B2C", "B2B"]})
    reasons = bundle.reasons(bundle.encode(frame), top=2)
    text = {(i, r.feature): r.text.rsplit(":", 1)[0] for i, row in enumerate(reasons) for r in row}
    assert text[0, "x"] == "Orders in the last 90 days = 25"
    assert text[1, "x"] == "Orders in the last 90 days = 5.77"
    assert text[2, "x"] == "Orders in the last 90 days = 2,073.73"
    assert text[3, "x"] == "Orders in the last 90 days = 0.125"
    assert text[4, "x"] == "Orders in the last 90 days is missing"
    assert text[5, "x"] == "Orders in the last 90 days = 846"
    assert text[6, "x"] == "Orders in the last 90 days = 0"
    assert text[0, "segment"] == "Customer segment = B2B"
    assert text[2, "segment"] == "Customer segment is missing"
    assert [r.value for r in reasons[1] if r.feature == "x"] == [5.7686]


def test_save_load_round_trip(tmp_path) -> None:
    bundle, frame = small_bundle(ModelKind.CREDIT_RISK)
    bundle.scorecard = ScorecardConfig()
    loaded = ModelBundle.load(bundle.save(tmp_path / "b"))
    X = bundle.encode(frame)
    np.testing.assert_array_equal(loaded.predict(X), bundle.predict(X))
    assert loaded.scorecard == bundle.scorecard
    with pytest.raises(FileNotFoundError, match="is not a model bundle"):
        ModelBundle.load(tmp_path)


def test_unknown_kind_is_named() -> None:
    with pytest.raises(ValueError, match=r"^unknown model kind 'lifetime'; expected one of churn, propensity, credit_risk, expected_margin$"):
        ModelKind.parse("lifetime")


# --- propensity: the sliced expand and one-row TreeSHAP against the simple versions -----------


def small_propensity_bundle() -> tuple[ModelBundle, np.ndarray]:
    """Three categories, a target-specific feature (absent for the third category)."""
    rng = np.random.default_rng(3)
    n, targets = 400, ["a", "b", "c"]
    frame = pd.DataFrame({
        "x": rng.normal(size=n), "share_a": rng.random(n), "share_b": rng.random(n),
        "segment": pd.Categorical(rng.choice(["B2B", "B2C"], n)),
    })
    frame.loc[::7, "x"] = np.nan
    bundle = ModelBundle(ModelKind.PROPENSITY, ["x", "share_a", "share_b", "segment"], {"segment": ["B2B", "B2C"]},
                         None, targets, target_features={"target_share": ["share_a", "share_b", None]})  # type: ignore[arg-type]
    X = bundle.encode(frame)
    Z = reference_expand(bundle, X)
    y = (Z[:, 0] + Z[:, 5] * 2 - Z[:, 4] * 0.5 + rng.normal(size=len(Z)) > 0.5).astype(float)
    data = lgb.Dataset(Z, y, feature_name=bundle.booster_features, categorical_feature=[3, 4])
    bundle.booster = lgb.train({"objective": "binary", "verbosity": -1, "num_leaves": 7}, data, 25)
    raw = bundle.booster.predict(Z, raw_score=True).reshape(n, 3)
    for j, t in enumerate(targets):
        bundle.calibrators[t] = Calibrator.fit(raw[:, j], y[j::3])
    return bundle, X


def reference_expand(bundle: ModelBundle, X: np.ndarray) -> np.ndarray:
    """The obvious expansion: every customer row repeated per category, then the category code
    and the category's own target-specific column."""
    n, k = X.shape[0], len(bundle.targets)
    extra = np.full((n * k, 1 + len(bundle.target_features)), np.nan)
    extra[:, 0] = np.tile(np.arange(k, dtype=np.float64), n)
    for f, columns in enumerate(bundle.target_features.values(), start=1):
        for j, column in enumerate(columns):
            if column is not None:
                extra[j::k, f] = X[:, bundle.feature_names.index(column)]
    return np.hstack([np.repeat(X, k, axis=0), extra])


def test_sliced_expand_and_raw_equal_the_simple_expansion(monkeypatch) -> None:
    import crmscore.bundle as bundle_module

    bundle, X = small_propensity_bundle()
    expected = reference_expand(bundle, X)
    np.testing.assert_array_equal(bundle.expand(X), expected)
    reference_raw = bundle.booster.predict(expected, raw_score=True).reshape(X.shape[0], 3)
    for step in (1, 7, 400, 10_000):  # one customer a slice, a ragged last slice, one slice, more than n
        monkeypatch.setattr(bundle_module, "EXPAND_SLICE", step)
        np.testing.assert_array_equal(bundle.raw(X), reference_raw)
    np.testing.assert_array_equal(bundle.raw(X[:1]), reference_raw[:1])
    with pytest.raises(ValueError, match=r"^out must be a float64 array of shape \(6, 6\); got float64 \(5, 6\)$"):
        bundle.expand(X[:2], out=np.empty((5, 6)))


def test_one_row_treeshap_equals_the_chosen_rows_of_all_categories() -> None:
    bundle, X = small_propensity_bundle()
    n = X.shape[0]
    every = bundle.contributions(X)  # (n, 3, m + 1): all categories
    chosen = np.argmax(bundle.predict(X), axis=1)
    np.testing.assert_array_equal(bundle.top_targets(X), chosen)
    np.testing.assert_array_equal(bundle.expand_rows(X, chosen), reference_expand(bundle, X)[np.arange(n) * 3 + chosen])
    one = bundle.contributions(X, target=chosen)
    np.testing.assert_array_equal(one, every[np.arange(n), chosen])
    assert bundle.reasons(X, contributions=one, target=chosen) == bundle.reasons(X, contributions=every)
    assert bundle.reasons(X) == bundle.reasons(X, contributions=every)
    assert bundle.reasons(X, target=2) == bundle.reasons(X, contributions=every, target=2)
    with pytest.raises(ValueError, match=r"^propensity contributions of one row per customer need the target they explain$"):
        bundle.reasons(X, contributions=one)
