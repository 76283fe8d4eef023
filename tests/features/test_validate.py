"""Tests of ``crmscore.features.validate``: one small base per kind of bad input.

Every base is built in ``tmp_path`` from the same valid tables, written as CSV or Parquet,
with one defect planted. Each test checks the exact problem, that its message names the
table, column and what was expected, that the rejects hold exactly the bad rows and that
the typed base keeps the others (rows read == kept + rejected, always).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crmscore.features.io import Base, BaseNotFoundError
from crmscore.features.schema import TABLES
from crmscore.features.synthetic import END, SyntheticBase, write_synthetic_base
from crmscore.features.validate import (
    CHECKS,
    BaseValidationError,
    Problem,
    ValidationResult,
    coerce_table,
    load_base,
    validate_base,
    validate_frames,
    write_report,
)

AS_OF = date(2024, 6, 1)
TEXT = pd.StringDtype("pyarrow")
FORMATS = ["csv", "parquet"]
#: a column that tells the rows of each table apart, to check which rows were kept
ROW_ID = {
    "customers": "customer_id",
    "transactions": "order_id",
    "invoices": "invoice_id",
    "interactions": "ts",
}


# --- building bases ----------------------------------------------------------------------


def valid_tables() -> dict[str, pd.DataFrame]:
    """A small base that satisfies the contract as of 2024-06-01 (natural Python types)."""
    customers = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3", "C4"],
            "signup_date": [date(2023, 1, d) for d in (5, 6, 7, 8)],
            "segment": ["B2C", "B2B", "B2C", "B2C"],
            "region": ["North", "South", "North", "East"],
            "acquisition_channel": ["web", "referral", "web", "shop"],
            "age": [34, 51, 28, 45],  # an extra attribute: kept as read
        }
    )
    transactions = pd.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2", "C3", "C4", "C2"],
            "ts": pd.to_datetime([f"2024-01-0{d} 10:30:00" for d in range(1, 7)]),
            "order_id": ["O1", "O2", "O3", "O4", "O5", "O6"],
            "product_category": ["books", "toys", "books", "games", "books", "toys"],
            "revenue": [10.5, 20.0, 7.25, 3.0, 12.0, 8.0],
            "cost": [4.0, 9.5, 3.0, 1.0, 6.0, 2.5],
        }
    )
    invoices = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3"],
            "invoice_id": ["I1", "I2", "I3"],
            "issue_date": [date(2024, 1, 10), date(2024, 1, 11), date(2024, 1, 12)],
            "due_date": [date(2024, 2, 10), date(2024, 2, 11), date(2024, 2, 12)],
            "amount": [30.5, 7.25, 3.0],
            "paid_date": [date(2024, 2, 1), None, date(2024, 2, 20)],
        }
    )
    interactions = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C4"],
            "ts": ["2024-03-01 09:00:00", "2024-03-02 09:00:00", "2024-03-03 09:00:00"],
            "kind": ["visit", "support", "complaint"],
            "cost_to_serve": [5.0, 12.5, 20.0],
        }
    )
    interactions["ts"] = pd.to_datetime(interactions["ts"])
    return {
        "customers": customers,
        "transactions": transactions,
        "invoices": invoices,
        "interactions": interactions,
    }


def write_base(path: Path, tables: dict[str, pd.DataFrame], fmt: str) -> Path:
    """Write tables as one CSV or Parquet file each (Parquet keeps the pandas types)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if fmt == "csv":
            df.to_csv(path / f"{name}.csv", index=False)
        else:
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path / f"{name}.parquet")
    return path


def write_csv_text(path: Path, name: str, text: str) -> None:
    """Write one CSV table verbatim, for values pandas would not write as given."""
    (path / f"{name}.csv").write_text(text.strip() + "\n", encoding="utf-8")


def validate(
    tmp_path: Path, tables: dict[str, pd.DataFrame], fmt: str, as_of: date | None = AS_OF
) -> ValidationResult:
    """Write ``tables`` as a base in ``fmt`` and validate it."""
    return validate_base(write_base(tmp_path / "base", tables, fmt), as_of=as_of)


def only(result: ValidationResult, table: str, check: str) -> Problem:
    """The single problem of ``check`` in ``table``; fails if there is not exactly one."""
    found = [p for p in result.problems if p.table == table and p.check == check]
    assert len(found) == 1, [p.message() for p in result.problems]
    return found[0]


def assert_rows_conserved(result: ValidationResult) -> None:
    """Nothing is dropped silently: rows read == rows kept + rows rejected, per table."""
    for name, n_read in result.row_counts.items():
        kept = result.base.tables()[name]
        assert n_read == len(kept) + len(result.rejects[name]), name


def assert_split(
    result: ValidationResult, tables: dict[str, pd.DataFrame], table: str, bad_rows: set[int]
) -> None:
    """Rejects of ``table`` are exactly ``bad_rows``; the typed base keeps the other rows."""
    assert_rows_conserved(result)
    rejects = result.rejects[table]
    assert set(rejects["_row"]) == bad_rows
    raw_ids = tables[table][ROW_ID[table]]
    expected_kept = [v for i, v in enumerate(raw_ids) if i not in bad_rows]
    kept = result.base.tables()[table][ROW_ID[table]]
    if table == "interactions":
        assert list(kept) == list(pd.to_datetime(pd.Series(expected_kept)))
    else:
        assert list(kept) == [str(v) for v in expected_kept]


def assert_message_names(problem: Problem) -> None:
    """House style: the message names the table, the column and what was expected."""
    message = problem.message()
    assert message.startswith(f"{problem.table}.{problem.column}: ")
    assert message.endswith(f"; expected {problem.expected}")
    assert problem.expected


