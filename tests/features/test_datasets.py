"""Data tests of the CDNOW base: counts, keys, types, the cost assumption and the benchmark figures."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# lifetimes is located, never imported (slow and fragile); skip only when it is truly absent
if importlib.util.find_spec("lifetimes") is None:
    pytest.skip(
        "the CDNOW master file ships inside 'lifetimes' (bench extra), not installed",
        allow_module_level=True,
    )

from crmscore.features import datasets  # noqa: E402
from crmscore.features.datasets import (  # noqa: E402
    CDNOW_CALIBRATION_END,
    CDNOW_HOLDOUT_END,
    CDNOW_HOLDOUT_START,
    CDNOW_PROTOCOL,
    DatasetUnavailableError,
    cdnow_master_path,
    load_cdnow_base,
    write_cdnow_base,
)
from crmscore.features.io import read_table_raw  # noqa: E402

N_CUSTOMERS = 23_570
N_TRANSACTIONS = 69_659
STRING = pd.StringDtype("pyarrow")
ARROW_STRINGS = {pa.string(): STRING, pa.large_string(): STRING}


def read_master_slowly(path: Path) -> list[tuple[str, datetime, float]]:
    """Reference reader: the master file line by line, (customer id, day, dollars)."""
    rows = []
    with open(path, encoding="ascii") as fh:
        for line in fh:
            fields = line.split()
            if not fields or not fields[0].isdigit():  # blank line or lifetimes' header
                continue
            customer_id, day, _cds, dollars = fields
            rows.append((customer_id, datetime.strptime(day, "%Y%m%d"), float(dollars)))
    return rows


@pytest.fixture(scope="module")
def master_rows() -> list[tuple[str, datetime, float]]:
    return read_master_slowly(cdnow_master_path())


@pytest.fixture(scope="module")
def base():
    return load_cdnow_base()


def test_master_path_is_inside_lifetimes():
    path = cdnow_master_path()
    assert path.is_file()
    assert path.name == "CDNOW_master.txt"
    assert path.parent.name == "datasets" and path.parent.parent.name == "lifetimes"


def test_counts_and_optional_tables(base):
    assert len(base.customers) == N_CUSTOMERS
    assert len(base.transactions) == N_TRANSACTIONS
    assert base.customers["customer_id"].is_unique
    assert base.invoices is None and base.interactions is None
    assert set(base.tables()) == {"customers", "transactions"}


def test_dtypes(base):
    customers, transactions = base.customers, base.transactions
    assert list(customers.columns) == [
        "customer_id",
        "signup_date",
        "segment",
        "region",
        "acquisition_channel",
    ]
    assert list(transactions.columns) == [
        "customer_id",
        "ts",
        "order_id",
        "product_category",
        "revenue",
        "cost",
    ]
    for column in ("customer_id", "segment", "region", "acquisition_channel"):
        assert customers[column].dtype == STRING, column
    for column in ("customer_id", "order_id", "product_category"):
        assert transactions[column].dtype == STRING, column
    assert customers["signup_date"].dtype == "datetime64[ns]"
    assert transactions["ts"].dtype == "datetime64[ns]"
    assert transactions["revenue"].dtype == "float64"
    assert transactions["cost"].dtype == "float64"
    # dates and timestamps alike fall at midnight: CDNOW records days only
    assert (customers["signup_date"] == customers["signup_date"].dt.normalize()).all()
    assert (transactions["ts"] == transactions["ts"].dt.normalize()).all()
    assert pd.RangeIndex(N_CUSTOMERS).equals(customers.index)
    assert pd.RangeIndex(N_TRANSACTIONS).equals(transactions.index)


def test_customer_attributes_are_constants(base):
    customers = base.customers
    assert (customers["segment"] == "B2C").all()
    assert (customers["region"] == "unknown").all()
    assert (customers["acquisition_channel"] == "unknown").all()


def test_transactions_match_a_line_by_line_reading(base, master_rows):
    """Every file row is one transaction, in file order, with the documented order id."""
    seen: dict[str, int] = {}
    order_ids = []
    for customer_id, _, _ in master_rows:
        seen[customer_id] = seen.get(customer_id, 0) + 1
        order_ids.append(f"{customer_id}-{seen[customer_id]}")
    expected = pd.DataFrame(
        {
            "customer_id": pd.array([r[0] for r in master_rows], dtype=STRING),
            "ts": pd.to_datetime([r[1] for r in master_rows]).astype("datetime64[ns]"),
            "order_id": pd.array(order_ids, dtype=STRING),
            "product_category": pd.array(["music"] * len(master_rows), dtype=STRING),
            "revenue": [r[2] for r in master_rows],
            "cost": [r[2] * (1.0 - 0.30) for r in master_rows],
        }
    )
    pd.testing.assert_frame_equal(base.transactions, expected)


def test_order_ids_are_unique_and_the_contract_key_holds(base):
    transactions = base.transactions
    assert transactions["order_id"].is_unique
    assert not transactions.duplicated(["order_id", "product_category"]).any()
    # same-day rows of one customer are all kept, as separate orders
    assert transactions.duplicated(["customer_id", "ts"]).any()


def test_total_revenue_equals_the_file_total(base, master_rows):
    assert math.isclose(
        base.transactions["revenue"].sum(), math.fsum(r[2] for r in master_rows), abs_tol=1e-6
    )


def test_signup_date_is_the_first_purchase_day(base, master_rows):
    first: dict[str, datetime] = {}
    for customer_id, day, _ in master_rows:
        first[customer_id] = min(day, first.get(customer_id, day))
    signup = base.customers.set_index("customer_id")["signup_date"]
    assert signup.index.tolist() == list(first)  # order of first appearance
    assert signup.tolist() == [pd.Timestamp(d) for d in first.values()]
    assert signup.equals(base.transactions.groupby("customer_id")["ts"].min().loc[signup.index])
    # the cohort first bought in the first quarter of 1997
    assert signup.min() == pd.Timestamp("1997-01-01") and signup.max() < pd.Timestamp("1997-04-01")


def test_cost_follows_the_margin_rate():
    base = load_cdnow_base(margin_rate=0.45)
    transactions = base.transactions
    pd.testing.assert_series_equal(
        transactions["cost"], transactions["revenue"] * (1.0 - 0.45), check_names=False
    )
    margin = transactions["revenue"] - transactions["cost"]
    assert math.isclose(margin.sum(), 0.45 * transactions["revenue"].sum(), rel_tol=1e-12)


@pytest.mark.parametrize("margin_rate", [0.0, 1.0])
def test_margin_rate_bounds_are_allowed(margin_rate):
    transactions = load_cdnow_base(margin_rate=margin_rate).transactions
    expected = transactions["revenue"] if margin_rate == 0.0 else 0.0 * transactions["revenue"]
    assert (transactions["cost"] == expected).all()


def test_same_output_every_call(base):
    again = load_cdnow_base()
    pd.testing.assert_frame_equal(again.customers, base.customers)
    pd.testing.assert_frame_equal(again.transactions, base.transactions)


def test_explicit_master_path_with_or_without_header(tmp_path, base):
    """The original Fader-Hardie file has no header line; lifetimes' copy has one."""
    lines = cdnow_master_path().read_text(encoding="ascii").splitlines(keepends=True)
    headerless = tmp_path / "CDNOW_master.txt"
    headerless.write_text("".join(lines[1:]), encoding="ascii")
    from_headerless = load_cdnow_base(master_path=headerless)
    pd.testing.assert_frame_equal(from_headerless.customers, base.customers)
    pd.testing.assert_frame_equal(from_headerless.transactions, base.transactions)


