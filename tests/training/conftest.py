"""Training fixtures: an MLflow tracking store in a temporary folder, and flat tables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def mlflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project folder with its own SQLite tracking file and models/ artefacts."""
    home = tmp_path_factory.mktemp("mlflow_home")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "CRMSCORE_HOME")}
    os.environ["CRMSCORE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
