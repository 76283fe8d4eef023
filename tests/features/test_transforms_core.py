"""The core RFM aggregates (the DuckDB benchmark's set) and the id lookups under everything."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from crmscore.features.engines import local
from crmscore.features.engines.local import run_core_rfm_local
from crmscore.features.io import Base
from crmscore.features.transforms import CORE_RFM_COLUMNS, compute_core_rfm, customer_positions

S = pd.StringDtype("pyarrow")
AS_OF = date(2024, 7, 1)


@pytest.fixture(scope="module")
def base() -> Base:
    from crmscore.features.synthetic import generate_base

    generated = generate_base(300, seed=9)
    b = generated.to_base() if hasattr(generated, "to_base") else generated
    ghost = b.transactions.head(5).assign(customer_id=pd.array(["nobody"] * 5, dtype=S))
    return Base(customers=b.customers, transactions=pd.concat([b.transactions, ghost], ignore_index=True))


def reference(base: Base) -> pd.DataFrame:
    """pandas groupby, the obvious way."""
    t = pd.Timestamp(AS_OF)
    known = base.customers.loc[base.customers["signup_date"] < t, ["customer_id"]]
    tx = base.transactions[(base.transactions["ts"] < t)
                           & base.transactions["customer_id"].isin(known["customer_id"])]
    tx = tx.assign(margin=tx["revenue"] - tx["cost"],
                   recent=tx["revenue"].where(tx["ts"] >= t - pd.Timedelta(days=90), 0.0))
    agg = tx.groupby("customer_id", observed=True).agg(
        line_count=("ts", "size"), revenue=("revenue", "sum"), margin=("margin", "sum"),
        first_ts=("ts", "min"), last_ts=("ts", "max"), revenue_90d=("recent", "sum"))
    out = known.merge(agg, left_on="customer_id", right_index=True, how="left")
    out["line_count"] = out["line_count"].fillna(0).astype("int64")
    for c in ("revenue", "margin", "revenue_90d"):
        out[c] = out[c].fillna(0.0)
    return normalise(out)


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(customer_id=frame["customer_id"].astype(str))
    return frame.sort_values("customer_id").reset_index(drop=True)[["customer_id", *CORE_RFM_COLUMNS]]


def test_pure_function_matches_groupby(base: Base) -> None:
    got = normalise(compute_core_rfm(base.tables(), AS_OF))
    pd.testing.assert_frame_equal(got, reference(base), check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("by", ["rows", "customers"])
def test_engine_paths_match_groupby(base: Base, monkeypatch: pytest.MonkeyPatch, by: str,
                                    shuffle: bool) -> None:
    monkeypatch.setattr(local, "PARALLEL_MIN_ROWS", 100)  # exercise the threaded lookups
    tx = base.transactions.sample(frac=1.0, random_state=3) if shuffle else base.transactions
    b = Base(customers=base.customers, transactions=tx.reset_index(drop=True))
    got = run_core_rfm_local(b, AS_OF, by=by, n_jobs=2, block_rows=997, chunk_customers=40)
    pd.testing.assert_frame_equal(normalise(got), reference(base), check_exact=False, rtol=1e-12)


def test_unknown_mode() -> None:
    with pytest.raises(ValueError) as err:
        run_core_rfm_local(Base(customers=pd.DataFrame(), transactions=pd.DataFrame()), AS_OF, by="cols")
    assert str(err.value) == "by must be 'rows' or 'customers'; got 'cols'"


@pytest.mark.parametrize("grouped", [True, False])
def test_positions_with_runs_nulls_and_strangers(grouped: bool) -> None:
    rng = np.random.default_rng(0)
    universe = pd.Series(pd.array([f"c{i}" for i in range(500)], dtype=S))
    picks = rng.integers(-1, 520, 5000)  # -1: missing id; >= 500: not a customer
    if grouped:
        picks = np.sort(picks)
    ids = pd.Series(pd.array([None if p < 0 else f"c{p}" for p in picks], dtype=S))
    expected = np.where((picks >= 0) & (picks < 500), picks, -1)
    np.testing.assert_array_equal(customer_positions(ids, universe), expected)
    codes = pd.Series(np.where(picks < 0, 10_000, picks))  # integer ids take the table path
    np.testing.assert_array_equal(customer_positions(codes, pd.Series(np.arange(500))), expected)
    np.testing.assert_array_equal(customer_positions(codes, pd.Series(np.arange(100, 500))),
                                  np.where((picks >= 100) & (picks < 500), picks - 100, -1))
