"""Training fixtures: flat customer tables."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def customer_table(base_small) -> pd.DataFrame:
    """A data scientist's flat table: one row per customer, features and outcomes."""
    from crmscore.features.pipeline import build_snapshot

    snap = build_snapshot(base_small, date(2024, 7, 1), 90)
    table = snap.drop(columns=[c for c in snap.columns if c.startswith("label_purchase_")])
    table = table.rename(columns={"label_churn": "churned", "label_default": "defaulted", "label_margin": "margin_next_90d"})
    table["status"] = table["churned"].map({1.0: "lapsed", 0.0: "active"})
    for col in table.columns:
        if isinstance(table[col].dtype, pd.CategoricalDtype):
            table[col] = table[col].astype(object)
    table["customer_id"] = table["customer_id"].astype(str)
    return table


def _worst_step(bundle, X: np.ndarray, feature: str, sign: int, grid: np.ndarray) -> float:
    """Set ``feature`` of every row of ``X`` to each value of ``grid`` in turn: the largest move
    of a row's score against ``sign`` (+1: the score may only rise with the feature) from one
    value to the next, as a number <= 0 (0: it never moved against its constraint)."""
    j = bundle.feature_names.index(feature)
    scores = []
    for value in grid:
        Xv = X.copy()
        Xv[:, j] = value
        scores.append(bundle.predict(Xv))
    return float(min(0.0, (np.diff(np.column_stack(scores), axis=1) * sign).min()))


@pytest.fixture(scope="session")
def worst_step() -> Callable[..., float]:
    """``worst_step(bundle, X, feature, sign, grid)``: how far a score moves against a monotone
    constraint when the feature sweeps ``grid`` (0 when it never does)."""
    return _worst_step