# --- a valid base ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_base_is_ok_with_typed_frames(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    result = validate(tmp_path, tables, fmt)

    assert result.ok, [p.message() for p in result.problems]
    assert result.problems == []
    assert result.row_counts == {
        "customers": 4,
        "transactions": 6,
        "invoices": 3,
        "interactions": 3,
    }
    assert all(len(r) == 0 for r in result.rejects.values())
    assert_rows_conserved(result)
    base = result.base
    for name, table in TABLES.items():
        df = base.tables()[name]
        assert list(df.columns[: len(table.columns)]) == table.column_names
        for col in table.columns:
            expected = {
                "id": TEXT,
                "string": TEXT,
                "date": np.dtype("datetime64[ns]"),
                "timestamp": np.dtype("datetime64[ns]"),
                "money": np.dtype("float64"),
                "signed money": np.dtype("float64"),
            }[col.kind.value]
            assert df[col.name].dtype == expected, (name, col.name, df[col.name].dtype)
    assert list(base.customers.columns) == [*TABLES["customers"].column_names, "age"]
    assert base.transactions["ts"].iloc[0] == pd.Timestamp("2024-01-01 10:30:00")
    assert base.invoices["issue_date"].iloc[0] == pd.Timestamp("2024-01-10")
    assert base.invoices["paid_date"].isna().tolist() == [False, True, False]
    assert base.transactions["revenue"].tolist() == [10.5, 20.0, 7.25, 3.0, 12.0, 8.0]
    assert "Result: valid." in result.render()


def test_a_semicolon_windows_1252_csv_base_reads_like_a_comma_utf8_one(tmp_path: Path) -> None:
    """Excel in a decimal-comma locale saves CSV with ";" in the Windows code page: such a base
    used to be one column per table ("column missing" for every column of the contract)."""
    tables = valid_tables()
    tables["customers"]["region"] = ["München", "Île-de-France", "North", "East"]
    plain = load_base(write_base(tmp_path / "plain", tables, "csv"), as_of=AS_OF)
    excel = tmp_path / "excel"
    excel.mkdir()
    for name, df in tables.items():
        df.to_csv(excel / f"{name}.csv", index=False, sep=";", encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):  # the premise: not UTF-8
        (excel / "customers.csv").read_text(encoding="utf-8")
    read = load_base(excel, as_of=AS_OF)
    for name, df in plain.tables().items():
        pd.testing.assert_frame_equal(read.tables()[name], df, obj=name)
    assert read.customers["region"].tolist()[:2] == ["München", "Île-de-France"]


def test_a_decimal_comma_export_with_written_dates_reads_like_an_iso_one(tmp_path: Path) -> None:
    """Excel in a German locale writes amounts with a decimal comma (``1.234,50``) and dates as
    ``29.05.2024 15:47:16``: each column whose every date is in one written format is read in
    it, and the amounts of a ";"-separated file with their comma. Such a base used to lose every
    amount and every date as "wrong type" and "unparseable"."""
    tables = valid_tables()
    tables["transactions"].loc[1, "revenue"] = 1234.5  # written with a thousands dot
    tables["customers"]["credit_limit"] = [1500.25, 200.0, None, 80.5]
    tables["customers"]["contract_end"] = pd.to_datetime(["2025-03-31", None, "2026-01-15", "2025-12-01"])
    plain = load_base(write_base(tmp_path / "plain", tables, "csv"), as_of=AS_OF)

    def german(value: object, kind: str) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        if kind == "money":
            return f"{value:,.2f}".replace(",", " ").replace(".", ",").replace(" ", ".")
        stamp = pd.Timestamp(value)
        return stamp.strftime("%d.%m.%Y %H:%M:%S" if kind == "timestamp" else "%d.%m.%Y")

    kinds = {"signup_date": "date", "ts": "timestamp", "issue_date": "date", "due_date": "date",
             "paid_date": "date", "revenue": "money", "cost": "money", "amount": "money",
             "cost_to_serve": "money", "credit_limit": "money", "contract_end": "date"}
    excel = tmp_path / "excel"
    excel.mkdir()
    for name, df in tables.items():
        written = df.astype(object).copy()
        for column, kind in kinds.items():
            if column in written:
                written[column] = [german(v, kind) for v in df[column]]
        written.to_csv(excel / f"{name}.csv", index=False, sep=";")
    text = (excel / "transactions.csv").read_text()
    assert "1.234,50" in text and "02.01.2024 10:30:00" in text  # the premise
    read = load_base(excel, as_of=AS_OF)
    for name, df in plain.tables().items():
        pd.testing.assert_frame_equal(read.tables()[name], df, obj=name)
    assert read.transactions["revenue"].tolist()[1] == 1234.5
    assert read.customers["contract_end"].dtype == np.dtype("datetime64[ns]")


def test_dates_that_read_two_ways_are_rejected_not_guessed(tmp_path: Path, caplog) -> None:
    """03.04.2024: the 3rd of April or March the 4th? When every day of a column is 12 or less,
    both readings fit: the column is unparseable, with a warning naming both."""
    tables = valid_tables()
    raw = tables["interactions"].copy()
    raw["ts"] = ["01/03/2024 09:00", "02/03/2024 09:00", "03/03/2024 09:00"]
    tables["interactions"] = raw
    with caplog.at_level(logging.WARNING, logger="crmscore.features.io"):
        result = validate(tmp_path, tables, "csv")
    problem = only(result, "interactions", "unparseable_date")
    assert (problem.column, problem.count) == ("ts", 3)
    assert "column 'ts' reads as dates in 2 ways (%d/%m/%Y %H:%M or %m/%d/%Y %H:%M" in caplog.text


@pytest.mark.parametrize("fmt", FORMATS)
def test_timestamps_with_offsets_are_read_in_the_companys_time_zone_when_given(tmp_path: Path, fmt: str) -> None:
    """A warehouse export carries offsets (text ``+01:00``, ``Z``; a time-zone-aware Parquet
    column). Without the company's zone they fail the contract, as before; with it, each is the
    local time it was there (winter +01:00, summer +02:00 in Berlin), and naive cells stay."""
    tables = valid_tables()
    stamps = ["2024-01-01T09:30:00+00:00", "2024-01-02 10:30:00+01:00", "2024-01-03 10:30:00",
              "2024-01-04T09:30:00Z", "2024-01-05 10:30:00", "2024-01-06 09:30:00Z"]
    expected = [pd.Timestamp(f"2024-01-0{d} 10:30:00") for d in range(1, 7)]
    tables["transactions"]["ts"] = stamps
    if fmt == "parquet":  # Parquet: an aware column, in UTC
        tables["transactions"]["ts"] = pd.to_datetime(stamps, format="ISO8601", utc=True)
        tables["transactions"].loc[[2, 4], "ts"] = pd.to_datetime(["2024-01-03 09:30", "2024-01-05 09:30"], utc=True)
    path = write_base(tmp_path / "base", tables, fmt)

    refused = validate_base(path, as_of=AS_OF)
    assert not refused.ok and len(refused.rejects["transactions"]) == (6 if fmt == "parquet" else 4)
    read = load_base(path, as_of=AS_OF, timezone="Europe/Berlin")
    assert read.transactions["ts"].tolist() == expected
    assert read.transactions["ts"].dtype == np.dtype("datetime64[ns]")
    summer = tables["transactions"].copy()
    summer["ts"] = ["2024-07-01T08:30:00Z"] * 6 if fmt == "csv" else pd.to_datetime(["2024-07-01T08:30:00Z"] * 6, utc=True)
    summer["order_id"] = [f"S{i}" for i in range(6)]
    path = write_base(tmp_path / "summer", {**tables, "transactions": summer}, fmt)
    assert load_base(path, as_of=date(2024, 12, 1), timezone="Europe/Berlin").transactions["ts"].iloc[0] == (
        pd.Timestamp("2024-07-01 10:30:00"))


