"""The Spark engine gives the local engine's snapshot, frame for frame and bit for bit."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import date

import pandas as pd
import pytest

from crmscore.features.io import Base
from crmscore.features.pipeline import build_snapshot

pytestmark = pytest.mark.spark
S = pd.StringDtype("pyarrow")


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers import this environment's crmscore
    session = (
        SparkSession.builder.master("local[2]")
        .appName("crmscore-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if previous is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = previous


def synthetic(n: int, seed: int) -> Base:
    from crmscore.features.synthetic import generate_base

    generated = generate_base(n, seed=seed)
    return generated.to_base() if hasattr(generated, "to_base") else generated


def test_spark_matches_local_on_the_synthetic_base(spark: object) -> None:
    base = synthetic(300, seed=3)
    local = build_snapshot(base, date(2024, 7, 1), 90, chunk_customers=50)
    on_spark = build_snapshot(base, date(2024, 7, 1), 90, engine="spark", chunk_customers=50)
    assert "label_default" in on_spark.columns and "complaint_count_90d" in on_spark.columns
    pd.testing.assert_frame_equal(local, on_spark, check_exact=True)


def test_spark_matches_local_without_optional_tables_and_with_attributes(spark: object) -> None:
    base = synthetic(120, seed=4)
    customers = base.customers.copy()
    n = len(customers)
    customers["tier"] = pd.array([("gold", "silver", None)[i % 3] for i in range(n)], dtype=S)
    customers["employees"] = pd.array([i if i % 4 else None for i in range(n)], dtype="Int64")
    customers["vip"] = [i % 2 == 0 for i in range(n)]
    customers["renewal"] = pd.to_datetime(["2025-03-01" if i % 5 else None for i in range(n)])
    bare = Base(customers=customers, transactions=base.transactions)
    local = build_snapshot(bare, "2024-11-15", 90, chunk_customers=30)
    on_spark = build_snapshot(bare, "2024-11-15", 90, engine="spark", chunk_customers=30)
    assert "label_churn" not in on_spark.columns  # the horizon is not observed
    assert {"tier", "employees", "vip", "days_since_renewal"} <= set(on_spark.columns)
    pd.testing.assert_frame_equal(local, on_spark, check_exact=True)


def test_spark_matches_local_on_a_base_with_returns(spark: object, with_returns) -> None:
    base = with_returns(synthetic(150, seed=5), 2)
    assert (base.transactions["revenue"] < 0).any()
    local = build_snapshot(base, date(2024, 7, 1), 90, chunk_customers=40)
    on_spark = build_snapshot(base, date(2024, 7, 1), 90, engine="spark", chunk_customers=40)
    pd.testing.assert_frame_equal(local, on_spark, check_exact=True)
