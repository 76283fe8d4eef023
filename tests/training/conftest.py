"""Training fixtures: flat customer tables."""

from __future__ import annotations

from datetime import date

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
