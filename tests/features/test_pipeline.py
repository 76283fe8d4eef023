"""build_snapshot and training frames: input checks, chunking invariance, dates, the catalogue doc."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pytest

from crmscore.features.engines import local
from crmscore.features.io import Base
from crmscore.features.pipeline import (
    build_snapshot,
    build_training_frame,
    catalogue_specs,
    monthly_as_of_dates,
    observed_period,
    render_catalogue,
)

S = pd.StringDtype("pyarrow")
DOC = Path(__file__).resolve().parents[2] / "docs" / "features.md"


def tiny_base() -> Base:
    """Two customers; data from 2023-01-10 to the last purchase on 2024-03-30."""
    customers = pd.DataFrame({
        "customer_id": pd.array(["b", "a"], dtype=S),
        "signup_date": pd.to_datetime(["2023-01-10", "2023-02-01"]).astype("datetime64[ns]"),
        "segment": pd.array(["B2C", "B2B"], dtype=S),
        "region": pd.array(["x", "y"], dtype=S),
        "acquisition_channel": pd.array(["web", "sales"], dtype=S),
    })
    transactions = pd.DataFrame({
        "customer_id": pd.array(["a", "b", "a"], dtype=S),
        "ts": pd.to_datetime(["2023-03-01 10:00", "2023-06-01 12:00", "2024-03-30 18:00"]).astype("datetime64[ns]"),
        "order_id": pd.array(["1", "2", "3"], dtype=S),
        "product_category": pd.array(["toys", "food", "toys"], dtype=S),
        "revenue": [10.0, 20.0, 30.0],
        "cost": [5.0, 5.0, 5.0],
    })
    return Base(customers=customers, transactions=transactions)


def synthetic(n: int, seed: int) -> Base:
    from crmscore.features.synthetic import generate_base

    generated = generate_base(n, seed=seed)
    return generated.to_base() if hasattr(generated, "to_base") else generated


@pytest.fixture(scope="module")
def base() -> Base:
    return synthetic(400, seed=5)


# --- bad input: exact messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon_days": -30}, "horizon_days must be a positive number of days; got -30"),
        ({"horizon_days": 0}, "horizon_days must be a positive number of days; got 0"),
        ({"horizon_days": 1.5}, "horizon_days must be a positive number of days; got 1.5"),
        ({"horizon_days": True}, "horizon_days must be a positive number of days; got True"),
        ({"engine": "dask"}, "engine must be one of 'local', 'spark'; got 'dask'"),
        ({"master": "local[2]"},
         "master is only used by the spark engine; got master='local[2]' with engine='local'"),
        ({"chunk_customers": 0}, "chunk_customers must be a positive number of customers; got 0"),
        ({"n_jobs": -1}, "n_jobs must be a positive number of jobs; got -1"),
    ],
)
def test_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        build_snapshot(tiny_base(), date(2024, 1, 1), **kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("as_of", [date(2023, 1, 10), date(2021, 6, 1), date(2024, 4, 1), "2030-01-01"])
def test_as_of_outside_the_data(as_of: object) -> None:
    with pytest.raises(ValueError) as err:
        build_snapshot(tiny_base(), as_of)
    text = as_of if isinstance(as_of, str) else as_of.isoformat()
    assert str(err.value) == (
        f"as_of {text} is outside the observed period of the base: expected a date from "
        "2023-01-11 to 2024-03-31"
    )


@pytest.mark.parametrize("as_of", ["yesterday", datetime(2024, 1, 1, 12, 30), 20240101])
def test_as_of_not_a_date(as_of: object) -> None:
    with pytest.raises(ValueError) as err:
        build_snapshot(tiny_base(), as_of)
    assert str(err.value) == (
        f"as_of must be a date such as 2024-07-01 (the start of that day); got {as_of!r}"
    )


def test_labels_asked_for_an_unobserved_horizon() -> None:
    with pytest.raises(ValueError) as err:
        build_snapshot(tiny_base(), date(2024, 3, 1), 90, with_labels=True)
    assert str(err.value) == (
        "labels need the whole horizon observed: as_of 2024-03-01 + horizon_days 90 ends on "
        "2024-05-30, after the end of the data 2024-03-31; use an as_of on or before 2024-01-01 "
        "or with_labels=False"
    )


# --- what comes out --------------------------------------------------------------------------------


def test_edges_of_the_observed_period() -> None:
    base = tiny_base()
    assert observed_period(base) == (date(2023, 1, 10), date(2024, 3, 31))
    first = build_snapshot(base, date(2023, 1, 11))
    assert first["customer_id"].tolist() == ["b"] and first["order_count_lifetime"].tolist() == [0]
    last = build_snapshot(base, date(2024, 3, 31))
    assert last["customer_id"].tolist() == ["a", "b"]
    assert not [c for c in last.columns if c.startswith("label_")]  # not observable: left out
    assert last["revenue_lifetime"].tolist() == [40.0, 20.0]


def test_labels_when_observable_and_data_end() -> None:
    base = tiny_base()
    snap = build_snapshot(base, date(2024, 1, 1), 90)
    assert snap["label_churn"].tolist() == [0.0, 1.0]
    assert snap["label_purchase_toys"].tolist() == [1, 0]
    no_labels = build_snapshot(base, date(2024, 1, 1), 90, with_labels=False)
    pd.testing.assert_frame_equal(no_labels, snap[no_labels.columns])
    # An explicit end of data (e.g. the extraction date) makes a longer horizon observable.
    later = build_snapshot(base, date(2024, 1, 1), 120, data_end=date(2024, 6, 1))
    assert "label_churn" in later.columns


def test_snapshot_is_sorted_and_typed(base: Base) -> None:
    snap = build_snapshot(base, date(2024, 7, 1))
    assert snap["customer_id"].dtype == S
    assert snap["customer_id"].is_monotonic_increasing and snap["customer_id"].is_unique
    assert snap.index.equals(pd.RangeIndex(len(snap)))
    known = base.customers[base.customers["signup_date"] < pd.Timestamp("2024-07-01")]
    assert sorted(known["customer_id"]) == snap["customer_id"].tolist()
    assert snap["segment"].dtype == pd.CategoricalDtype(sorted(base.customers["segment"].unique()))


@pytest.mark.parametrize(("chunk_customers", "n_jobs"), [(7, 1), (37, 2), (150, 1), (10_000, 2)])
def test_chunking_does_not_change_the_snapshot(base: Base, chunk_customers: int, n_jobs: int) -> None:
    whole = build_snapshot(base, date(2024, 7, 1), chunk_customers=10_000, n_jobs=1)
    chunked = build_snapshot(base, date(2024, 7, 1), chunk_customers=chunk_customers, n_jobs=n_jobs)
    pd.testing.assert_frame_equal(whole, chunked, check_exact=True)


@pytest.mark.parametrize("shuffle", [False, True])
def test_threaded_encoding_gives_the_same_snapshot(base: Base, monkeypatch: pytest.MonkeyPatch,
                                                   shuffle: bool) -> None:
    whole = build_snapshot(base, date(2024, 7, 1), chunk_customers=10_000, n_jobs=1)
    monkeypatch.setattr(local, "PARALLEL_MIN_ROWS", 100)
    tx = base.transactions.sample(frac=1.0, random_state=5) if shuffle else base.transactions
    b = Base(customers=base.customers, transactions=tx, invoices=base.invoices,
             interactions=base.interactions)
    threaded = build_snapshot(b, date(2024, 7, 1), chunk_customers=60, n_jobs=2)
    pd.testing.assert_frame_equal(whole, threaded, check_exact=not shuffle, rtol=1e-12)


def test_categories_can_be_fixed(base: Base) -> None:
    snap = build_snapshot(base, date(2024, 7, 1), categories=["books", "toys"])
    assert [c for c in snap.columns if c.startswith("label_purchase_")] == [
        "label_purchase_books", "label_purchase_toys"]
    assert snap["label_purchase_toys"].sum() == 0


def test_customers_in_any_order_and_events_of_unknown_customers(base: Base) -> None:
    shuffled = Base(
        customers=base.customers.sample(frac=1.0, random_state=1),
        transactions=pd.concat([base.transactions.sample(frac=1.0, random_state=2),
                                base.transactions.head(3).assign(customer_id=pd.array(["ghost"] * 3, dtype=S))]),
        invoices=base.invoices.sample(frac=1.0, random_state=3),
        interactions=base.interactions.sample(frac=1.0, random_state=4),
    )
    expected = build_snapshot(base, date(2024, 7, 1))
    got = build_snapshot(shuffled, date(2024, 7, 1), chunk_customers=50)
    pd.testing.assert_frame_equal(expected, got, check_exact=False, rtol=1e-12)


# --- training frames ---------------------------------------------------------------------------------


def test_monthly_as_of_dates(base: Base) -> None:
    dates = monthly_as_of_dates(base, 90)
    assert dates[0] == date(2022, 2, 1) and dates[-1] == date(2024, 10, 1)
    assert len(dates) == 33
    assert monthly_as_of_dates(base, 90, start=date(2024, 5, 15), end=date(2024, 8, 1)) == [
        date(2024, 6, 1), date(2024, 7, 1), date(2024, 8, 1)]


def test_training_frame_stacks_labelled_snapshots(base: Base) -> None:
    dates = [date(2024, 4, 1), date(2024, 1, 1)]
    frame = build_training_frame(base, dates, 90)
    assert frame.columns[:2].tolist() == ["customer_id", "as_of"]
    assert frame["as_of"].dtype == "datetime64[ns]"
    assert frame["as_of"].drop_duplicates().tolist() == [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-04-01")]
    april = frame[frame["as_of"] == pd.Timestamp("2024-04-01")].drop(columns="as_of").reset_index(drop=True)
    pd.testing.assert_frame_equal(april, build_snapshot(base, date(2024, 4, 1), 90))
    assert isinstance(frame["segment"].dtype, pd.CategoricalDtype)
    with pytest.raises(ValueError, match="labels need the whole horizon observed"):
        build_training_frame(base, [date(2024, 12, 1)], 90)
    with pytest.raises(ValueError) as err:
        build_training_frame(base, [], 90)
    assert str(err.value) == "as_of_dates must hold at least one date; got none"


# --- the catalogue ---------------------------------------------------------------------------------


def test_docs_hold_the_generated_catalogue() -> None:
    assert DOC.read_text() == render_catalogue(), (
        "docs/features.md is stale: regenerate it with "
        "python -c 'from crmscore.features.pipeline import render_catalogue as r; "
        "open(\"docs/features.md\", \"w\").write(r())'"
    )


def test_no_two_features_read_alike_in_a_reason() -> None:
    """A reason code's text names its feature by the spec's phrase: the windows of one measure
    must read apart ("Number of distinct orders" was the text of four features)."""
    from collections import Counter

    specs = catalogue_specs(["books", "home & garden"])
    phrases = Counter(s.phrase for s in specs)
    assert not [p for p, n in phrases.items() if n > 1]
    phrase = {s.name: s.phrase for s in specs}
    assert phrase["order_count_90d"] == "Number of distinct orders in the last 90 days"
    assert phrase["order_count_lifetime"] == "Number of distinct orders to date"
    assert phrase["revenue_share_365d_books"] == "Share of 365-day revenue in category 'books'"  # says it already
    assert phrase["days_since_last_purchase"] == "Recency: days from the last order to T"


# --- real data: CDNOW ------------------------------------------------------------------------------


def test_cdnow_snapshot_reproduces_the_benchmark_protocol() -> None:
    """../shared/BENCHMARKS.md: 70.1% of the 23,570 customers buy nothing in the 39-week
    holdout, who spend $776,961 in it."""
    pytest.importorskip("lifetimes")
    from crmscore.features.datasets import CDNOW_PROTOCOL, DEFAULT_MARGIN_RATE, load_cdnow_base

    snap = build_snapshot(load_cdnow_base(), CDNOW_PROTOCOL.as_of, CDNOW_PROTOCOL.horizon_days)
    assert len(snap) == 23_570
    assert round(snap["label_churn"].mean(), 3) == 0.701
    assert snap["label_margin"].sum() / DEFAULT_MARGIN_RATE == pytest.approx(776_961, abs=1)
    assert "label_default" not in snap.columns and "invoice_count_lifetime" not in snap.columns
    assert snap["label_purchase_music"].mean() == pytest.approx(1 - 0.701, abs=1e-3)
