"""Shared fixtures: small seeded bases, a trained, promoted model set, built once per session, and
``api``: helpers that run the scoring app in-process (test modules cannot import each other or
this file under ``--import-mode=importlib``, so the helpers come as a fixture)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from crmscore.features.io import Base
from crmscore.features.synthetic import SyntheticBase, generate_base

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI

    from crmscore.serving.registry import ServingBundle
    from crmscore.serving.settings import ServingSettings


@pytest.fixture(scope="session")
def synthetic_small() -> SyntheticBase:
    """2,000 synthetic customers, seed 7 (tables, and the traits behind them)."""
    return generate_base(2_000, seed=7)


@pytest.fixture(scope="session")
def base_small(synthetic_small: SyntheticBase) -> Base:
    """The same 2,000 customers as typed frames, per the data contract."""
    return synthetic_small.to_base()


@pytest.fixture(scope="session")
def with_returns() -> Callable[[Base, int], Base]:
    """``with_returns(base, seed)``: the base with returns (transactions) and credit notes
    (invoices) added."""
    return _with_returns


def _with_returns(base: Base, seed: int) -> Base:
    """``base`` with returns: a fifth of the lines come back, in part or whole, 1-60 days after
    the sale, each on its own credit-note order id (revenue and cost both at or below zero);
    some customers return more than they bought in a window, some only return in the horizon."""
    rng = np.random.default_rng(seed)
    tx = base.transactions
    sent_back = tx.sample(frac=0.2, random_state=seed).reset_index(drop=True)
    share = rng.choice([0.25, 0.5, 1.0, 3.0], size=len(sent_back))  # 3.0: more than was bought
    returns = pd.DataFrame({
        "customer_id": sent_back["customer_id"],
        "ts": sent_back["ts"] + pd.to_timedelta(rng.integers(1, 61, len(sent_back)), unit="D"),
        "order_id": pd.array([f"CN{i}" for i in range(len(sent_back))], dtype=pd.StringDtype("pyarrow")),
        "product_category": sent_back["product_category"],
        "revenue": -share * sent_back["revenue"].to_numpy(),
        "cost": -share * sent_back["cost"].to_numpy(),
    })
    returns.loc[returns.index % 7 == 0, "cost"] = 0.0  # a credit note: money back, no goods
    # goods back, no money: still a return (a line of zeros is a sale: a free sample)
    returns.loc[(returns.index % 11 == 0) & (returns.index % 7 != 0), "revenue"] = 0.0
    transactions = pd.concat([tx, returns], ignore_index=True).sort_values("ts", kind="stable")
    invoices = base.invoices
    if invoices is not None:  # and credit notes: a tenth of the invoices partly credited back
        credited = invoices.sample(frac=0.1, random_state=seed).reset_index(drop=True)
        issue = credited["issue_date"] + pd.to_timedelta(rng.integers(5, 90, len(credited)), unit="D")
        applied = issue + pd.to_timedelta(rng.integers(0, 120, len(credited)), unit="D")
        notes = pd.DataFrame({
            "customer_id": credited["customer_id"],
            "invoice_id": pd.array([f"CR{i}" for i in range(len(credited))], dtype=pd.StringDtype("pyarrow")),
            "issue_date": issue,
            "due_date": issue,
            "amount": -rng.choice([0.1, 0.5, 1.0], len(credited)) * credited["amount"].to_numpy(),
            "paid_date": applied.where(rng.random(len(credited)) < 0.7),  # some never applied
        })
        invoices = pd.concat([invoices, notes], ignore_index=True)
    return Base(customers=base.customers, transactions=transactions.reset_index(drop=True),
                invoices=invoices, interactions=base.interactions)


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
    from crmscore.features.synthetic import (
        record_posterior,
        truth_path,
        write_parquet_atomic,
        write_synthetic_base,
    )
    from crmscore.training.config import TrainConfig
    from crmscore.training.jobs import promote_job, train_job

    folder = tmp_path_factory.mktemp("trained")
    base_path = folder / "base"
    synthetic = generate_base(3_000, seed=11)
    write_synthetic_base(synthetic, base_path)
    # the best prediction from the record at the test as-of, as `crmscore truth --record` writes it
    test_as_of = date(2024, 10, 1)
    write_parquet_atomic(record_posterior(synthetic, test_as_of, 90), truth_path(base_path, test_as_of, 90, "record"))
    config = TrainConfig(train_snapshots=6)
    train_job(base_path, list(ModelKind), config, home=mlflow_home)
    decisions = promote_job(list(ModelKind), config, home=mlflow_home)
    assert all(d.promoted for d in decisions), decisions
    as_of = date(2025, 1, 1)
    snapshot = build_snapshot(synthetic.to_base(), as_of, 90, with_labels=False)
    snapshot_path = folder / "snapshot.parquet"
    write_snapshot(snapshot, as_of, snapshot_path)
    return TrainedModels(mlflow_home, base_path, snapshot_path, as_of.isoformat())


# --- the scoring app in-process ------------------------------------------------------------------


class ApiHelpers:
    """Run the real ASGI app (lifespan, middleware, routes) behind an httpx client."""

    @staticmethod
    def serve(bundle: ServingBundle) -> Callable[[ServingSettings], ServingBundle]:
        """A loader that returns ``bundle`` (loaded once by the test's fixture)."""
        return lambda settings: bundle

    @staticmethod
    async def wait_ready(client: httpx.AsyncClient, timeout: float = 30) -> None:
        for _ in range(int(timeout / 0.02)):
            if (await client.get("/health/ready")).status_code == 200:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the app did not get ready")

    @staticmethod
    async def wait_not_ready_reason(client: httpx.AsyncClient, word: str = "failed", timeout: float = 10) -> dict:
        body: dict = {}
        for _ in range(int(timeout / 0.02)):
            r = await client.get("/health/ready")
            body = r.json()
            if r.status_code == 503 and word in body.get("reason", ""):
                return body
            await asyncio.sleep(0.02)
        raise AssertionError(f"readiness never said {word!r}: {body}")

    @staticmethod
    @asynccontextmanager
    async def running(settings: ServingSettings, loader: Any = None, *, ready: bool = True,
                      watch_queue_delay: bool = False) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        """The app of ``settings`` (``loader`` default: the real one) with a client on it."""
        import httpx

        from crmscore.serving.api.app import create_app

        app = create_app(settings, loader=loader, watch_queue_delay=watch_queue_delay)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
                if ready:
                    await ApiHelpers.wait_ready(client)
                yield app, client


@pytest.fixture(scope="session")
def api() -> type[ApiHelpers]:
    """:class:`ApiHelpers`: ``api.running(settings, loader)``, ``api.serve(bundle)``, ..."""
    return ApiHelpers
