"""Check a raw base against the data contract, keep the good rows, explain the bad ones.

The contract lives in :mod:`crmscore.features.schema`; this module turns it into checks.
Validation runs in three stages, all vectorised:

1. **Coercion** (:func:`coerce_table`): every contract column is converted to its logical
   dtype. Cells that cannot be converted (text in a money column, an unparseable date, a
   float ID such as ``1.5``, a non-finite amount) become null in the typed frame and are
   reported as ``wrong_type``, ``unparseable_date`` or ``non_finite``. This stage is plain
   pandas/pyarrow because pandera's own coercion cannot tell an empty cell from an
   unparseable one, and does not know our text conventions (ISO dates, integer IDs).
2. **Per-table checks** from a pandera schema: a :class:`pandera.pandas.DataFrameSchema`
   is built from the contract (:func:`build_table_schema`). pandera's lazy validation
   checks the structure (``missing_column``; dtypes) and its failure cases name the
   columns. The row-level parts of the same schema (nullability, each column's named
   ``Check``, the unique key) are evaluated as vectorised calls whose boolean output gives
   the rows (``not_null``, ``negative``, ``not_allowed``, ``after_as_of``,
   ``duplicate_key``). Why not lazy validation for rows too: pandera formats and sorts
   every failing value in Python: with 5M transactions all failing the as-of check, about
   a minute went into that reporting alone, against ~6 s for the whole validation this
   way, so at 20M rows one systematic defect (say, a wrong ``--as-of``) took minutes.
3. **Rules across columns and tables** in pandas: invoice date order, a transaction's
   revenue and cost of one sign (a sale or a return), and customers unknown to the (valid)
   customers table.

A row failing any check is rejected with all its reasons; nothing is dropped silently:
for every table, rows read = rows kept + rows rejected. Row numbers are 0-based positions
of data rows in the file (the header is not counted; in a CSV, row ``r`` is line ``r + 2``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
from pandera.config import ValidationDepth, config_context

from crmscore.features.io import Base, read_base_raw, write_parquet_atomic, written_date_format
from crmscore.features.schema import TABLES, Column, Kind, Table

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKS",
    "BaseValidationError",
    "Problem",
    "ValidationResult",
    "build_table_schema",
    "coerce_table",
    "load_base",
    "validate_base",
    "validate_frames",
    "write_report",
]

#: Check ids, in report order, with what each one means.
CHECKS: dict[str, str] = {
    "missing_table": "a required table is absent",
    "missing_column": "a required column is absent; every row of the table is rejected",
    "wrong_type": "the value has a type that cannot be read as the column's kind",
    "unparseable_date": "text in a date or timestamp column that is not an ISO date/time",
    "not_null": "empty value in a column that must be filled",
    "non_finite": "money that is NaN or infinite",
    "negative": "money below zero",
    "not_allowed": "value outside the column's closed vocabulary",
    "duplicate_key": "several rows share a key; all of them are rejected",
    "due_before_issue": "invoice due_date before its issue_date",
    "paid_before_issue": "invoice paid_date before its issue_date",
    "opposite_signs": "transaction line whose revenue and cost have opposite signs",
    "after_as_of": "event dated on or after the as-of date (or in the future)",
    "unknown_customer": "customer_id not among the valid customers",
}

#: How each check reads in a message: "<table>.<column>: <n> rows <label> (...)".
_LABELS: dict[str, str] = {
    "missing_table": "missing",
    "missing_column": "rejected: column missing",
    "wrong_type": "of the wrong type",
    "unparseable_date": "with an unparseable date",
    "not_null": "empty",
    "non_finite": "not finite",
    "negative": "negative",
    "not_allowed": "not an allowed value",
    "duplicate_key": "with a duplicated key",
    "due_before_issue": "due before issue",
    "paid_before_issue": "paid before issue",
    "opposite_signs": "of the other sign than the revenue",
    "after_as_of": "dated too late",
    "unknown_customer": "with an unknown customer",
}

_CHECK_ORDER = {check: i for i, check in enumerate(CHECKS)}

#: Dtypes of the typed frames in :class:`~crmscore.features.io.Base`, by logical kind.
TEXT_DTYPE = pd.StringDtype("pyarrow")
_DTYPES: dict[Kind, Any] = {
    Kind.ID: TEXT_DTYPE,
    Kind.STRING: TEXT_DTYPE,
    Kind.DATE: np.dtype("datetime64[ns]"),
    Kind.TIMESTAMP: np.dtype("datetime64[ns]"),
    Kind.MONEY: np.dtype("float64"),
    Kind.SIGNED_MONEY: np.dtype("float64"),
}

#: What a good value looks like, by logical kind (the "expected ..." of a message).
_EXPECTED: dict[Kind, str] = {
    Kind.ID: "an identifier (text or integer)",
    Kind.STRING: "a text label",
    Kind.DATE: "a date like 2024-01-31 (or the whole column in one written format, like 31.01.2024)",
    Kind.TIMESTAMP: "a timestamp like 2024-01-31 14:05:00 (local time: an offset such as +02:00 only with the "
                    "company's time zone given, --timezone; or the whole column in one written format, like "
                    "31.01.2024 14:05)",
    Kind.MONEY: "a non-negative, finite amount of currency",
    Kind.SIGNED_MONEY: "a finite amount of currency (negative for a return or a credit note)",
}

#: Event columns checked against the as-of date besides each table's ``time_column``.
#: (invoices.due_date is deliberately absent: a due date may lie in the future.)
_EXTRA_EVENT_COLUMNS: dict[str, tuple[str, ...]] = {"invoices": ("paid_date",)}

#: Date-order rules (table, later column, earlier column, check id): later >= earlier.
_DATE_ORDER_RULES: tuple[tuple[str, str, str, str], ...] = (
    ("invoices", "due_date", "issue_date", "due_before_issue"),
    ("invoices", "paid_date", "issue_date", "paid_before_issue"),
)

#: Sign rules (table, column, the column whose sign it must share, check id): a transaction
#: line is a sale (both amounts zero or above) or a return (both zero or below).
_SIGN_RULES: tuple[tuple[str, str, str, str], ...] = (
    ("transactions", "cost", "revenue", "opposite_signs"),
)

_MAX_EXAMPLES = 5

# A trailing time-zone designator after a time of day: "...10:00Z", "...10:00:00+01:00".
_OFFSET_RE = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")
_NAN_LITERALS = ("nan", "+nan", "-nan")
# Bounds of datetime64[ns]; values outside cannot be represented downstream.
_NS_MIN = np.datetime64(pd.Timestamp.min.ceil("D").date())
_NS_MAX = np.datetime64(pd.Timestamp.max.floor("D").date())


# --------------------------------------------------------------------------------------
# Public result types
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One kind of defect found in one column of one table.

    Attributes
    ----------
    table : str
        Contract table name, e.g. ``"transactions"``.
    column : str or None
        Column concerned; for a compound key the key columns joined by ``"+"``; None for a
        table-level problem.
    check : str
        Check id, one of :data:`CHECKS`.
    count : int
        Number of rows affected.
    examples : list
        Up to 5 offending values, as found in the file (text for CSV), aligned with
        ``example_rows``. Empty for ``not_null`` and ``missing_column``.
    example_rows : list of int
        Up to 5 row numbers (0-based position of the data row in the file).
    expected : str
        What a good value looks like, e.g. ``"a date like 2024-01-31"``.
    """

    table: str
    column: str | None
    check: str
    count: int
    examples: list = field(default_factory=list)
    example_rows: list[int] = field(default_factory=list)
    expected: str = ""

    def message(self) -> str:
        """Describe the problem in one line: where, how many, examples, what was expected.

        Examples
        --------
        >>> Problem("transactions", "revenue", "negative", 3, [-5.0, -1.2], [4, 9],
        ...         "a non-negative, finite amount of currency").message()
        'transactions.revenue: 3 rows negative (examples: -5.0, -1.2; rows 4, 9); expected a non-negative, finite amount of currency'
        """
        where = self.table if self.column is None else f"{self.table}.{self.column}"
        if self.check == "missing_table":
            return f"{where}: table missing; expected {self.expected}"
        if self.check == "missing_column":
            return (
                f"{where}: column missing, so all {self.count} {_rows(self.count)} are rejected; "
                f"expected {self.expected}"
            )
        details = []
        if self.examples:
            details.append("examples: " + ", ".join(_format_example(v) for v in self.examples))
        if self.example_rows:
            details.append("rows " + ", ".join(str(r) for r in self.example_rows))
        detail = f" ({'; '.join(details)})" if details else ""
        label = _LABELS.get(self.check, f"failing {self.check}")
        return (
            f"{where}: {self.count} {_rows(self.count)} {label}{detail}; expected {self.expected}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the problem as a JSON-ready dict, its message included."""
        out = asdict(self)
        out["examples"] = [list(v) if isinstance(v, tuple) else v for v in self.examples]
        out["message"] = self.message()
        return out


@dataclass
class ValidationResult:
    """Outcome of validating a base.

    Attributes
    ----------
    problems : list of Problem
        Every defect found, ordered by table, column and check.
    base : Base
        Typed frames holding only the rows that passed every check.
    rejects : dict of str to DataFrame
        Per table read, the rejected rows with their original raw values plus ``_row``
        (0-based position in the file) and ``_reasons`` (";"-joined check ids). Empty
        frames for tables without rejects.
    row_counts : dict of str to int
        Rows read per table.
    """

    problems: list[Problem]
    base: Base
    rejects: dict[str, pd.DataFrame]
    row_counts: dict[str, int]

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def render(self) -> str:
        """Render the result as a Markdown report: row counts per table, then every problem."""
        lines = ["# Base validation report", ""]
        lines.append(f"Result: {'valid' if self.ok else f'{len(self.problems)} problem(s) found'}.")
        lines += ["", "| table | rows read | rows kept | rows rejected |", "|---|---:|---:|---:|"]
        for name, n_read in self.row_counts.items():
            n_rejected = len(self.rejects.get(name, ()))
            lines.append(f"| `{name}` | {n_read} | {n_read - n_rejected} | {n_rejected} |")
        if self.return_lines:
            lines += ["", f"{self.return_lines} of the transactions kept are returns or credit notes (a negative "
                      "revenue or cost): they net against revenue and margin and are not purchases."]
        if self.credit_notes:
            lines += ["", f"{self.credit_notes} of the invoices kept are credit notes (a negative amount): they "
                      "lower the outstanding balance while open and are no invoices to be late with or default on."]
        lines += ["", "## Problems", ""]
        if self.problems:
            lines += [f"- {p.message()}" for p in self.problems]
        else:
            lines.append("None.")
        return "\n".join(lines) + "\n"

    @property
    def return_lines(self) -> int:
        """Transactions kept that are returns or credit notes (``schema.py``)."""
        tx = self.base.transactions
        if tx is None or not {"revenue", "cost"} <= set(tx.columns):
            return 0
        return int(((tx["revenue"] < 0) | (tx["cost"] < 0)).sum())

    @property
    def credit_notes(self) -> int:
        """Invoices kept that are credit notes (a negative amount, ``schema.py``)."""
        inv = self.base.invoices
        return 0 if inv is None or "amount" not in inv.columns else int((inv["amount"] < 0).sum())

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict (problems, row counts, rejected counts, the
        transactions kept that are returns, the invoices kept that are credit notes)."""
        return {
            "ok": self.ok,
            "row_counts": dict(self.row_counts),
            "rejected_counts": {name: len(df) for name, df in self.rejects.items()},
            "return_lines": self.return_lines,
            "credit_notes": self.credit_notes,
            "problems": [p.to_dict() for p in self.problems],
        }


class BaseValidationError(ValueError):
    """A base failed validation; ``.result`` holds the full :class:`ValidationResult`."""

    def __init__(self, result: ValidationResult, base_path: Path | None = None) -> None:
        self.result = result
        self.base_path = base_path
        where = f"base {base_path}" if base_path is not None else "base"
        n = len(result.problems)
        head = f"{where} failed validation with {n} problem{'s' if n != 1 else ''}:"
        super().__init__("\n".join([head, *(f"- {p.message()}" for p in result.problems)]))


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def validate_base(base_path: Path, *, as_of: date | None = None, timezone: str | None = None) -> ValidationResult:
    """Read a base folder and check it against the data contract.

    Parameters
    ----------
    base_path : Path
        Folder with one file per table (``customers.parquet`` or ``customers.csv``, ...).
    as_of : date, optional
        Events on or after this day are rejected (``after_as_of``). Default: events after
        today (``date.today()``) are rejected.
    timezone : str, optional
        The company's time zone (IANA, ``Europe/Berlin``). Timestamps that carry an offset
        (``2024-05-29 15:47:16+02:00``, ``...Z``; time-zone-aware Parquet columns) are converted
        to its local time, which is what the contract's naive timestamps are. Without it they
        are rejected: converting needs the zone, and guessing it would shift events by hours.

    Returns
    -------
    ValidationResult
        Problems, typed frames of the good rows, rejected raw rows and row counts.

    Raises
    ------
    crmscore.features.io.BaseNotFoundError
        If the folder or a required table does not exist.
    """
    frames = read_base_raw(Path(base_path))
    return validate_frames(frames, as_of=as_of, timezone=timezone)


def validate_frames(
    frames: Mapping[str, pd.DataFrame], *, as_of: date | None = None, timezone: str | None = None
) -> ValidationResult:
    """Check raw frames against the data contract; the pure core of :func:`validate_base`.

    Parameters
    ----------
    frames : mapping of str to DataFrame
        Raw tables by contract name, as :func:`crmscore.features.io.read_base_raw` returns
        them (CSV as text, Parquet as stored). Rows are numbered by position.
    as_of, timezone : optional
        See :func:`validate_base`.

    Returns
    -------
    ValidationResult
        A required table absent from ``frames`` is a ``missing_table`` problem and gets
        an empty typed frame.
    """
    limit, limit_text = _as_of_limit(as_of)
    zone = check_timezone(timezone)
    problems: list[Problem] = []
    typed_kept: dict[str, pd.DataFrame | None] = {}
    rejects: dict[str, pd.DataFrame] = {}
    row_counts: dict[str, int] = {}
    valid_customer_ids: pd.Series | None = None

    for name, table in TABLES.items():
        raw = frames.get(name)
        if raw is None:
            if table.required:
                expected = f"a file {name}.parquet or {name}.csv in the base"
                problems.append(Problem(name, None, "missing_table", 0, [], [], expected))
                typed_kept[name] = _empty_typed(table)
                row_counts[name] = 0
            else:
                typed_kept[name] = None
            continue
        decimal = raw.attrs.get("decimal", ".")  # a CSV's decimal mark (io.read_table_raw)
        raw = _positional(raw)
        typed, findings = _check_table(table, raw, limit=limit, limit_text=limit_text, decimal=decimal, zone=zone)
        if table.references_customers and valid_customer_ids is not None:
            findings += _check_customers_known(typed, valid_customer_ids)
        kept, rejected, table_problems = _split(table, raw, typed, findings)
        problems += table_problems
        typed_kept[name] = kept
        rejects[name] = rejected
        row_counts[name] = len(raw)
        if name == "customers":
            valid_customer_ids = kept["customer_id"]
        logger.info("validated %s: %d rows read, %d rejected", name, len(raw), len(rejected))

    base = Base(
        customers=typed_kept["customers"],
        transactions=typed_kept["transactions"],
        invoices=typed_kept.get("invoices"),
        interactions=typed_kept.get("interactions"),
    )
    return ValidationResult(problems=problems, base=base, rejects=rejects, row_counts=row_counts)


#: problems no row can be set aside for: a table or a column the contract needs is absent
STRUCTURAL_CHECKS = ("missing_table", "missing_column")


def load_base(
    base_path: Path, *, as_of: date | None = None, set_aside_rejects: bool = False, timezone: str | None = None
) -> Base:
    """Validate a base and return its typed frames.

    Parameters
    ----------
    base_path : Path
        Base folder, see :func:`validate_base`.
    as_of, timezone : optional
        See :func:`validate_base`.
    set_aside_rejects : bool
        Go on with the rows that pass when some rows fail: the report and the rejected rows
        are written to ``<base>/_validation`` (:func:`write_report`), as ``crmscore validate``
        writes them, and a warning counts them. A nightly run then scores everyone else
        instead of stopping at one bad row. A missing table or column, or a table whose every
        row fails (nothing to set aside row by row: the table is in the wrong form), still
        raises.

    Returns
    -------
    Base
        Typed frames; every row passed every check.

    Raises
    ------
    BaseValidationError
        If any problem was found (with ``set_aside_rejects``: a missing table or column, or a
        table with every row rejected); ``.result`` holds the details.
    crmscore.features.io.BaseNotFoundError
        If the folder or a required table does not exist.
    """
    result = validate_base(base_path, as_of=as_of, timezone=timezone)
    if result.ok:
        return result.base
    structural = any(p.check in STRUCTURAL_CHECKS for p in result.problems)
    # every row of a table rejected is a table in the wrong form (time-zone offsets on every
    # timestamp, say), not rows to set aside: scoring on without it would be silently wrong
    emptied = any(n and len(result.rejects.get(name, ())) == n for name, n in result.row_counts.items())
    if not set_aside_rejects or structural or emptied:
        raise BaseValidationError(result, Path(base_path))
    report = Path(base_path) / "_validation"
    write_report(result, report)
    set_aside = {name: len(rows) for name, rows in result.rejects.items() if len(rows)}
    counts = ", ".join(f"{name} {n:,} of {result.row_counts[name]:,}" for name, n in set_aside.items())
    logger.warning("%s: rows that fail the data contract set aside (%s; %d problem(s)); going on with the "
                   "rows that pass; report and rejected rows in %s", base_path, counts, len(result.problems), report)
    return dataclasses.replace(result.base, set_aside=set_aside)


def write_report(result: ValidationResult, report_path: Path) -> None:
    """Write a validation result to a folder.

    Writes ``report.md`` (:meth:`ValidationResult.render`), ``report.json`` (problems as
    dicts, row counts, rejected counts) and ``rejects/<table>.parquet`` for each table with
    rejected rows. A stale ``rejects/<table>.parquet`` from an earlier run is removed when
    the table now has no rejects, so the folder always describes this result.

    Parameters
    ----------
    result : ValidationResult
        What :func:`validate_base` returned.
    report_path : Path
        Output folder, created if needed.
    """
    report_path = Path(report_path)
    report_path.mkdir(parents=True, exist_ok=True)
    (report_path / "report.md").write_text(result.render(), encoding="utf-8")
    payload = json.dumps(result.to_dict(), indent=2, allow_nan=False, default=str)
    (report_path / "report.json").write_text(payload + "\n", encoding="utf-8")
    rejects_path = report_path / "rejects"
    for name in TABLES:
        target = rejects_path / f"{name}.parquet"
        rejected = result.rejects.get(name)
        if rejected is not None and len(rejected):
            write_parquet_atomic(rejected, target)
        else:
            target.unlink(missing_ok=True)


def build_table_schema(table: Table, *, limit: pd.Timestamp) -> pa.DataFrameSchema:
    """Build the pandera schema of one contract table, for typed frames.

    Each check is named by its check id (see :data:`CHECKS`) so that failure cases map
    straight back to problems. Nullability and dtypes come from the contract; money must be
    non-negative (signed money, a transaction's revenue and cost, may be negative); closed
    vocabularies are enforced; event columns must fall before ``limit``; the table key must
    be unique (all copies reported).

    Parameters
    ----------
    table : Table
        Contract table.
    limit : Timestamp
        Event times on or after this instant fail ``after_as_of``.

    Returns
    -------
    pandera.pandas.DataFrameSchema
    """
    event_columns = _event_columns(table)
    columns = {}
    for col in table.columns:
        checks = []
        if col.kind is Kind.MONEY:
            checks.append(pa.Check(_non_negative, name="negative"))
        if col.allowed:
            checks.append(pa.Check(_member_of(col.allowed), name="not_allowed"))
        if col.name in event_columns:
            checks.append(pa.Check(_before(limit), name="after_as_of"))
        columns[col.name] = pa.Column(
            _DTYPES[col.kind], checks=checks, nullable=col.nullable, required=True
        )
    return pa.DataFrameSchema(
        columns,
        name=table.name,
        unique=list(table.key) or None,
        report_duplicates="all",
        strict=False,
    )


def coerce_table(table: Table, df: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
    """Convert the contract columns of a raw frame to their typed dtypes.

    ID and STRING become ``string[pyarrow]`` (integers as decimal text), DATE becomes
    ``datetime64[ns]`` at midnight, TIMESTAMP ``datetime64[ns]``, (SIGNED_)MONEY ``float64``. Cells
    that cannot be converted become null and are reported; columns already in the right
    dtype are passed through without conversion. Absent contract columns are skipped
    (they are a ``missing_column`` problem of :func:`validate_frames`); extra customer
    columns are kept as read, other extra columns are dropped.

    Parameters
    ----------
    table : Table
        Contract table.
    df : DataFrame
        Raw frame; rows are numbered by position.

    Returns
    -------
    typed : DataFrame
        Same rows, typed columns.
    problems : list of Problem
        ``wrong_type``, ``unparseable_date`` and ``non_finite`` problems.
    """
    raw = _positional(df)
    typed, findings = _coerce(table, raw)
    return typed, [_to_problem(table, raw, f) for f in findings]


# --------------------------------------------------------------------------------------
# Findings: problems before examples are drawn
# --------------------------------------------------------------------------------------


@dataclass
class _Finding:
    """Rows of one table failing one check in one column (all of them, not 5)."""

    column: str | None
    check: str
    rows: np.ndarray  # sorted unique int64 positions
    expected: str
    #: raw columns the examples are drawn from; empty for no examples
    example_columns: tuple[str, ...] = ()


def _check_table(
    table: Table, raw: pd.DataFrame, *, limit: pd.Timestamp, limit_text: str, decimal: str = ".",
    zone: ZoneInfo | None = None,
) -> tuple[pd.DataFrame, list[_Finding]]:
    """Run the checks of one table alone; return its typed frame and what failed."""
    typed, findings = _coerce(table, raw, decimal, zone)
    findings += _run_pandera(table, typed, findings, limit=limit, limit_text=limit_text)
    findings += _check_date_order(table, typed)
    findings += _check_signs(table, typed)
    return typed, findings


def _coerce(
    table: Table, raw: pd.DataFrame, decimal: str = ".", zone: ZoneInfo | None = None
) -> tuple[pd.DataFrame, list[_Finding]]:
    """Coerce the contract columns; ``decimal`` is the file's decimal mark (``,`` in a CSV of a
    decimal-comma locale, which its amounts are read with); ``zone`` the company's time zone,
    which timestamps with an offset are converted to (without it they are rejected)."""
    findings: list[_Finding] = []
    typed: dict[str, pd.Series] = {}
    for col in table.columns:
        if col.name not in raw.columns:
            continue
        column = raw[col.name]
        if decimal == "," and col.kind in (Kind.MONEY, Kind.SIGNED_MONEY):
            column = _decimal_comma_to_point(column)
        if zone is not None and col.kind in (Kind.DATE, Kind.TIMESTAMP):
            column = _to_local_time(column, zone)
        series, bad = _COERCERS[col.kind](column)
        typed[col.name] = series
        for check, mask in bad.items():
            rows = np.flatnonzero(mask)
            if len(rows):
                findings.append(_Finding(col.name, check, rows, _EXPECTED[col.kind], (col.name,)))
    extra = [c for c in raw.columns if c not in typed and c not in table.column_names]
    if extra and table.allows_extra:
        for name in extra:
            typed[name] = _read_attribute(_decimal_comma_to_point(raw[name]) if decimal == "," else raw[name])
    elif extra:
        logger.warning(
            "%s: ignoring column(s) %s not in the contract (expected only %s)",
            table.name,
            ", ".join(map(str, extra)),
            ", ".join(table.column_names),
        )
    return pd.DataFrame(typed, index=raw.index, copy=False), findings


#: a number written with a decimal comma, its thousands grouped by dots or not: 1.234,5 or 83,56
_DECIMAL_COMMA = r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+)(?:,\d+)?"


def _decimal_comma_to_point(s: pd.Series) -> pd.Series:
    """The numbers of a column written with decimal commas (``83,56``, ``1.234,56``), as text
    with a decimal point, when some cell of it has a comma; other cells and other columns are
    unchanged (so ``1.5`` in a column without commas stays 1.5, and text stays text)."""
    if not _is_text(s):
        return s
    text = s.astype(TEXT_DTYPE)
    if not text.str.contains(",", regex=False).any():
        return s
    stripped = text.str.strip()
    written = stripped.str.fullmatch(_DECIMAL_COMMA).fillna(False).to_numpy(bool)
    converted = stripped.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    return text.where(~written, converted)


def _read_attribute(s: pd.Series) -> pd.Series:
    """An extra customer column, as the features will read it. Text (every CSV column is text)
    whose every value is a number is numbers, ``true``/``false`` (any case) booleans (as 1.0 /
    0.0, the features' encoding), an ISO date or timestamp, or a date written in one format
    (``io.written_date_format``), dates; other text stays text, a category. So a customer's
    age is a number and a contract end date becomes ``days_since_<column>`` whether the base
    is CSV or Parquet. Parquet's booleans and dates
    with missing cells, which pandas reads as Python objects, become numbers and dates too;
    columns of other types (Parquet numbers, dates, categoricals) are kept as they are.
    Missing cells stay missing."""
    if isinstance(s.dtype, pd.CategoricalDtype) or not _is_text_like(s.dtype):
        return s
    if not _is_text(s):  # Python objects: Parquet's booleans and dates with missing values come so
        values = s.dropna()
        if values.map(lambda v: isinstance(v, bool | np.bool_)).all():
            return s.map(lambda v: float(v) if isinstance(v, bool | np.bool_) else np.nan).astype("float64")
        if values.map(lambda v: isinstance(v, date)).all():  # datetime is a date too
            return _parse_datetimes(s)
        return s
    text = s.astype(TEXT_DTYPE).str.strip()
    present = text.notna().to_numpy()
    if not present.any():
        return s
    numbers, _, not_numbers = _parse_numbers(text)  # as money columns are read
    if not not_numbers.any():
        return pd.Series(numbers, index=s.index)
    lowered = text.str.lower()
    if lowered[present].isin(("true", "false")).all():
        return lowered.map({"true": 1.0, "false": 0.0}).astype("float64")
    dates = _parse_datetimes(text)
    if dates[present].notna().all():
        return dates
    if (fmt := written_date_format(text[present], f"customers column {s.name!r}")) is not None:
        return pd.to_datetime(text, format=fmt, errors="coerce").astype("datetime64[ns]")
    return s


def _run_pandera(
    table: Table,
    typed: pd.DataFrame,
    coerce_findings: list[_Finding],
    *,
    limit: pd.Timestamp,
    limit_text: str,
) -> list[_Finding]:
    """Run the table's pandera schema on its typed frame, in two tiers.

    Schema-level checks (columns present, dtypes) go through pandera's lazy validation and
    its failure cases. Row-level checks (nullability, each column ``Check``, key
    uniqueness) are read from the same schema and run as vectorised calls whose boolean
    output gives the rows: pandera's lazy failure-case reporting formats and sorts every
    failing value in Python, about a minute for 5M failing rows (see the module notes).
    """
    schema = build_table_schema(table, limit=limit)
    n = len(typed)
    findings = []
    # pandera counts nullability as schema-level; it is checked with the row-level checks.
    structure = schema.update_columns({name: {"nullable": True} for name in schema.columns})
    with config_context(validation_depth=ValidationDepth.SCHEMA_ONLY):
        try:
            structure.validate(typed, lazy=True, inplace=True)
        except pa.errors.SchemaErrors as err:
            findings += _schema_level_findings(table, err.failure_cases, n)

    # A cell that could not be coerced is null in the typed frame; it was reported already.
    coerced_away: dict[str | None, np.ndarray] = {}
    for f in coerce_findings:
        mask = coerced_away.setdefault(f.column, np.zeros(n, dtype=bool))
        mask[f.rows] = True

    for name, column in schema.columns.items():
        if name not in typed:
            continue
        series = typed[name]
        kind = table.column(name).kind
        if not column.nullable:
            empty = series.isna().to_numpy()
            if name in coerced_away:
                empty &= ~coerced_away[name]
            findings.append(_Finding(name, "not_null", np.flatnonzero(empty), _EXPECTED[kind]))
        expected = {"not_allowed": _allowed_text(table.column(name)), "after_as_of": limit_text}
        for check in column.checks:
            passed = check(series).check_output  # nulls are skipped (ignore_na)
            rows = np.sort(passed.index.to_numpy()[~passed.to_numpy(dtype=bool)].astype(np.int64))
            text = expected.get(check.name, _EXPECTED[kind])
            findings.append(_Finding(name, check.name, rows, text, (name,)))

    key = list(schema.unique or ())
    if key and all(k in typed for k in key):
        # Every copy of a duplicated key is rejected: we cannot know which one is right.
        # Rows with an empty key part are not_null problems, not duplicates.
        keys = typed[key]
        duplicated = keys.duplicated(keep=False).to_numpy() & keys.notna().all(axis=1).to_numpy()
        rows = np.flatnonzero(duplicated)
        findings.append(
            _Finding("+".join(key), "duplicate_key", rows, _key_text(table), tuple(key))
        )
    return [f for f in findings if len(f.rows) or f.check == "missing_column"]


def _schema_level_findings(table: Table, failure_cases: pd.DataFrame, n: int) -> list[_Finding]:
    """Turn pandera's schema-level failure cases into findings that concern every row."""
    findings = []
    every_row = np.arange(n, dtype=np.int64)
    for case in failure_cases.itertuples(index=False):
        if case.check == "column_in_dataframe":
            name = str(case.failure_case)
            expected = f"a column named {name} holding {_EXPECTED[table.column(name).kind]}"
            # Kept even for an empty table: the file itself is wrong.
            findings.append(_Finding(name, "missing_column", every_row, expected))
        elif str(case.check).startswith("dtype("):
            # Coercion guarantees the dtypes; a mismatch here would be a gap in coercion.
            name = str(case.column)
            expected = _EXPECTED[table.column(name).kind]
            findings.append(_Finding(name, "wrong_type", every_row, expected, (name,)))
        else:
            raise RuntimeError(f"unexpected pandera schema failure in {table.name}: {case}")
    return findings


def _check_date_order(table: Table, typed: pd.DataFrame) -> list[_Finding]:
    findings = []
    for table_name, later, earlier, check in _DATE_ORDER_RULES:
        if table_name != table.name or later not in typed or earlier not in typed:
            continue
        # NaT compares False, so empty or unparseable dates never fail this rule.
        bad = (typed[later] < typed[earlier]).to_numpy()
        rows = np.flatnonzero(bad)
        if len(rows):
            expected = f"a {later} on or after {earlier}"
            findings.append(_Finding(later, check, rows, expected, (later,)))
    return findings


def _check_signs(table: Table, typed: pd.DataFrame) -> list[_Finding]:
    findings = []
    for table_name, column, other, check in _SIGN_RULES:
        if table_name != table.name or column not in typed or other not in typed:
            continue
        a, b = typed[column].to_numpy(), typed[other].to_numpy()
        # NaN compares False, so empty or unreadable amounts never fail this rule.
        rows = np.flatnonzero(((a > 0) & (b < 0)) | ((a < 0) & (b > 0)))
        if len(rows):
            expected = (f"a {column} of the {other}'s sign: both zero or above (a sale) "
                        "or both zero or below (a return)")
            findings.append(_Finding(column, check, rows, expected, (column, other)))
    return findings


def _check_customers_known(typed: pd.DataFrame, valid_ids: pd.Series) -> list[_Finding]:
    if "customer_id" not in typed:
        return []
    ids = pyarrow.array(typed["customer_id"], from_pandas=True)
    # Arrow's hash lookup; pandas' isin on Arrow strings first copies the value set to Python.
    known = pc.is_in(ids, value_set=pyarrow.array(valid_ids, from_pandas=True).unique())
    # Empty ids are not_null problems already; they are not unknown customers too.
    unknown = pc.and_(pc.invert(known), ids.is_valid()).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(unknown)
    if not len(rows):
        return []
    expected = "a customer_id of a valid row of customers"
    return [_Finding("customer_id", "unknown_customer", rows, expected, ("customer_id",))]


def _split(
    table: Table, raw: pd.DataFrame, typed: pd.DataFrame, findings: list[_Finding]
) -> tuple[pd.DataFrame, pd.DataFrame, list[Problem]]:
    """Turn findings into problems, the kept typed rows and the rejected raw rows."""
    n = len(raw)
    findings = sorted(
        findings, key=lambda f: (_column_position(table, f), _CHECK_ORDER.get(f.check, 99))
    )
    problems = [_to_problem(table, raw, f) for f in findings]

    # One boolean mask per check id, in report order: a row's reasons, deduplicated.
    by_check: dict[str, np.ndarray] = {}
    for f in findings:
        mask = by_check.setdefault(f.check, np.zeros(n, dtype=bool))
        mask[f.rows] = True
    checks = sorted(by_check, key=lambda c: _CHECK_ORDER.get(c, len(_CHECK_ORDER)))
    # Each row's set of reasons as a bit pattern; the few distinct patterns are spelled
    # out once, so millions of rejected rows cost no per-row string work.
    pattern = np.zeros(n, dtype=np.int64)
    for bit, check in enumerate(checks):
        pattern |= by_check[check].astype(np.int64) << bit
    rejected_mask = pattern != 0
    patterns, codes = np.unique(pattern[rejected_mask], return_inverse=True)
    spelled = np.array(
        [";".join(c for bit, c in enumerate(checks) if p >> bit & 1) for p in patterns.tolist()],
        dtype=object,
    )

    rejected = _take_rows(raw, rejected_mask)
    rejected["_row"] = np.flatnonzero(rejected_mask).astype(np.int64)
    rejected["_reasons"] = spelled[codes] if len(codes) else np.array([], dtype=object)

    # Missing contract columns are added, empty, so the typed frame has the full contract.
    for col in table.columns:
        if col.name not in typed:
            typed[col.name] = pd.Series(index=typed.index, dtype=_DTYPES[col.kind])
    order = table.column_names + [c for c in typed.columns if c not in table.column_names]
    if list(typed.columns) != order:
        typed = typed[order]
    kept = typed
    if len(rejected):  # the happy path keeps the frame as it is: no copy of 20M rows
        kept = _take_rows(typed, ~rejected_mask)
    return kept, rejected, problems


def _take_rows(df: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """Rows of ``df`` where ``mask`` holds, renumbered from 0.

    Column by column with a boolean mask: ~2.5x faster than ``df[mask]``, which turns the
    mask into positions and consolidates blocks.
    """
    return pd.DataFrame({name: df[name].array[mask] for name in df.columns}, copy=False)


def _to_problem(table: Table, raw: pd.DataFrame, finding: _Finding) -> Problem:
    rows = finding.rows[:_MAX_EXAMPLES]
    examples: list = []
    if finding.example_columns:
        values = [raw[c].iloc[rows].tolist() for c in finding.example_columns]
        if len(values) == 1:
            examples = [_plain(v) for v in values[0]]
        else:
            examples = [tuple(_plain(v) for v in vs) for vs in zip(*values, strict=True)]
    return Problem(
        table=table.name,
        column=finding.column,
        check=finding.check,
        count=int(len(finding.rows)),
        examples=examples,
        example_rows=[int(r) for r in rows],
        expected=finding.expected,
    )


# --------------------------------------------------------------------------------------
# Coercion of one column; each returns (typed series, {check id: bad-cell mask})
# --------------------------------------------------------------------------------------

_Coerced = tuple[pd.Series, dict[str, np.ndarray]]


def _coerce_text(s: pd.Series) -> _Coerced:
    """ID / STRING -> string[pyarrow]; integers (also integral floats) -> decimal text."""
    s = _unwrap_arrow(s)
    wrong = np.zeros(len(s), dtype=bool)
    dtype = s.dtype
    if dtype == TEXT_DTYPE:
        out = s
    elif pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        wrong = s.notna().to_numpy()
        out = pd.Series(pd.NA, index=s.index, dtype=TEXT_DTYPE)
    elif pd.api.types.is_integer_dtype(dtype):
        out = s.astype(TEXT_DTYPE)
    elif pd.api.types.is_float_dtype(dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(values) & (np.mod(values, 1) == 0)
        wrong = ~np.isnan(values) & ~integral
        out = s.where(integral).astype("Int64").astype(TEXT_DTYPE)
    else:  # object, str, categorical: usually text already
        try:
            out = s.astype(TEXT_DTYPE)
        except (TypeError, ValueError, pyarrow.ArrowException):
            # Mixed Python objects (rare, never from CSV): take each value's text.
            out = s.where(s.isna(), s.astype(str)).astype(TEXT_DTYPE)
    # An empty string is an empty cell (CSV readers already turn "" into null).
    empty = (out == "").fillna(False).to_numpy(dtype=bool)
    if empty.any():
        out = out.mask(empty)
    return out, {"wrong_type": wrong}


def _coerce_money(s: pd.Series) -> _Coerced:
    """MONEY and SIGNED_MONEY -> float64; text parsed as numbers; NaN and infinities are non_finite."""
    s = _unwrap_arrow(s)
    dtype = s.dtype
    n = len(s)
    wrong = np.zeros(n, dtype=bool)
    if pd.api.types.is_bool_dtype(dtype) or not (
        pd.api.types.is_numeric_dtype(dtype) or _is_text_like(dtype)
    ):
        values = np.full(n, np.nan)
        wrong = present = s.notna().to_numpy()
    elif pd.api.types.is_numeric_dtype(dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        present = s.notna().to_numpy()
    else:
        values, present, wrong = _parse_numbers(s)
    with np.errstate(invalid="ignore"):
        non_finite = present & ~wrong & ~np.isfinite(values)
    if wrong.any() or non_finite.any():
        values = np.where(wrong | non_finite, np.nan, values)
    out = pd.Series(values, index=s.index, dtype=np.float64, copy=False)
    return out, {"wrong_type": wrong, "non_finite": non_finite}


def _parse_numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse text (or Decimal) to float64.

    Returns (values, cells that are not empty, cells that are not numbers).
    """
    try:
        # Arrow's parser is ~3x faster than pd.to_numeric and keeps "nan" apart from null.
        arr = pyarrow.array(s, from_pandas=True)
        if pyarrow.types.is_boolean(arr.type) or pyarrow.types.is_temporal(arr.type):
            raise TypeError(arr.type)
        values = pc.cast(arr, pyarrow.float64()).to_numpy(zero_copy_only=False)
        present = arr.is_valid().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float64), present, np.zeros(len(s), dtype=bool)
    except (TypeError, ValueError, pyarrow.ArrowException):
        pass
    present = s.notna().to_numpy()
    values = pd.to_numeric(s, errors="coerce")
    values = np.asarray(pd.Series(values).to_numpy(dtype=np.float64, na_value=np.nan))
    failed = present & np.isnan(values)
    if failed.any():
        # pd.to_numeric turns "NaN" into null: those are numbers, just not finite ones.
        text = s[failed].astype(str).str.strip().str.lower()
        nan_literal = np.zeros(len(s), dtype=bool)
        nan_literal[np.flatnonzero(failed)] = text.isin(_NAN_LITERALS).to_numpy()
        failed &= ~nan_literal
    return values, present, failed


def check_timezone(timezone: str | None) -> ZoneInfo | None:
    """The IANA time zone named ``timezone`` (None for None or blank: MLproject passes every
    parameter, so no zone is ``""`` there); a clear ValueError otherwise."""
    if timezone is None or not timezone.strip():
        return None
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}: expected an IANA name such as Europe/Berlin, "
                         "America/New_York or UTC") from None


def _to_local_time(s: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Timestamps with an offset (text ending in ``+02:00`` or ``Z``, or a time-zone-aware column)
    as naive local times of ``zone``; every other cell unchanged, as text for the coercer."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert(zone).dt.tz_localize(None)
    if not _is_text(s):
        return s
    text = s.astype(TEXT_DTYPE)
    offset = text.str.strip().str.contains(_OFFSET_RE.pattern, regex=True).fillna(False).to_numpy(bool)
    if not offset.any():
        return s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aware = pd.to_datetime(text[offset].str.strip(), format="ISO8601", utc=True, errors="coerce")
    local = aware.dt.tz_convert(zone).dt.tz_localize(None).dt.strftime("%Y-%m-%d %H:%M:%S.%f")
    out = text.copy()
    out[offset] = local.where(aware.notna(), text[offset])  # what does not parse stays, and fails as before
    return out


def _coerce_date(s: pd.Series) -> _Coerced:
    """DATE -> datetime64[ns] at midnight."""
    out, bad = _coerce_timestamp(s)
    return out.dt.normalize(), bad


def _coerce_timestamp(s: pd.Series) -> _Coerced:
    """TIMESTAMP -> naive datetime64[ns]; text must be ISO 8601 without a time-zone offset."""
    s = _unwrap_arrow(s)
    dtype = s.dtype
    n = len(s)
    unparseable = np.zeros(n, dtype=bool)
    wrong = np.zeros(n, dtype=bool)
    if isinstance(dtype, pd.DatetimeTZDtype):
        # Naive local time is the contract; converting would need a zone we do not know.
        out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
        wrong = s.notna().to_numpy()
    elif pd.api.types.is_datetime64_dtype(dtype):
        values = s.to_numpy()
        if values.dtype != np.dtype("datetime64[ns]"):
            in_range = (values >= _NS_MIN) & (values <= _NS_MAX)
            unparseable = ~np.isnat(values) & ~in_range
            values = np.where(unparseable, np.datetime64("NaT"), values).astype("datetime64[ns]")
        out = pd.Series(values, index=s.index, copy=False)
    elif _is_text_like(dtype):
        out = _parse_datetimes(s)
        if _is_text(s) and out.isna().all() and s.notna().any():
            # no ISO date in the whole column: dates written for people, in one format for every
            # cell (29.05.2024, 05/29/2024 15:47), as an export from a spreadsheet writes them
            present = s[s.notna()]
            fmt = written_date_format(present, f"column {s.name!r}")
            if fmt is not None:
                logger.info("column %r: dates read in the format %s", s.name, fmt)
                out = pd.to_datetime(s, format=fmt, errors="coerce").astype("datetime64[ns]")
        failed = out.isna().to_numpy()
        if failed.any():  # only then is it worth telling empty cells from failed ones
            failed &= s.notna().to_numpy()
        if _is_text(s):
            unparseable = failed
        else:
            wrong = failed
    else:  # numbers, booleans: no epoch guessing
        out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
        wrong = s.notna().to_numpy()
    return out, {"wrong_type": wrong, "unparseable_date": unparseable}


def _parse_datetimes(s: pd.Series) -> pd.Series:
    """Parse ISO text (or date/datetime objects) to naive datetime64[ns]; failures NaT."""
    if _is_text(s):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mixed time-zone offsets warn; handled below
            try:
                out = pd.to_datetime(s, format="ISO8601", errors="coerce")
            except (TypeError, ValueError):
                out = None
        if out is not None and out.dtype == np.dtype("datetime64[ns]"):
            return out
        # Slow path, only when some value carries a time-zone offset: those are rejected.
        text = s.astype(TEXT_DTYPE)
        offset = text.str.contains(_OFFSET_RE.pattern, regex=True).fillna(False).to_numpy(bool)
        out = pd.to_datetime(text.mask(offset), format="ISO8601", errors="coerce")
        return out.astype("datetime64[ns]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = pd.to_datetime(s, errors="coerce")
        except (TypeError, ValueError):
            return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    if out.dtype != np.dtype("datetime64[ns]"):
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    return out


_COERCERS: dict[Kind, Callable[[pd.Series], _Coerced]] = {
    Kind.ID: _coerce_text,
    Kind.STRING: _coerce_text,
    Kind.DATE: _coerce_date,
    Kind.TIMESTAMP: _coerce_timestamp,
    Kind.MONEY: _coerce_money,
    Kind.SIGNED_MONEY: _coerce_money,
}


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _non_negative(s: pd.Series) -> pd.Series:
    return s >= 0


def _member_of(allowed: tuple[str, ...]) -> Callable[[pd.Series], pd.Series]:
    def check(s: pd.Series) -> pd.Series:
        return s.isin(allowed)

    return check


def _before(limit: pd.Timestamp) -> Callable[[pd.Series], pd.Series]:
    def check(s: pd.Series) -> pd.Series:
        return s < limit

    return check


def _as_of_limit(as_of: date | None) -> tuple[pd.Timestamp, str]:
    """Return the first instant that is too late, and how it reads in a message."""
    if as_of is None:
        today = date.today()
        limit = pd.Timestamp(today + timedelta(days=1))
        return limit, f"a time not in the future (on or before today, {today.isoformat()})"
    if isinstance(as_of, datetime):
        as_of = as_of.date()
    return pd.Timestamp(as_of), f"a time before the as-of date {as_of.isoformat()}"


def _event_columns(table: Table) -> set[str]:
    columns = set(_EXTRA_EVENT_COLUMNS.get(table.name, ()))
    if table.time_column:
        columns.add(table.time_column)
    return columns


def _allowed_text(col: Column | None) -> str:
    return "one of " + ", ".join(col.allowed or ()) if col is not None else ""


def _key_text(table: Table) -> str:
    key = ", ".join(table.key)
    return f"a unique {key} per row" if len(table.key) == 1 else f"a unique ({key}) per row"


def _column_position(table: Table, finding: _Finding) -> int:
    first = (finding.column or "").split("+")[0]
    return table.column_names.index(first) if first in table.column_names else len(table.columns)


def _positional(df: pd.DataFrame) -> pd.DataFrame:
    """Index rows by their position, which is how problems and rejects number them."""
    if isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1:
        return df
    return df.reset_index(drop=True)


def _empty_typed(table: Table) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series(dtype=_DTYPES[c.kind]) for c in table.columns})


def _unwrap_arrow(s: pd.Series) -> pd.Series:
    """Turn categorical and non-text ``pd.ArrowDtype`` columns into plain ones."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        try:
            return s.astype(s.cat.categories.dtype)
        except (TypeError, ValueError):
            return s.astype(object)
    if isinstance(s.dtype, pd.ArrowDtype) and not _is_text_like(s.dtype):
        try:
            return s.astype(s.dtype.numpy_dtype)
        except (TypeError, ValueError, pyarrow.ArrowException):
            return s.astype(object)
    return s


def _is_text_like(dtype: Any) -> bool:
    if isinstance(dtype, pd.StringDtype | pd.CategoricalDtype):
        return True
    if isinstance(dtype, pd.ArrowDtype):
        return pyarrow.types.is_string(dtype.pyarrow_dtype) or pyarrow.types.is_large_string(
            dtype.pyarrow_dtype
        )
    return pd.api.types.is_object_dtype(dtype)


def _is_text(s: pd.Series) -> bool:
    """True when the column holds text (judged on its dtype or first non-null value)."""
    if isinstance(s.dtype, pd.StringDtype | pd.ArrowDtype):
        return True
    first = s.first_valid_index()
    return first is None or isinstance(s.loc[first], str)


def _rows(count: int) -> str:
    return "row" if count == 1 else "rows"


def _plain(value: Any) -> Any:
    """Turn a raw cell into a JSON-ready Python value (text for dates and odd numbers)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        if np.isnan(value):  # pandas' marker of an empty cell
            return None
        return value if np.isfinite(value) else str(value)
    if isinstance(value, str | int | bool):
        return value
    if isinstance(value, pd.Timestamp | datetime):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def _format_example(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_format_example(v) for v in value) + ")"
    if value is None:
        return "empty"
    if isinstance(value, str):
        # Quote only when the bare text would be ambiguous in the message.
        plain = value and value == value.strip() and not any(ch in value for ch in ",;()")
        return value if plain else repr(value)
    return str(value)