def test_an_unknown_time_zone_is_a_clear_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crmscore.cli import app

    path = write_base(tmp_path / "base", valid_tables(), "csv")
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Atlantis': expected an IANA name"):
        load_base(path, timezone="Europe/Atlantis")
    for command in (["validate"], ["features", "--as-of", "2024-01-07", "--out", str(tmp_path / "s.parquet")],
                    ["train", "--kind", "churn"]):
        done = CliRunner().invoke(app, [*command, "--base", str(path), "--timezone", "CEST"])
        assert done.exit_code == 2 and "unknown time zone 'CEST'" in " ".join(done.output.split()), command


def test_customer_attributes_read_alike_from_csv_and_parquet(tmp_path: Path) -> None:
    """Every CSV column is text: an attribute whose every value is a number, true/false or an
    ISO date is read as one, so the snapshot of a base is the same in either format (an age
    from a CSV base used to be a category of 72 text levels, a date a category too)."""
    from crmscore.features.pipeline import build_snapshot
    from crmscore.features.transforms import extra_attributes

    tables = valid_tables()
    customers = tables["customers"]
    customers["employees"] = [12.5, None, 3.0, 250.0]
    customers["vip"] = [True, False, None, True]
    customers["contract_end"] = [date(2024, 12, 31), None, date(2024, 6, 1), None]
    customers["tier"] = ["gold", None, "1", "silver"]  # one number among text: text
    bases = {fmt: load_base(write_base(tmp_path / fmt, tables, fmt), as_of=AS_OF) for fmt in FORMATS}
    for fmt, base in bases.items():
        assert extra_attributes(base.customers) == {
            "age": "number", "employees": "number", "vip": "number", "contract_end": "date", "tier": "category",
        }, fmt
    as_of = date(2024, 1, 7)  # within the transactions
    snapshots = {fmt: build_snapshot(base, as_of, 30, with_labels=False) for fmt, base in bases.items()}
    csv, parquet = snapshots["csv"], snapshots["parquet"]
    pd.testing.assert_frame_equal(csv, parquet)
    assert csv["age"].tolist() == [34.0, 51.0, 28.0, 45.0]
    assert csv["vip"].tolist()[:2] == [1.0, 0.0] and np.isnan(csv["vip"].iloc[2])
    assert csv["days_since_contract_end"].iloc[2] == (pd.Timestamp(as_of) - pd.Timestamp("2024-06-01")).days


def test_optional_tables_absent_are_none(tmp_path: Path) -> None:
    tables = valid_tables()
    del tables["invoices"], tables["interactions"]
    result = validate(tmp_path, tables, "parquet")

    assert result.ok
    assert result.base.invoices is None and result.base.interactions is None
    assert set(result.row_counts) == {"customers", "transactions"}


