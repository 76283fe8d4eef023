"""Flat-table mode: a data scientist's own customer-level table, already featurised.

``crmscore fit-table KIND --train FILE --target COLUMN`` learns the kind's model from any
table: text columns are categoricals (LightGBM native) unless they hold numbers or ISO dates
(:func:`plan_columns`), the target may be 0/1, bool or labels (``--positive`` names the positive
class), and the run is tracked in MLflow like any other (experiment ``crm-<kind>``, tag
``crmscore.mode=fit-table``). It is *not* registered:
a table of other features cannot serve the CRM, so it never competes for ``champion``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crmscore.bundle import ModelBundle, ModelKind
from crmscore.features.io import DECOMPRESS, csv_format, written_date_format
from crmscore.training import evaluate as ev
from crmscore.training.config import LightGBMSettings, TrainConfig
from crmscore.training.train import (
    FeatureSet,
    PropensityTarget,
    fit_baseline,
    fit_bundle_cv,
    identifier_like,
    infer_feature_set,
    model_choice,
    predict_baseline,
)

logger = logging.getLogger(__name__)

TARGET = "__target__"
#: fewer labelled rows than this cannot train, validate and calibrate a model
MIN_TABLE_ROWS = 100
#: a text column is "numeric with junk" when at least this share of its values are numbers
NUMERIC_SHARE = 0.9


class TableError(ValueError):
    """A table that cannot be learnt from as given; the message says what to change."""


def read_table(path: Path, role: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{role} table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".zip":
        return _read_zip(path, role)
    if suffix in DECOMPRESS and len(path.suffixes) > 1:  # read_csv decompresses by the name, too
        suffix = path.suffixes[-2].lower()
    if suffix in (".csv", ".txt", ".tsv"):
        options = csv_format(path)
        try:
            try:
                return pd.read_csv(path, low_memory=False, **options)
            except UnicodeDecodeError:
                # Not UTF-8: Excel on Windows saves CSV in the legacy code page, Windows-1252 in
                # Western Europe (accents, the euro sign); its 5 unused bytes are replaced.
                logger.warning("%s table %s is not UTF-8; read as Windows-1252", role, path)
                return pd.read_csv(path, low_memory=False, encoding="cp1252", encoding_errors="replace", **options)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:  # pandas' message has no file name
            raise TableError(f"{role} table {path} is not a readable CSV: {exc}") from None
    raise TableError(f"{role} table {path} must be .csv (.tsv, .txt; also compressed: .csv.gz, ..., or in a .zip) or .parquet; "
                     f"got {''.join(path.suffixes) or 'no suffix'}")


def _read_zip(path: Path, role: str) -> pd.DataFrame:
    """A ZIP archive holding one table (as downloads of public datasets often come): its one
    CSV or Parquet file, read like the file itself; macOS's ``__MACOSX/`` entries are skipped."""
    import shutil
    import tempfile
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise TableError(f"{role} table {path} is not a readable ZIP archive: {exc}") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        tables = [m for m in members if Path(m.filename).suffix.lower() in (".csv", ".tsv", ".txt", ".parquet")]
        if len(tables) != 1:
            names = ", ".join(m.filename for m in members) or "nothing"
            raise TableError(f"{role} archive {path} must hold exactly one .csv or .parquet file; it holds {names}")
        with tempfile.TemporaryDirectory(prefix="crmscore-zip-") as tmp:
            inner = Path(tmp) / Path(tables[0].filename).name
            with archive.open(tables[0]) as src, open(inner, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return read_table(inner, f"{role} ({path.name})")


#: text cells that mean "no value": what ``pandas.read_csv`` reads as missing by default (so a
#: Parquet or in-memory table reads like its CSV), and ``?``, the UCI repository's marker.
#: Blank and whitespace-only cells are missing too.
MISSING_MARKERS = frozenset({
    "", "?", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
#: ISO 8601 dates and times, read as dates whatever the other values
ISO_DATE = r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
#: characters LightGBM refuses in a feature name (JSON's) and whitespace, which it rewrites
UNSAFE_NAME = r'[\s"\',:\[\]{}\\]+'
EPOCH = pd.Timestamp("1970-01-01")


#: what pandas names a column whose header cell is empty: in a CSV, the index a
#: ``DataFrame.to_csv`` wrote (``to_csv``'s default; Kaggle's "Give Me Some Credit" has one)
UNNAMED_COLUMN = r"Unnamed: \d+"


def counts_rows(s: pd.Series) -> bool:
    """A running row number: whole numbers, none missing, each one more than the row before."""
    values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return len(values) > 1 and bool((np.diff(values) == 1).all())


def written_indexes(frame: pd.DataFrame) -> list[str]:
    """The columns of ``frame`` that are the index a CSV export wrote: no header, counting rows."""
    return [c for c in frame.columns if re.fullmatch(UNNAMED_COLUMN, str(c)) and counts_rows(frame[c])]


def _is_text(s: pd.Series) -> bool:
    return s.dtype == object or pd.api.types.is_string_dtype(s)


def _blank_to_missing(s: pd.Series) -> pd.Series:
    """Text cells that are blank or a missing marker become missing; other cells unchanged."""
    text = s.astype("object")
    stripped = text.where(text.isna(), text.astype(str).str.strip())
    return text.where(~stripped.isin(MISSING_MARKERS), None)


#: numbers written for people: a currency symbol before or after, a trailing percent sign,
#: thousands separated by commas (``$1,169.50``, ``10.65 %``, ``1,250 EUR`` is not one)
_CURRENCY_OR_PERCENT = r"^(?P<sign>[+-]?)\s*[$€£¥]\s*|\s*[%$€£¥]$"
_THOUSANDS = r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?"


def _to_number(s: pd.Series) -> pd.Series:
    """Text as numbers, formatted ones too (:data:`_CURRENCY_OR_PERCENT`, :data:`_THOUSANDS`):
    ``"10.65%"`` is 10.65 and ``"$1,169"`` 1169, as written; anything else is NaN. The
    formats are read once per distinct value, so a category column costs its levels."""
    values = pd.to_numeric(s, errors="coerce")
    rest = s.notna() & values.isna()
    if rest.any():
        text = s[rest].astype(str)
        distinct = pd.Series(text.unique())
        cleaned = distinct.str.strip().str.replace(_CURRENCY_OR_PERCENT, r"\g<sign>", regex=True).str.strip()
        cleaned = cleaned.where(~cleaned.str.fullmatch(_THOUSANDS), cleaned.str.replace(",", "", regex=False))
        numbers = pd.to_numeric(cleaned, errors="coerce")
        if numbers.notna().any():  # else text, e.g. a category's levels: nothing to map
            values = values.astype(np.float64)
            values[rest] = text.map(dict(zip(distinct, numbers, strict=True))).to_numpy(dtype=np.float64)
    return values


def _as_days(s: pd.Series, where: str, written: str | None = None) -> pd.Series:
    """Dates and durations as days (since 1970-01-01 for dates), so trees can split on them.

    Text is ISO 8601, or dates in the ``written`` format (:func:`written_date_format`). ISO
    text that is no date pandas can hold is missing, with a warning naming ``where``: the
    "no date" and "open-ended" conventions of database exports (MySQL's ``0000-00-00``,
    ``9999-12-31``, beyond pandas' years 1677-2262) are not junk to be fixed by hand.
    """
    if pd.api.types.is_timedelta64_dtype(s):
        return s.dt.total_seconds() / 86_400
    if not pd.api.types.is_datetime64_any_dtype(s):
        text = s.where(s.isna(), s.astype(str).str.strip()) if written else s
        parsed = pd.to_datetime(text, format=written or "ISO8601", utc=True, errors="coerce")
        bad = s[s.notna() & parsed.isna()]
        if len(bad):
            examples = ", ".join(repr(str(v)) for v in bad.unique()[:3])
            logger.warning("%s: %d values are not dates in 1677-2262 (e.g. %s) and read as missing", where, len(bad), examples)
        s = parsed
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return (s - EPOCH).dt.total_seconds() / 86_400


@dataclass(frozen=True)
class ColumnPlan:
    """How a table's feature columns become the model's: decided once on train and test together,
    so both are read alike and a test table cannot turn a number column into text.

    Attributes
    ----------
    names : dict
        Table column -> model column: LightGBM refuses JSON's special characters in feature
        names (``amount, net``, ``x[1]``), so they become ``_``; the table's own name is kept as
        the model column's description (the reason codes' text).
    numbers : tuple of str
        Text columns read as numbers: every value is a number, blank or a missing marker.
    days : tuple of str
        Date and duration columns, and dates as text, read as days.
    written_dates : dict
        Text date column -> its format, for dates not in ISO 8601 (:func:`written_date_format`).
    """

    names: dict[str, str]
    numbers: tuple[str, ...] = ()
    days: tuple[str, ...] = ()
    written_dates: dict[str, str] = field(default_factory=dict)

    def apply(self, frame: pd.DataFrame, table: str) -> pd.DataFrame:
        """The table's feature columns, converted and renamed (text stays text)."""
        out = {}
        for col, name in self.names.items():
            s = frame[col]
            if col in self.days:
                s = _as_days(_blank_to_missing(s) if _is_text(s) else s, f"column {col!r} of {table}",
                             self.written_dates.get(col))
            elif col in self.numbers:
                s = _to_number(_blank_to_missing(s))
            elif _is_text(s):
                s = _blank_to_missing(s)
            out[name] = s
        return pd.DataFrame(out, index=frame.index)

    @property
    def descriptions(self) -> dict[str, str]:
        return {name: col for col, name in self.names.items() if name != col}


def plan_columns(columns: list[str], tables: list[tuple[pd.DataFrame, str]]) -> ColumnPlan:
    """Decide how each column is read, from its values in every table (train, then test).

    Raises
    ------
    TableError
        Naming each text column whose values are numbers apart from a few others (a broken
        export), with the table, the count and examples; blanks and missing markers are not junk.
    """
    numbers, days, problems = [], [], []
    written: dict[str, str] = {}
    for col in columns:
        series = [(frame[col], name) for frame, name in tables]
        if any(pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_timedelta64_dtype(s) for s, _ in series):
            days.append(col)
            continue
        if not any(_is_text(s) for s, _ in series):
            continue
        values = [(_blank_to_missing(s).dropna(), name) for s, name in series]
        present = pd.concat([v for v, _ in values])
        if present.empty:  # nothing but blanks: a number column with no values
            numbers.append(col)
            continue
        share = _to_number(present).notna().mean()
        if share == 1.0:
            numbers.append(col)
        elif share >= NUMERIC_SHARE:
            for v, name in values:
                junk = v[_to_number(v).isna()]
                if len(junk):
                    examples = ", ".join(repr(x) for x in junk.unique()[:3])
                    problems.append((name, f"{col!r} ({len(junk)} of {len(v)} values, e.g. {examples})"))
        elif present.astype(str).str.fullmatch(ISO_DATE).all():
            days.append(col)
        elif (fmt := written_date_format(present, f"column {col!r}")) is not None:
            days.append(col)
            written[col] = fmt
        else:  # text: a table holding numbers in it would have them read as missing
            numeric = [name for s, name in series if not _is_text(s) and not pd.api.types.is_bool_dtype(s)
                       and s.notna().any()]
            if numeric:
                text = [(v, name) for (s, name), (v, _) in zip(series, values, strict=True) if _is_text(s)]
                examples = ", ".join(repr(x) for v, _ in text for x in v.unique()[:3])
                raise TableError(
                    f"column {col!r} holds numbers in {', '.join(numeric)} but text in "
                    f"{', '.join(name for _, name in text)} (e.g. {examples}); the tables must agree"
                )
    if problems:
        by_table: dict[str, list[str]] = {}
        for name, text in problems:
            by_table.setdefault(name, []).append(text)
        raise TableError(" ".join(
            f"non-numeric values in numeric column(s) of {name}: {'; '.join(texts)}; "
            "fix or blank them (blank = missing)" for name, texts in by_table.items()
        ))
    names: dict[str, str] = {}
    taken: set[str] = set()
    for col in columns:
        base = re.sub(UNSAFE_NAME, "_", str(col)).strip("_") or "column"
        name, k = base, 2
        while name in taken or name == TARGET:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names[col] = name
    return ColumnPlan(names, tuple(numbers), tuple(days), written)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def encode_target(series: pd.Series, kind: ModelKind, positive: str | None, name: str) -> np.ndarray:
    """The target as floats: 0/1 for classifiers, values for expected margin; NaN = missing."""
    column = series.name
    if _is_text(series):  # blanks and missing markers: unlabelled rows, as in the features
        series = _blank_to_missing(series)
    if not kind.is_classifier:  # numbers written for people (``$1,169``) read as the features' do
        values = _to_number(series)
        bad = series.notna() & values.isna()
        if bad.any():
            examples = ", ".join(repr(v) for v in series[bad].unique()[:3])
            raise TableError(f"target {column!r} of {name} must be numeric for {kind.value}; got {examples}")
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    # labels compare without the spaces around them: UCI's Adult writes ' >50K' after each comma
    labels = series.astype(str).str.strip()
    present = series.dropna()
    text = labels[present.index]
    if positive is not None:
        distinct = sorted(text.unique())
        if positive.strip() in distinct:
            is_positive = labels == positive.strip()
        elif (number := _number(positive)) is not None and (numeric := pd.to_numeric(series, errors="coerce")).eq(number).any():
            is_positive = numeric == number  # --positive 1 on a column read as 0.0/1.0
        else:
            shown = ", ".join(repr(v) for v in distinct[:10])
            raise TableError(f"positive class {positive!r} does not occur in target {column!r} of {name}; its values are {shown}")
        return np.where(series.isna(), np.nan, is_positive.astype(np.float64)).astype(np.float64)
    if pd.api.types.is_bool_dtype(present):
        return series.map({True: 1.0, False: 0.0}).to_numpy(dtype=np.float64, na_value=np.nan)
    lowered = set(text.str.lower().unique())
    for yes, no in (("true", "false"), ("yes", "no")):  # booleans, however they were exported
        if lowered <= {yes, no}:
            return np.where(series.isna(), np.nan, (labels.str.lower() == yes).astype(np.float64))
    numeric = pd.to_numeric(present, errors="coerce")
    if numeric.notna().all() and set(numeric.unique()) <= {0, 1}:
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    shown = ", ".join(repr(v) for v in sorted(text.unique())[:5])
    raise TableError(
        f"target {column!r} of {name} holds labels ({shown}), not 0/1 or true/false; "
        "name the positive class with --positive"
    )


@dataclass
class FitTableResult:
    bundle: ModelBundle
    metrics: dict[str, Any] = field(default_factory=dict)
    predictions: pd.DataFrame | None = None
    run_id: str | None = None
    #: five rows as the model reads them (converted, renamed): the MLflow input example
    example: pd.DataFrame | None = None
    #: labels and predictions the metrics were computed on, by split ("validation": out of
    #: fold; "test": the test rows with a target), for the run's plots and lift tables
    scored: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: rows to explain the model on (the test table's, else training's), and which
    explain: tuple[pd.DataFrame, str] | None = None
    #: model columns that hold dates as days since 1970-01-01, shown as dates in reasons' texts
    dates: tuple[str, ...] = ()


def _config_for(n_rows: int, base: TrainConfig) -> TrainConfig:
    """Smaller leaves for small tables: 50 rows a leaf starves a 2,000-row table."""
    lgbm = base.lightgbm.model_dump()
    lgbm["min_child_samples"] = int(min(base.lightgbm.min_child_samples, max(5, n_rows // 100)))
    return base.model_copy(update={"lightgbm": LightGBMSettings(**lgbm)})


def fit_table(
    kind: ModelKind,
    train: pd.DataFrame,
    target: str,
    *,
    positive: str | None = None,
    id_column: str | None = None,
    test: pd.DataFrame | None = None,
    config: TrainConfig | None = None,
    train_name: str = "train",
    test_name: str = "test",
) -> FitTableResult:
    """Fit ``kind`` on a flat table (pure: no files, no MLflow).

    Trees and calibration are chosen by 5-fold cross-validation and the final booster
    learns from every row (:func:`~crmscore.training.train.fit_bundle_cv`). Returns the bundle, metrics (validation, and test when
    the test table has the target) and, when ``test`` is given, a prediction per test row.
    """
    config = config or TrainConfig()
    if target not in train.columns:
        raise TableError(f"target column {target!r} is not in {train_name}; its columns are {', '.join(map(str, train.columns))}")
    if id_column is not None and id_column not in train.columns:
        raise TableError(f"id column {id_column!r} is not in {train_name}")
    features = [c for c in train.columns if c not in (target, id_column)]
    # A row number is no trait of a customer: the index an export wrote is left out; a named
    # one is kept (a file in sign-up order makes it a tenure) but named, as a leak would be
    row_numbers = [c for c in features if counts_rows(train[c])]
    written_index = written_indexes(train[row_numbers])
    for col in row_numbers:
        if col in written_index:
            logger.warning("column %r of %s is a row number with no header, the index a CSV export wrote: "
                           "left out of the features", col, train_name)
        else:
            logger.warning("column %r of %s counts the rows (%s, %s, ...): if it is only the file's order, "
                           "drop it (it is used as a feature)", col, train_name, train[col].iloc[0], train[col].iloc[1])
    features = [c for c in features if c not in written_index]
    if test is not None:
        expected = set(features) | ({id_column} if id_column else set())
        have = set(test.columns) - {target} - set(written_indexes(test))
        missing, extra = sorted(expected - have), sorted(have - expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise TableError(f"{test_name} columns differ from {train_name}: {'; '.join(parts)}")
    tables = [(train, train_name)] + ([(test, test_name)] if test is not None else [])
    plan = plan_columns(features, tables)
    if plan.numbers or plan.days:
        days = [f"{c} ({plan.written_dates[c]})" if c in plan.written_dates else c for c in plan.days]
        logger.info("read as numbers: %s; as days: %s", ", ".join(plan.numbers) or "-", ", ".join(days) or "-")

    y = encode_target(train[target], kind, positive, train_name)
    labelled = ~np.isnan(y)
    if (~labelled).any():
        logger.warning("%d rows of %s have no target and are left out of training", int((~labelled).sum()), train_name)
    frame = plan.apply(train.loc[labelled], train_name)
    y = y[labelled]
    if len(frame) < MIN_TABLE_ROWS:
        raise TableError(
            f"{train_name} has {len(frame)} rows with a target; at least {MIN_TABLE_ROWS} are needed "
            "to train, validate and calibrate a model"
        )
    if kind.is_classifier and len(np.unique(y)) < 2:
        raise TableError(f"target {target!r} of {train_name} is constant ({int(y[0])} for every row): there is nothing to learn")
    if not kind.is_classifier and np.nanstd(y) == 0:
        raise TableError(f"target {target!r} of {train_name} is constant ({y[0]}): there is nothing to learn")
    test_frame = plan.apply(test, test_name) if test is not None else None

    # Text and category columns become categoricals of their values as text, over the levels
    # seen in training (and test). As text: the bundle encodes a level by its name, so a
    # Parquet category of numbers (codes 1, 2, 3) would otherwise match none of them.
    for col in [c for c in frame.columns if _is_text(frame[c]) or isinstance(frame[c].dtype, pd.CategoricalDtype)]:
        levels = set(_as_text(frame[col]).dropna())
        if test_frame is not None:
            levels |= set(_as_text(test_frame[col]).dropna())
        frame[col] = pd.Categorical(_as_text(frame[col]), categories=sorted(levels))
    frame[TARGET] = y
    config = _config_for(len(frame), config)
    try:
        fs = infer_feature_set(frame, [TARGET], plan.descriptions)
    except ValueError as exc:
        raise TableError(f"{train_name}: {exc}") from None

    leaks = [plan.descriptions.get(c, c) for c in suspected_leaks(frame, fs.names, y, kind)]  # as the user named them
    for name in leaks:
        logger.warning("column %r of %s predicts the target %r perfectly: if it is a copy or a consequence "
                       "of the outcome, drop it (it is used as a feature)", name, train_name, target)
    targets = [PropensityTarget(positive or "1", TARGET)] if kind is ModelKind.PROPENSITY else []
    bundle, oof, y_oof = fit_bundle_cv(kind, frame, fs, config, label=TARGET, targets=targets)
    example_rows = test_frame if test_frame is not None else frame
    result = FitTableResult(bundle, example=_as_training_frame(example_rows.head(5), fs))
    if leaks:
        result.metrics["suspected_leaks"] = leaks
    result.metrics["validation"] = _metrics_from(kind, y_oof, oof)  # out-of-fold
    result.explain = (frame, "training rows")
    result.dates = tuple(plan.names[c] for c in plan.days if not pd.api.types.is_timedelta64_dtype(train[c]))
    result.scored["validation"] = (y_oof, oof[:, 0] if oof.ndim == 2 else oof)
    try:
        baseline = fit_baseline(kind, frame, fs, TARGET, config)
    except ValueError as exc:  # the baseline is a comparison, never a reason to fail the fit
        logger.warning("baseline not fitted: %s", exc)
        baseline = None
    if test is not None and test_frame is not None:
        test_rows = _as_training_frame(test_frame, fs)
        scores = _predict(bundle, test_rows)
        result.explain = (test_rows, "test")
        ids = test[id_column].to_numpy() if id_column else np.arange(len(test))
        result.predictions = pd.DataFrame({id_column or "row": ids, "score": scores})
        if target in test.columns:
            y_test = encode_target(test[target], kind, positive, test_name)
            ok = ~np.isnan(y_test)
            result.metrics["test"] = _metrics_from(kind, y_test[ok], scores[ok])
            result.scored["test"] = (y_test[ok], scores[ok])
            if baseline is not None:
                result.metrics["test"]["baseline"] = _metrics_from(
                    kind, y_test[ok], predict_baseline(baseline, kind, test_rows, fs)[ok]
                )
    return result


def suspected_leaks(frame: pd.DataFrame, columns: list[str], y: np.ndarray, kind: ModelKind) -> list[str]:
    """Columns that give the target away: a copy or a consequence of the outcome left in the
    table (a status column beside the churn flag, a cancellation reason missing for every
    customer who stayed). A classifier's column is suspect when a threshold on it (numbers)
    or its levels (text), with missing as one more group, split the two classes without a
    single error; text with more than one level per 20 rows is not (an identifier's levels
    are trivially pure). Expected margin's column is suspect when it equals the target, or
    moves with it exactly (correlation 1)."""
    out = []
    for col in columns:
        s = frame[col]
        missing = s.isna().to_numpy()
        if kind.is_classifier:
            if isinstance(s.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(s):
                codes = pd.Series(pd.factorize(s, use_na_sentinel=True)[0])
                if codes.nunique() < 2 or identifier_like(codes.nunique(), len(s)):
                    continue
                if (pd.Series(y).groupby(codes).nunique() == 1).all():
                    out.append(col)
                continue
            x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if missing.any() and np.unique(y[missing]).size > 1:
                continue
            pos, neg = x[~missing & (y == 1)], x[~missing & (y == 0)]
            if pos.size and neg.size:
                separated = pos.min() > neg.max() or pos.max() < neg.min()
            else:  # one class where present, the other where missing
                separated = missing.any() and (~missing).any()
            if separated:
                out.append(col)
        elif pd.api.types.is_numeric_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype) and not missing.any():
            x = s.to_numpy(dtype=np.float64)
            if np.std(x) > 0 and np.std(y) > 0 and np.corrcoef(x, y)[0, 1] > 1 - 1e-9:  # a copy, too
                out.append(col)
    return out


def _as_text(s: pd.Series) -> pd.Series:
    """Values as text (object dtype), missing as None."""
    return s.astype("object").where(s.notna(), None).map(lambda v: None if v is None else str(v))


def _as_training_frame(frame: pd.DataFrame, fs: FeatureSet) -> pd.DataFrame:
    out = frame[fs.names].copy()
    for col, levels in fs.categorical.items():
        out[col] = pd.Categorical(_as_text(out[col]), categories=levels)
    return out


def _predict(bundle: ModelBundle, rows: pd.DataFrame) -> np.ndarray:
    pred = bundle.predict(bundle.encode(rows))
    return pred[:, 0] if pred.ndim == 2 else pred


def reason_columns(bundle: ModelBundle, X: np.ndarray, top: int = 3, dates: tuple[str, ...] = ()) -> pd.DataFrame:
    """Each row's top ``top`` reasons (:meth:`ModelBundle.reasons`, TreeSHAP with the GLM base's
    terms) as columns ``reason_code_<i>`` and ``reason_<i>``; empty where a row has fewer. A
    feature in ``dates`` (days since 1970-01-01) is shown as its date: "signup = 2021-08-24"."""
    rows = bundle.reasons(X, top=top, dates=dates)
    out: dict[str, list[str]] = {}
    for i in range(top):
        out[f"reason_code_{i + 1}"] = [r[i].code if len(r) > i else "" for r in rows]
        out[f"reason_{i + 1}"] = [r[i].text if len(r) > i else "" for r in rows]
    return pd.DataFrame(out)


def run_plots(kind: ModelKind, result: FitTableResult) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """The plots and lift tables of a fit-table run, as ``crmscore train`` logs them: on the test
    rows under the same names (``calibration``, ``gain``, ...), and out of fold with the suffix
    ``_out_of_fold``. A split its metrics could not be computed on (one class) gets none, and so
    does a margin whose rows net to zero or a loss (gain and lift are shares of a positive total)."""
    figures: dict[str, Any] = {}
    tables: dict[str, pd.DataFrame] = {}
    model = kind.value.replace("_", " ")
    for split, (y, pred) in result.scored.items():
        if "error" in result.metrics.get(split, {}):
            continue
        suffix, rows = ("", "test") if split == "test" else ("_out_of_fold", "out of fold")
        if not kind.is_classifier and float(np.sum(y)) <= 0:
            logger.info("no predicted-against-actual plot %s: the target nets to %g", rows, float(np.sum(y)))
            continue
        for name, fig in ev.plots(y, pred, model, rows, classifier=kind.is_classifier,
                                  ks=kind is ModelKind.CREDIT_RISK).items():
            figures[name + suffix] = fig
        tables["lift" + suffix] = ev.lift_table(y, pred)
    if result.explain is not None:
        frame, rows = result.explain
        tables["importance"], figures["importance"] = ev.explained(result.bundle, result.bundle.encode(frame), model, rows)
    return figures, tables


def _metrics_from(kind: ModelKind, y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    try:
        if kind.is_classifier:
            return ev.binary_metrics(y, pred)
        return ev.regression_metrics(y, pred)
    except ValueError as exc:  # e.g. a single-class test table: say so instead of failing
        return {"error": str(exc)}


def fit_table_job(
    kind: ModelKind,
    train_path: Path,
    target: str,
    *,
    positive: str | None = None,
    id_column: str | None = None,
    test_path: Path | None = None,
    predictions_path: Path | None = None,
    metrics_path: Path | None = None,
    config: TrainConfig | None = None,
    home: Path | None = None,
    track: bool = True,
    reasons: bool = False,
) -> FitTableResult:
    """``crmscore fit-table``: read, fit, write predictions and metrics, track in MLflow.

    With ``reasons`` the predictions carry each test row's top reasons, as the CRM's scores do:
    ``reason_code_<i>`` (stable ids, e.g. ``CRD.balance.UP``) and ``reason_<i>`` (the text)."""
    from crmscore.training import tracking

    if predictions_path is not None and test_path is None:
        raise TableError("--predictions needs --test: predictions are written for the test rows")
    if reasons and predictions_path is None:
        raise TableError("--reasons needs --predictions: the reasons are written beside each test row's score")
    train = read_table(train_path, "train")
    test = read_table(test_path, "test") if test_path is not None else None
    result = fit_table(kind, train, target, positive=positive, id_column=id_column, test=test,
                       config=config, train_name=Path(train_path).name,
                       test_name=Path(test_path).name if test_path else "test")
    if predictions_path is not None:
        if result.predictions is None:  # not with a test table (checked above)
            raise TableError("--predictions needs --test: predictions are written for the test rows")
        Path(predictions_path).parent.mkdir(parents=True, exist_ok=True)
        out = result.predictions.rename(columns={result.predictions.columns[0]: "id"})
        if reasons and result.explain is not None:
            reasons_of_rows = reason_columns(result.bundle, result.bundle.encode(result.explain[0]), dates=result.dates)
            out = pd.concat([out, reasons_of_rows], axis=1)
        out.to_csv(predictions_path, index=False)
    if metrics_path is not None:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(result.metrics, indent=2, default=float) + "\n")
    if track:
        tracking.setup_tracking(home)
        flat = {f"validation_{k}": v for k, v in result.metrics.get("validation", {}).items() if not isinstance(v, dict)}
        flat.update({f"test_{k}": v for k, v in result.metrics.get("test", {}).items() if not isinstance(v, dict)})
        figures, tables = run_plots(kind, result)
        record = tracking.log_run(
            result.bundle,
            params={"mode": "fit-table", "target": target, "positive": positive or "", "train_rows": len(train),
                    **{k: v for k, v in model_choice(result.bundle.info).items() if v is not None}},
            metrics=flat,
            tags={"crmscore.mode": "fit-table", "crmscore.data.train": str(Path(train_path).resolve()),
                  "crmscore.data.hash": tracking.frame_fingerprint(train),
                  **({"crmscore.suspected_leaks": ", ".join(result.metrics["suspected_leaks"])}
                     if "suspected_leaks" in result.metrics else {})},
            figures=figures, tables=tables, input_example=result.example, register=False, home=home,
            run_name=f"fit-table-{Path(train_path).stem}",
        )
        result.run_id = record.run_id
        for fig in figures.values():
            fig.clear()
    return result