def test_written_base_reads_back_identical(tmp_path):
    out_path = tmp_path / "cdnow"
    written = write_cdnow_base(out_path, margin_rate=0.25)
    assert sorted(p.name for p in out_path.iterdir()) == [
        "customers.parquet",
        "transactions.parquet",
    ]
    for name, frame in written.tables().items():
        path = out_path / f"{name}.parquet"
        # Arrow strings come back as pyarrow-backed strings only when asked: the file does
        # not record the storage, and pandas' default (mode.string_storage) is "python"
        typed = pq.read_table(path).to_pandas(types_mapper=ARROW_STRINGS.get)
        pd.testing.assert_frame_equal(typed, frame)
        # the project's raw reader gives the same values (string storage aside)
        pd.testing.assert_frame_equal(read_table_raw(path), frame, check_dtype=False)
    pd.testing.assert_series_equal(
        written.transactions["cost"],
        written.transactions["revenue"] * (1.0 - 0.25),
        check_names=False,
    )


def test_holdout_figures_of_the_benchmark(base):
    """BENCHMARKS.md: 70.1% of customers buy nothing in the holdout, which brings $776,961."""
    ts = base.transactions["ts"]
    as_of = pd.Timestamp(CDNOW_PROTOCOL.as_of)
    in_holdout = (ts >= as_of) & (ts < as_of + pd.Timedelta(days=CDNOW_PROTOCOL.horizon_days))
    assert in_holdout.equals(
        ts.between(pd.Timestamp(CDNOW_HOLDOUT_START), pd.Timestamp(CDNOW_HOLDOUT_END))
    )
    holdout = base.transactions[in_holdout]
    buyers = holdout["customer_id"].nunique()
    churned_share = 1.0 - buyers / len(base.customers)
    assert abs(churned_share - 0.701) <= 0.001
    assert abs(holdout["revenue"].sum() - 776_961) <= 1.0
    # the holdout ends with the data
    assert ts.max() == pd.Timestamp(CDNOW_HOLDOUT_END)