def test_dates_are_normalised_to_midnight(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["customers"]["signup_date"] = pd.to_datetime(tables["customers"]["signup_date"])
    tables["customers"].loc[0, "signup_date"] = pd.Timestamp("2023-01-05 17:45:00")
    result = validate(tmp_path, tables, "parquet")

    assert result.ok
    assert result.base.customers["signup_date"].iloc[0] == pd.Timestamp("2023-01-05")


def test_integer_ids_in_parquet_become_decimal_text(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["customers"]["customer_id"] = [17, 18, 19, 20]
    tables["transactions"]["customer_id"] = [17, 17, 18, 19, 20, 18]
    tables["transactions"]["order_id"] = [1, 2, 3, 4, 5, 6]
    del tables["invoices"], tables["interactions"]
    result = validate(tmp_path, tables, "parquet")

    assert result.ok, [p.message() for p in result.problems]
    assert result.base.customers["customer_id"].tolist() == ["17", "18", "19", "20"]
    assert result.base.customers["customer_id"].dtype == TEXT
    assert result.base.transactions["order_id"].tolist() == ["1", "2", "3", "4", "5", "6"]


def test_parquet_with_wider_timestamp_units_is_read(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["transactions"]["ts"] = tables["transactions"]["ts"].astype("datetime64[us]")
    result = validate(tmp_path, tables, "parquet")

    assert result.ok
    assert result.base.transactions["ts"].dtype == np.dtype("datetime64[ns]")


def test_header_only_tables_are_valid_and_empty(tmp_path: Path) -> None:
    tables = {name: df.iloc[:0] for name, df in valid_tables().items()}
    result = validate(tmp_path, tables, "csv")

    assert result.ok
    assert result.row_counts == {
        "customers": 0,
        "transactions": 0,
        "invoices": 0,
        "interactions": 0,
    }
    assert result.base.transactions["ts"].dtype == np.dtype("datetime64[ns]")


def test_extra_columns_outside_customers_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tables = valid_tables()
    tables["transactions"]["coupon"] = "X"
    with caplog.at_level("WARNING", logger="crmscore.features.validate"):
        result = validate(tmp_path, tables, "parquet")

    assert result.ok
    assert "coupon" not in result.base.transactions.columns
    assert "transactions: ignoring column(s) coupon not in the contract" in caplog.text


# --- missing things ----------------------------------------------------------------------


def test_missing_folder_raises_base_not_found(tmp_path: Path) -> None:
    with pytest.raises(BaseNotFoundError, match="does not exist"):
        validate_base(tmp_path / "nowhere", as_of=AS_OF)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_required_table_raises_base_not_found(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    del tables["transactions"]
    with pytest.raises(BaseNotFoundError, match="missing required table"):
        validate(tmp_path, tables, fmt)


def test_missing_table_in_frames_is_a_problem() -> None:
    tables = valid_tables()
    del tables["transactions"]
    result = validate_frames(tables, as_of=AS_OF)

    problem = only(result, "transactions", "missing_table")
    assert problem.count == 0
    assert problem.message() == (
        "transactions: table missing; expected a file transactions.parquet or "
        "transactions.csv in the base"
    )
    assert list(result.base.transactions.columns) == TABLES["transactions"].column_names
    assert not result.ok


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_required_column_rejects_every_row(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    tables["transactions"] = tables["transactions"].drop(columns="cost")
    result = validate(tmp_path, tables, fmt)

    problem = only(result, "transactions", "missing_column")
    assert (problem.column, problem.count) == ("cost", 6)
    assert problem.message() == (
        "transactions.cost: column missing, so all 6 rows are rejected; "
        "expected a column named cost holding a finite amount of currency (negative for a return or a credit note)"
    )
    assert len(result.problems) == 1
    assert_split(result, tables, "transactions", set(range(6)))
    assert set(result.rejects["transactions"]["_reasons"]) == {"missing_column"}
    # The typed frame still has the whole contract, with its dtypes.
    assert list(result.base.transactions.columns) == TABLES["transactions"].column_names
    assert result.base.transactions["cost"].dtype == np.dtype("float64")


# --- wrong types and unparseable values --------------------------------------------------


def test_text_in_csv_money_column_is_wrong_type(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["transactions"]["revenue"] = tables["transactions"]["revenue"].astype(object)
    tables["transactions"].loc[3, "revenue"] = "abc"
    tables["transactions"].loc[5, "revenue"] = "12,50"
    result = validate(tmp_path, tables, "csv")

    problem = only(result, "transactions", "wrong_type")
    assert (problem.column, problem.count) == ("revenue", 2)
    assert problem.examples == ["abc", "12,50"]
    assert problem.example_rows == [3, 5]
    assert problem.message() == (
        "transactions.revenue: 2 rows of the wrong type (examples: abc, '12,50'; rows 3, 5); "
        "expected a finite amount of currency (negative for a return or a credit note)"
    )
    assert len(result.problems) == 1  # the emptied cells are not also reported as not_null
    assert_split(result, tables, "transactions", {3, 5})
    # Rejects keep the raw text as it was in the file.
    assert result.rejects["transactions"]["revenue"].tolist() == ["abc", "12,50"]


def test_parquet_string_money_column_is_parsed_and_bad_cells_are_wrong_type(
    tmp_path: Path,
) -> None:
    tables = valid_tables()
    tables["transactions"]["revenue"] = ["10.5", "20", "7.25", "3", "twelve", "8"]
    result = validate(tmp_path, tables, "parquet")

    problem = only(result, "transactions", "wrong_type")
    assert (problem.column, problem.count, problem.examples) == ("revenue", 1, ["twelve"])
    assert_message_names(problem)
    assert_split(result, tables, "transactions", {4})
    assert result.base.transactions["revenue"].tolist() == [10.5, 20.0, 7.25, 3.0, 8.0]


def test_parquet_bool_money_and_float_ids_are_wrong_type(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["interactions"]["cost_to_serve"] = [True, False, True]
    tables["customers"]["customer_id"] = [1.0, 2.0, 3.5, 4.0]
    tables["transactions"]["customer_id"] = [1, 1, 2, 4, 4, 2]
    result = validate(tmp_path, tables, "parquet")

    money = only(result, "interactions", "wrong_type")
    assert (money.column, money.count) == ("cost_to_serve", 3)
    ids = only(result, "customers", "wrong_type")
    assert (ids.column, ids.count, ids.examples, ids.example_rows) == ("customer_id", 1, [3.5], [2])
    assert set(result.rejects["customers"]["_row"]) == {2}
    assert result.base.customers["customer_id"].tolist() == ["1", "2", "4"]  # integral floats
    assert_split(result, tables, "interactions", {0, 1, 2})


@pytest.mark.parametrize("fmt", FORMATS)
def test_unparseable_dates_and_timestamps(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    for name, col in (("customers", "signup_date"), ("transactions", "ts")):
        tables[name][col] = tables[name][col].astype(str)
    tables["customers"].loc[1, "signup_date"] = "2023-13-01"
    tables["transactions"].loc[2, "ts"] = "yesterday"
    tables["transactions"].loc[4, "ts"] = "2024-01-05T10:00:00+01:00"  # offsets are not naive
    result = validate(tmp_path, tables, fmt)

    signup = only(result, "customers", "unparseable_date")
    assert (signup.column, signup.count, signup.examples) == ("signup_date", 1, ["2023-13-01"])
    assert signup.message() == (
        "customers.signup_date: 1 row with an unparseable date (examples: 2023-13-01; rows 1); "
        "expected a date like 2024-01-31 (or the whole column in one written format, like 31.01.2024)"
    )
    ts = only(result, "transactions", "unparseable_date")
    assert (ts.column, ts.count, ts.example_rows) == ("ts", 2, [2, 4])
    assert ts.examples == ["yesterday", "2024-01-05T10:00:00+01:00"]
    assert_message_names(ts)
    assert_split(result, tables, "customers", {1})
    # C2 is no longer a valid customer: its transactions (rows 2, 5) are rejected too.
    assert_split(result, tables, "transactions", {2, 4, 5})
    assert only(result, "transactions", "unknown_customer").example_rows == [2, 5]


def test_parquet_numbers_in_timestamp_column_are_wrong_type(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["interactions"]["ts"] = [1.7e9, 1.7e9, 1.7e9]
    result = validate(tmp_path, tables, "parquet")

    problem = only(result, "interactions", "wrong_type")
    assert (problem.column, problem.count) == ("ts", 3)
    assert problem.expected.startswith("a timestamp like 2024-01-31 14:05:00")
    assert_split(result, tables, "interactions", {0, 1, 2})


def test_timezone_aware_parquet_timestamps_are_wrong_type(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["transactions"]["ts"] = tables["transactions"]["ts"].dt.tz_localize("Europe/Paris")
    result = validate(tmp_path, tables, "parquet")

    problem = only(result, "transactions", "wrong_type")
    assert (problem.column, problem.count) == ("ts", 6)
    assert_split(result, tables, "transactions", set(range(6)))


# --- nulls, money, keys, vocabularies ----------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_null_in_non_nullable_columns(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    tables["customers"].loc[3, "segment"] = None
    tables["transactions"].loc[1, "cost"] = np.nan
    tables["invoices"].loc[2, "due_date"] = None
    result = validate(tmp_path, tables, fmt)

    segment = only(result, "customers", "not_null")
    assert (segment.column, segment.count, segment.examples) == ("segment", 1, [])
    assert segment.message() == "customers.segment: 1 row empty (rows 3); expected a text label"
    cost = only(result, "transactions", "not_null")
    assert (cost.column, cost.count, cost.example_rows) == ("cost", 1, [1])
    due = only(result, "invoices", "not_null")
    assert (due.column, due.count, due.example_rows) == ("due_date", 1, [2])
    assert len(result.problems) == 5  # + C4's transaction and interaction: unknown customer
    assert_split(result, tables, "customers", {3})
    assert_split(result, tables, "transactions", {1, 4})
    assert_split(result, tables, "interactions", {2})
    assert_split(result, tables, "invoices", {2})
    # paid_date is nullable: the unpaid invoice I2 is fine.
    assert result.base.invoices["invoice_id"].tolist() == ["I1", "I2"]


def test_empty_string_id_in_parquet_is_null(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["interactions"].loc[1, "customer_id"] = ""
    result = validate(tmp_path, tables, "parquet")

    problem = only(result, "interactions", "not_null")
    assert (problem.column, problem.count) == ("customer_id", 1)
    assert len(result.problems) == 1  # not an unknown customer as well
    assert_split(result, tables, "interactions", {1})


@pytest.mark.parametrize("fmt", FORMATS)
def test_negative_money(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    tables["interactions"].loc[[0, 2], "cost_to_serve"] = [-5.0, -1.2]
    tables["interactions"].loc[1, "cost_to_serve"] = 0.0  # zero is a valid amount
    tables["invoices"].loc[1, "amount"] = -7.25  # a credit note: valid
    result = validate(tmp_path, tables, fmt)

    problem = only(result, "interactions", "negative")
    assert problem == Problem(
        table="interactions",
        column="cost_to_serve",
        check="negative",
        count=2,
        examples=["-5.0", "-1.2"] if fmt == "csv" else [-5.0, -1.2],
        example_rows=[0, 2],
        expected="a non-negative, finite amount of currency",
    )
    assert problem.message() == (
        "interactions.cost_to_serve: 2 rows negative (examples: -5.0, -1.2; rows 0, 2); "
        "expected a non-negative, finite amount of currency"
    )
    assert len(result.problems) == 1
    assert_split(result, tables, "interactions", {0, 2})
    assert result.base.invoices["amount"].tolist()[1] == -7.25
    assert result.credit_notes == 1 and result.to_dict()["credit_notes"] == 1
    assert "1 of the invoices kept are credit notes" in result.render()


@pytest.mark.parametrize("fmt", FORMATS)
def test_returns_are_transactions_whose_revenue_and_cost_share_a_sign(tmp_path: Path, fmt: str) -> None:
    """A return (revenue and cost at or below zero, not both zero) is a valid line; a line whose
    revenue and cost have opposite signs is neither a sale nor a return."""
    tables = valid_tables()
    tx = tables["transactions"]
    tx.loc[0, ["revenue", "cost"]] = [-10.5, -4.0]  # goods back
    tx.loc[1, ["revenue", "cost"]] = [-20.0, 0.0]  # a credit note
    tx.loc[2, ["revenue", "cost"]] = [-5.0, 3.0]  # neither
    tx.loc[4, ["revenue", "cost"]] = [12.0, -6.0]  # neither
    result = validate(tmp_path, tables, fmt)

    problem = only(result, "transactions", "opposite_signs")
    assert (problem.column, problem.count, problem.example_rows) == ("cost", 2, [2, 4])
    assert problem.examples == ([("3.0", "-5.0"), ("-6.0", "12.0")] if fmt == "csv"
                                else [(3.0, -5.0), (-6.0, 12.0)])
    assert problem.message() == (
        "transactions.cost: 2 rows of the other sign than the revenue (examples: "
        "(3.0, -5.0), (-6.0, 12.0); rows 2, 4); expected a cost of the revenue's sign: both zero or above (a sale) "
        "or both zero or below (a return)"
    )
    assert len(result.problems) == 1
    assert_split(result, tables, "transactions", {2, 4})
    assert result.base.transactions["revenue"].tolist()[:2] == [-10.5, -20.0]
    assert result.return_lines == 2 and result.to_dict()["return_lines"] == 2
    assert "2 of the transactions kept are returns or credit notes" in result.render()


def test_non_finite_money_in_csv(tmp_path: Path) -> None:
    base = write_base(tmp_path / "base", valid_tables(), "csv")
    write_csv_text(
        base,
        "interactions",
        """
customer_id,ts,kind,cost_to_serve
C1,2024-03-01 09:00:00,visit,NaN
C2,2024-03-02 09:00:00,support,inf
C4,2024-03-03 09:00:00,complaint,-Infinity
C4,2024-03-04 09:00:00,complaint,
C4,2024-03-05 09:00:00,complaint,1e3
""",
    )
    result = validate_base(base, as_of=AS_OF)

    problem = only(result, "interactions", "non_finite")
    assert (problem.column, problem.count) == ("cost_to_serve", 3)
    assert problem.examples == ["NaN", "inf", "-Infinity"]
    assert problem.message() == (
        "interactions.cost_to_serve: 3 rows not finite (examples: NaN, inf, -Infinity; "
        "rows 0, 1, 2); expected a non-negative, finite amount of currency"
    )
    # The empty cell is a null, not a NaN; -Infinity is not also "negative".
    empty = only(result, "interactions", "not_null")
    assert empty.example_rows == [3]
    assert len(result.problems) == 2
    assert set(result.rejects["interactions"]["_row"]) == {0, 1, 2, 3}
    assert result.base.interactions["cost_to_serve"].tolist() == [1000.0]


def test_non_finite_money_in_parquet(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["invoices"].loc[1, "amount"] = np.inf
    result = validate(tmp_path, tables, "parquet")

    problem = only(result, "invoices", "non_finite")
    assert (problem.column, problem.count, problem.examples) == ("amount", 1, ["inf"])
    assert_message_names(problem)
    assert_split(result, tables, "invoices", {1})


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_compound_key_rejects_every_copy(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    tables["transactions"].loc[[1, 4], ["order_id", "product_category"]] = ["O2", "toys"]
    tables["transactions"].loc[5, ["order_id", "product_category"]] = ["O2", "games"]  # fine
    result = validate(tmp_path, tables, fmt)

    problem = only(result, "transactions", "duplicate_key")
    assert (problem.column, problem.count) == ("order_id+product_category", 2)
    assert problem.examples == [("O2", "toys"), ("O2", "toys")]
    assert problem.message() == (
        "transactions.order_id+product_category: 2 rows with a duplicated key "
        "(examples: (O2, toys), (O2, toys); rows 1, 4); "
        "expected a unique (order_id, product_category) per row"
    )
    assert result.rejects["transactions"]["_row"].tolist() == [1, 4]
    assert result.base.transactions["order_id"].tolist() == ["O1", "O3", "O4", "O2"]
    assert result.base.transactions["product_category"].tolist()[-1] == "games"
    assert_rows_conserved(result)


def test_duplicate_customer_rejects_both_copies_and_their_transactions(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["customers"].loc[3, "customer_id"] = "C3"
    result = validate(tmp_path, tables, "csv")

    problem = only(result, "customers", "duplicate_key")
    assert (problem.column, problem.count, problem.example_rows) == ("customer_id", 2, [2, 3])
    assert problem.expected == "a unique customer_id per row"
    assert_split(result, tables, "customers", {2, 3})
    # Neither copy can be trusted, so C3 and C4 are both unknown downstream.
    unknown = only(result, "transactions", "unknown_customer")
    assert unknown.examples == ["C3", "C4"]
    assert_split(result, tables, "transactions", {3, 4})


def test_null_key_parts_are_not_duplicates(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["invoices"].loc[[0, 1], "invoice_id"] = None
    result = validate(tmp_path, tables, "parquet")

    assert only(result, "invoices", "not_null").count == 2
    assert not [p for p in result.problems if p.check == "duplicate_key"]
    assert set(result.rejects["invoices"]["_row"]) == {0, 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_value_outside_vocabulary(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    tables["interactions"].loc[1, "kind"] = "call"
    result = validate(tmp_path, tables, fmt)

    problem = only(result, "interactions", "not_allowed")
    assert (problem.column, problem.count, problem.examples) == ("kind", 1, ["call"])
    assert problem.message() == (
        "interactions.kind: 1 row not an allowed value (examples: call; rows 1); "
        "expected one of complaint, support, visit, campaign"
    )
    assert_split(result, tables, "interactions", {1})


# --- rules across columns and tables -----------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_invoice_due_or_paid_before_issue(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    tables["invoices"].loc[0, "due_date"] = date(2024, 1, 9)
    tables["invoices"].loc[1, "due_date"] = date(2024, 1, 11)  # same day: fine
    tables["invoices"].loc[2, "paid_date"] = date(2024, 1, 2)
    result = validate(tmp_path, tables, fmt)

    due = only(result, "invoices", "due_before_issue")
    assert (due.column, due.count, due.example_rows) == ("due_date", 1, [0])
    assert due.message() == (
        "invoices.due_date: 1 row due before issue (examples: 2024-01-09; rows 0); "
        "expected a due_date on or after issue_date"
    )
    paid = only(result, "invoices", "paid_before_issue")
    assert (paid.column, paid.count, paid.example_rows) == ("paid_date", 1, [2])
    assert_message_names(paid)
    assert_split(result, tables, "invoices", {0, 2})


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_customer(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    tables["transactions"].loc[3, "customer_id"] = "C9"
    tables["invoices"].loc[0, "customer_id"] = "c1"  # ids are case-sensitive
    result = validate(tmp_path, tables, fmt)

    problem = only(result, "transactions", "unknown_customer")
    assert (problem.column, problem.count, problem.examples) == ("customer_id", 1, ["C9"])
    assert problem.message() == (
        "transactions.customer_id: 1 row with an unknown customer (examples: C9; rows 3); "
        "expected a customer_id of a valid row of customers"
    )
    assert only(result, "invoices", "unknown_customer").example_rows == [0]
    assert_split(result, tables, "transactions", {3})
    assert_split(result, tables, "invoices", {0})


@pytest.mark.parametrize("fmt", FORMATS)
def test_events_on_or_after_as_of(tmp_path: Path, fmt: str) -> None:
    tables = valid_tables()
    tables["transactions"].loc[1, "ts"] = pd.Timestamp("2024-06-01 00:00:00")  # on: too late
    tables["transactions"].loc[2, "ts"] = pd.Timestamp("2024-05-31 23:59:59")  # before: fine
    tables["customers"].loc[3, "signup_date"] = date(2024, 6, 1)
    tables["invoices"].loc[0, "paid_date"] = date(2024, 7, 1)
    tables["invoices"].loc[1, "due_date"] = date(2024, 8, 1)  # due dates may be ahead
    result = validate(tmp_path, tables, fmt)

    ts = only(result, "transactions", "after_as_of")
    assert (ts.column, ts.count, ts.example_rows) == ("ts", 1, [1])
    assert ts.message() == (
        "transactions.ts: 1 row dated too late (examples: 2024-06-01 00:00:00; rows 1); "
        "expected a time before the as-of date 2024-06-01"
    )
    signup = only(result, "customers", "after_as_of")
    assert (signup.column, signup.count) == ("signup_date", 1)
    paid = only(result, "invoices", "after_as_of")
    assert (paid.column, paid.count) == ("paid_date", 1)
    assert_split(result, tables, "customers", {3})
    assert_split(result, tables, "transactions", {1, 4})  # row 4 is C4's
    assert_split(result, tables, "invoices", {0})


def test_without_as_of_events_after_today_are_rejected(tmp_path: Path) -> None:
    tables = valid_tables()
    today = date.today()
    tables["transactions"].loc[0, "ts"] = pd.Timestamp(today) + pd.Timedelta(hours=23)
    tables["transactions"].loc[1, "ts"] = pd.Timestamp(today + timedelta(days=1))
    result = validate(tmp_path, tables, "parquet", as_of=None)

    problem = only(result, "transactions", "after_as_of")
    assert (problem.column, problem.example_rows) == ("ts", [1])
    assert problem.expected == f"a time not in the future (on or before today, {today})"
    assert_split(result, tables, "transactions", {1})


def test_row_failing_several_checks_is_rejected_once_with_every_reason(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["transactions"].loc[2, ["customer_id", "revenue", "cost"]] = ["C9", -1.0, 2.0]
    tables["transactions"].loc[2, "ts"] = pd.Timestamp("2030-01-01")
    result = validate(tmp_path, tables, "csv")

    rejects = result.rejects["transactions"]
    assert rejects["_row"].tolist() == [2]
    assert rejects["_reasons"].tolist() == ["opposite_signs;after_as_of;unknown_customer"]
    assert only(result, "transactions", "after_as_of").count == 1
    assert only(result, "transactions", "opposite_signs").column == "cost"
    assert_split(result, tables, "transactions", {2})


# --- reports and errors ------------------------------------------------------------------


def bad_base(tmp_path: Path) -> Path:
    tables = valid_tables()
    tables["transactions"].loc[[2, 4], "revenue"] = [-5.0, -1.2]  # costs 3.0 and 6.0: not returns
    tables["interactions"].loc[0, "kind"] = "call"
    return write_base(tmp_path / "base", tables, "csv")


def test_write_report_writes_markdown_json_and_rejects(tmp_path: Path) -> None:
    result = validate_base(bad_base(tmp_path), as_of=AS_OF)
    report_path = tmp_path / "out" / "report"
    # A stale rejects file from an earlier run must not survive.
    (report_path / "rejects").mkdir(parents=True)
    (report_path / "rejects" / "customers.parquet").write_bytes(b"stale")

    write_report(result, report_path)

    markdown = (report_path / "report.md").read_text(encoding="utf-8")
    assert "| `transactions` | 6 | 4 | 2 |" in markdown
    for problem in result.problems:
        assert problem.message() in markdown
    payload = json.loads((report_path / "report.json").read_text(encoding="utf-8"))
    assert payload["ok"] is False
    assert payload["row_counts"] == result.row_counts
    assert payload["rejected_counts"]["transactions"] == 2
    assert [(p["table"], p["column"], p["check"], p["count"]) for p in payload["problems"]] == [
        ("transactions", "cost", "opposite_signs", 2),
        ("interactions", "kind", "not_allowed", 1),
    ]
    assert payload["problems"][0]["message"] == result.problems[0].message()
    written = sorted(p.name for p in (report_path / "rejects").iterdir())
    assert written == ["interactions.parquet", "transactions.parquet"]
    rejects = pd.read_parquet(report_path / "rejects" / "transactions.parquet")
    assert rejects["_row"].tolist() == [2, 4]
    assert rejects["_reasons"].tolist() == ["opposite_signs", "opposite_signs"]
    assert rejects["revenue"].tolist() == ["-5.0", "-1.2"]  # raw CSV text, untouched
    assert rejects["order_id"].tolist() == ["O3", "O5"]


def test_write_report_of_valid_base_writes_no_rejects(tmp_path: Path) -> None:
    result = validate(tmp_path, valid_tables(), "parquet")
    write_report(result, tmp_path / "report")

    assert json.loads((tmp_path / "report" / "report.json").read_text())["problems"] == []
    assert not (tmp_path / "report" / "rejects").exists() or not any(
        (tmp_path / "report" / "rejects").iterdir()
    )


def test_load_base_raises_with_every_message(tmp_path: Path) -> None:
    base_path = bad_base(tmp_path)
    with pytest.raises(BaseValidationError) as caught:
        load_base(base_path, as_of=AS_OF)

    error = caught.value
    assert isinstance(error, ValueError)
    assert len(error.result.problems) == 2
    assert str(error).splitlines() == [
        f"base {base_path} failed validation with 2 problems:",
        "- transactions.cost: 2 rows of the other sign than the revenue (examples: (3.0, -5.0), "
        "(6.0, -1.2); rows 2, 4); expected a cost of the revenue's sign: both zero or above (a sale) "
        "or both zero or below (a return)",
        "- interactions.kind: 1 row not an allowed value (examples: call; rows 0); "
        "expected one of complaint, support, visit, campaign",
    ]


def test_rejected_rows_can_be_set_aside_and_the_rest_read(tmp_path: Path, caplog) -> None:
    """``set_aside_rejects``: the rows that pass are read, as if the bad ones had never been in
    the base; the report and the rejected rows are written where `crmscore validate` writes them,
    and a warning counts them. Nothing is lost, and one bad row does not stop a nightly run."""
    import logging

    base_path = bad_base(tmp_path)
    tables = valid_tables()
    clean = load_base(write_base(tmp_path / "clean", {
        **tables,
        "transactions": tables["transactions"].drop(index=[2, 4]),
        "interactions": tables["interactions"].drop(index=[0]),
    }, "csv"), as_of=AS_OF)
    with caplog.at_level(logging.WARNING, logger="crmscore.features.validate"):
        read = load_base(base_path, as_of=AS_OF, set_aside_rejects=True)
    for name, df in clean.tables().items():
        pd.testing.assert_frame_equal(read.tables()[name].reset_index(drop=True), df.reset_index(drop=True), obj=name)
    rejects = pd.read_parquet(base_path / "_validation" / "rejects" / "transactions.parquet")
    assert rejects["revenue"].tolist() == ["-5.0", "-1.2"]
    assert (base_path / "_validation" / "report.md").is_file()
    assert "transactions 2 of 6, interactions 1 of 3" in caplog.text and "set aside" in caplog.text
    assert read.set_aside == {"transactions": 2, "interactions": 1} and clean.set_aside == {}


def test_features_command_sets_rejects_aside_only_when_asked(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crmscore.cli import app
    from crmscore.features.io import snapshot_set_aside

    base_path = bad_base(tmp_path)
    out = tmp_path / "snapshot.parquet"
    args = ["features", "--base", str(base_path), "--as-of", "2024-01-07", "--out", str(out)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and not out.exists()
    assert "--set-aside-rejects" in " ".join(refused.output.split())
    done = CliRunner().invoke(app, [*args, "--set-aside-rejects"])
    assert done.exit_code == 0, done.output
    assert len(pd.read_parquet(out)) == 4
    assert (base_path / "_validation" / "rejects" / "interactions.parquet").is_file()
    # the snapshot says what it was built without; a clean base's says "none"
    assert snapshot_set_aside(out) == "transactions 2, interactions 1"
    clean = write_base(tmp_path / "clean", valid_tables(), "csv")
    assert CliRunner().invoke(app, ["features", "--base", str(clean), "--as-of", "2024-01-07",
                                    "--out", str(out)]).exit_code == 0
    assert snapshot_set_aside(out) == "none"
    assert snapshot_set_aside(tmp_path) is None  # a folder of parts (Spark's) does not say


@pytest.mark.parametrize("defect", ["a missing column", "every row of a table"])
def test_what_cannot_be_set_aside_row_by_row_still_stops(tmp_path: Path, defect: str) -> None:
    tables = valid_tables()
    if defect == "a missing column":
        tables["transactions"] = tables["transactions"].drop(columns=["cost"])
    else:  # a table in the wrong form, not bad rows
        tables["transactions"]["ts"] = "2024-01-01 10:30:00+02:00"
    with pytest.raises(BaseValidationError):
        load_base(write_base(tmp_path / "base", tables, "csv"), as_of=AS_OF, set_aside_rejects=True)


def test_load_base_returns_typed_base_when_valid(tmp_path: Path) -> None:
    base = load_base(write_base(tmp_path / "base", valid_tables(), "csv"), as_of=AS_OF)

    assert isinstance(base, Base)
    assert base.transactions["customer_id"].dtype == TEXT


def test_every_check_id_is_documented() -> None:
    assert set(CHECKS) == {
        "missing_table", "missing_column", "wrong_type", "unparseable_date", "not_null",
        "non_finite", "negative", "not_allowed", "duplicate_key", "due_before_issue",
        "paid_before_issue", "opposite_signs", "after_as_of", "unknown_customer",
    }  # fmt: skip


def test_coerce_table_types_columns_and_reports_bad_cells() -> None:
    raw = pd.DataFrame(
        {"customer_id": ["1", "2"], "ts": ["2024-01-01 10:00", "?"], "kind": ["visit", "x"],
         "cost_to_serve": ["1.5", "-"]}
    )  # fmt: skip
    typed, problems = coerce_table(TABLES["interactions"], raw)

    assert typed["ts"].tolist()[0] == pd.Timestamp("2024-01-01 10:00")
    assert typed["cost_to_serve"].dtype == np.dtype("float64")
    assert [(p.column, p.check, p.example_rows) for p in problems] == [
        ("ts", "unparseable_date", [1]),
        ("cost_to_serve", "wrong_type", [1]),
    ]


# --- the vectorised checks against a slow, obviously correct reference --------------------


def reference_failures(
    df: pd.DataFrame, customers: set[str], as_of: date
) -> dict[int, set[tuple[str, str]]]:
    """Row by row, in plain Python: the (column, check id) pairs each CSV transaction fails."""
    limit = datetime(as_of.year, as_of.month, as_of.day)
    keys: dict[tuple, list[int]] = {}
    out: dict[int, set[tuple[str, str]]] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        fails = set()
        if row.customer_id is None:
            fails.add(("customer_id", "not_null"))
        elif row.customer_id not in customers:
            fails.add(("customer_id", "unknown_customer"))
        if row.ts is None:
            fails.add(("ts", "not_null"))
        else:
            try:
                if datetime.fromisoformat(row.ts) >= limit:
                    fails.add(("ts", "after_as_of"))
            except ValueError:
                fails.add(("ts", "unparseable_date"))
        amounts = {}
        for column in ("revenue", "cost"):
            text = getattr(row, column)
            if text is None:
                fails.add((column, "not_null"))
                continue
            try:
                value = float(text)
            except ValueError:
                fails.add((column, "wrong_type"))
                continue
            if not np.isfinite(value):
                fails.add((column, "non_finite"))
            else:
                amounts[column] = value
        # A sale has both amounts >= 0, a return both <= 0 (either may be negative).
        if len(amounts) == 2 and amounts["revenue"] * amounts["cost"] < 0:
            fails.add(("cost", "opposite_signs"))
        keys.setdefault((row.order_id, row.product_category), []).append(i)
        out[i] = fails
    for rows in keys.values():
        if len(rows) > 1:
            for i in rows:
                out[i].add(("order_id+product_category", "duplicate_key"))
    return {i: fails for i, fails in out.items() if fails}


def test_transactions_checks_match_a_row_by_row_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    n = 400

    def pick(values: list) -> list:
        return [values[i] for i in rng.integers(0, len(values), n)]

    df = pd.DataFrame(
        {
            "customer_id": pick(["C1", "C2", "C3", "C4", "C9", None]),
            "ts": pick(["2024-01-02 10:00:00", "2024-05-31", "2024-06-01 00:00:00",
                        "2024-02-30", "soon", None]),
            "order_id": [f"O{i}" for i in rng.integers(0, 300, n)],
            "product_category": pick(["books", "toys"]),
            "revenue": pick(["10.5", "0", "-3", "abc", "NaN", "inf", "1e2", None]),
            "cost": pick(["1", "2.5", "-0.5", "x", None]),
        }
    )  # fmt: skip
    tables = valid_tables()
    tables["transactions"] = df
    result = validate_base(write_base(tmp_path / "base", tables, "csv"), as_of=AS_OF)

    expected = reference_failures(df, {"C1", "C2", "C3", "C4"}, AS_OF)
    rejects = result.rejects["transactions"]
    got = dict(zip(rejects["_row"], rejects["_reasons"].str.split(";").map(set), strict=True))
    assert got == {i: {check for _, check in fails} for i, fails in expected.items()}
    counts = Counter(pair for fails in expected.values() for pair in fails)
    problems = [p for p in result.problems if p.table == "transactions"]
    assert {(p.column, p.check): p.count for p in problems} == counts
    assert len(result.base.transactions) == n - len(expected)


# --- the synthetic base satisfies the contract --------------------------------------------


def test_synthetic_base_is_valid_and_loads_as_its_typed_frames(
    tmp_path: Path, synthetic_small: SyntheticBase
) -> None:
    write_synthetic_base(synthetic_small, tmp_path / "base")
    result = validate_base(tmp_path / "base", as_of=END)

    assert result.ok, [p.message() for p in result.problems]
    expected = synthetic_small.to_base()
    for name, df in result.base.tables().items():
        pd.testing.assert_frame_equal(df, expected.tables()[name])
