"""The fit recipe's handling of the calendar month (training/train.py, ``CODED_CATEGORIES``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from crmscore.bundle import ModelKind
from crmscore.training.config import TrainConfig
from crmscore.training.train import (
    FeatureSet,
    booster_categorical,
    fit_bundle,
    fit_bundle_cv,
    new_bundle,
)

WINTER = (12, 1, 2)


def _seasonal_frame(n: int, seed: int) -> pd.DataFrame:
    """Churn that is higher in winter, a season no single threshold on the month isolates."""
    rng = np.random.default_rng(seed)
    month = rng.integers(1, 13, n)
    x = rng.normal(size=n)
    logit = 0.8 * x - 0.8 + 1.6 * np.isin(month, WINTER)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return pd.DataFrame({"as_of_month": month, "x": x, "label_churn": y})


def _month_splits(booster) -> list[str]:
    """decision_type of every split on as_of_month in the booster's trees."""
    model = booster.dump_model()
    index = model["feature_names"].index("as_of_month")
    found: list[str] = []

    def walk(node: dict) -> None:
        if "split_feature" not in node:
            return
        if node["split_feature"] == index:
            found.append(node["decision_type"])
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in model["tree_info"]:
        walk(tree["tree_structure"])
    return found


def test_the_calendar_month_is_split_as_a_category() -> None:
    features = FeatureSet(["as_of_month", "x"], {})
    config = TrainConfig()
    bundle = fit_bundle(ModelKind.CHURN, _seasonal_frame(8000, 0), _seasonal_frame(4000, 1), features, config)
    splits = _month_splits(bundle.booster)
    assert splits and set(splits) == {"=="}  # category splits only, no thresholds
    # the season is learnt as a set of months: at the same x, every winter month (December and
    # January, far apart as numbers) scores above every other month
    grid = pd.DataFrame({"as_of_month": np.arange(1, 13), "x": np.zeros(12)})
    p = pd.Series(bundle.predict(bundle.encode(grid)), index=grid["as_of_month"])
    winter = p.index.isin(WINTER)
    assert p[winter].min() > p[~winter].max()


def test_booster_categorical_lists_the_month_only_when_read() -> None:
    config = TrainConfig()
    with_month = new_bundle(ModelKind.CHURN, FeatureSet(["segment", "as_of_month", "x"], {"segment": ["a", "b"]}), config)
    assert booster_categorical(with_month) == ["segment", "as_of_month"]
    # a flat table (crmscore fit-table) has no as-of and no month column: nothing changes
    flat = new_bundle(ModelKind.CHURN, FeatureSet(["segment", "x"], {"segment": ["a", "b"]}), config)
    assert booster_categorical(flat) == ["segment"]


def test_cross_validated_fit_splits_the_month_as_a_category() -> None:
    frame = _seasonal_frame(6000, 3)
    bundle, oof, y = fit_bundle_cv(ModelKind.CHURN, frame, FeatureSet(["as_of_month", "x"], {}), TrainConfig(),
                                   label="label_churn", n_folds=3)
    assert set(_month_splits(bundle.booster)) == {"=="}
    assert oof.shape == y.shape