def test_protocol_constants():
    assert CDNOW_PROTOCOL.calibration_end == CDNOW_CALIBRATION_END
    assert CDNOW_PROTOCOL.holdout_start == CDNOW_HOLDOUT_START
    assert CDNOW_PROTOCOL.holdout_end == CDNOW_HOLDOUT_END
    assert CDNOW_PROTOCOL.as_of.isoformat() == "1997-10-01"
    assert CDNOW_PROTOCOL.horizon_days == 273 == 39 * 7
    assert (CDNOW_HOLDOUT_START - CDNOW_CALIBRATION_END).days == 1


@pytest.mark.parametrize("margin_rate", [1.5, -0.1, float("nan")])
def test_margin_rate_outside_zero_one_is_rejected(margin_rate):
    with pytest.raises(ValueError) as excinfo:
        load_cdnow_base(margin_rate=margin_rate)
    assert str(excinfo.value) == f"margin_rate must be a share between 0 and 1; got {margin_rate}"


def test_margin_rate_error_message_exact(tmp_path):
    out_path = tmp_path / "never-written"
    with pytest.raises(ValueError) as excinfo:
        write_cdnow_base(out_path, margin_rate=1.5)
    assert str(excinfo.value) == "margin_rate must be a share between 0 and 1; got 1.5"
    assert not out_path.exists()


def test_missing_lifetimes_is_reported(monkeypatch):
    monkeypatch.setattr(datasets, "find_spec", lambda name: None)
    with pytest.raises(DatasetUnavailableError) as excinfo:
        load_cdnow_base()
    assert isinstance(excinfo.value, RuntimeError)
    assert str(excinfo.value) == (
        "the CDNOW dataset ships inside the 'lifetimes' package, which is not installed; "
        "install the bench extra: pip install 'crmscore[bench]'"
    )


def test_a_file_that_is_not_the_master_file_is_named(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("00001 1997-01-01 1 11.77\n", encoding="ascii")
    with pytest.raises(ValueError, match=r"bad\.txt is not a CDNOW master file"):
        load_cdnow_base(master_path=bad)


def test_loading_does_not_import_lifetimes():
    code = (
        "import sys; from crmscore.features.datasets import load_cdnow_base; "
        "load_cdnow_base(); assert 'lifetimes' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_snapshot_and_labels_at_the_benchmark_as_of(base):
    """Issue 3: the CDNOW snapshot at the end of calibration (as-of 1997-10-01, the start of that
    day, i.e. everything up to 1997-09-30) with its 273-day labels: every customer, the holdout's
    70.1% churn and $776,961 of revenue (x the margin rate as margin), features from the past only."""
    from crmscore.features.pipeline import build_snapshot

    snapshot = build_snapshot(base, CDNOW_PROTOCOL.as_of, CDNOW_PROTOCOL.horizon_days, with_labels=True)
    assert len(snapshot) == N_CUSTOMERS and snapshot["customer_id"].is_unique
    assert abs(snapshot["label_churn"].mean() - 0.701) <= 0.001
    revenue = base.transactions["revenue"].sum()
    margin = (base.transactions["revenue"] - base.transactions["cost"]).sum()
    assert snapshot["label_margin"].sum() == pytest.approx(776_961 * margin / revenue, rel=1e-6)
    assert snapshot["days_since_last_purchase"].min() >= 1  # nothing on or after the as-of day
