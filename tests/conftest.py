"""Shared fixtures: small seeded bases and a trained, promoted model set, built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crmscore.features.io import Base
from crmscore.features.synthetic import SyntheticBase, generate_base


@pytest.fixture(scope="session")
def synthetic_small() -> SyntheticBase:
    """2,000 synthetic customers, seed 7 (tables, and the traits behind them)."""
    return generate_base(2_000, seed=7)


@pytest.fixture(scope="session")
def base_small(synthetic_small: SyntheticBase) -> Base:
    """The same 2,000 customers as typed frames, per the data contract."""
    return synthetic_small.to_base()


@pytest.fixture(scope="session")
def mlflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project folder with its own SQLite tracking file and models/ artefacts, for the session."""
    home = tmp_path_factory.mktemp("mlflow_home")
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "CRMSCORE_HOME")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["CRMSCORE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass(frozen=True)
class TrainedModels:
    """Four models trained on a small synthetic base, registered and promoted to champion."""

    home: Path
    base_path: Path
    snapshot_path: Path  # features at the latest as-of date, no labels needed
    as_of: str


@pytest.fixture(scope="session")
def trained_models(mlflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModels:
    from datetime import date

    from crmscore.bundle import ModelKind
    from crmscore.features.io import write_snapshot
    from crmscore.features.pipeline import build_snapshot
    from crmscore.features.synthetic import write_synthetic_base
    from crmscore.training.config import TrainConfig
    from crmscore.training.jobs import promote_job, train_job

    folder = tmp_path_factory.mktemp("trained")
    base_path = folder / "base"
    synthetic = generate_base(3_000, seed=11)
    write_synthetic_base(synthetic, base_path)
    config = TrainConfig(train_snapshots=6)
    train_job(base_path, list(ModelKind), config, home=mlflow_home)
    decisions = promote_job(list(ModelKind), config, home=mlflow_home)
    assert all(d.promoted for d in decisions), decisions
    as_of = date(2025, 1, 1)
    snapshot = build_snapshot(synthetic.to_base(), as_of, 90, with_labels=False)
    snapshot_path = folder / "snapshot.parquet"
    write_snapshot(snapshot, as_of, snapshot_path)
    return TrainedModels(mlflow_home, base_path, snapshot_path, as_of.isoformat())
