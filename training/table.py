"""Flat-table mode: a data scientist's own customer-level table, already featurised.

``crmscore fit-table KIND --train FILE --target COLUMN`` learns the kind's model from any
table: string columns are categoricals (LightGBM native), the target may be 0/1, bool or
labels (``--positive`` names the positive class), and the run is tracked in MLflow like any
other (experiment ``crm-<kind>``, tag ``crmscore.mode=fit-table``). It is *not* registered:
a table of other features cannot serve the CRM, so it never competes for ``champion``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crmscore.bundle import ModelBundle, ModelKind
from crmscore.training import evaluate as ev
from crmscore.training.config import LightGBMSettings, TrainConfig
from crmscore.training.train import (
    FeatureSet,
    PropensityTarget,
    fit_baseline,
    fit_bundle_cv,
    infer_feature_set,
    predict_baseline,
)

logger = logging.getLogger(__name__)

TARGET = "__target__"
ROW_ID = "__row__"
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
    if suffix in (".csv", ".txt"):
        return pd.read_csv(path, low_memory=False)
    raise TableError(f"{role} table {path} must be .csv or .parquet; got {path.suffix or 'no suffix'}")


def check_numeric_junk(frame: pd.DataFrame, columns: list[str], name: str) -> None:
    """Reject text columns that are numbers apart from a few junk values (a broken export)."""
    problems = []
    for col in columns:
        s = frame[col]
        if not (s.dtype == object or pd.api.types.is_string_dtype(s)):
            continue
        values = s.dropna()
        if values.empty:
            continue
        parsed = pd.to_numeric(values, errors="coerce")
        share = parsed.notna().mean()
        if NUMERIC_SHARE <= share < 1.0:
            junk = values[parsed.isna()]
            examples = ", ".join(repr(v) for v in junk.unique()[:3])
            problems.append(f"{col!r} ({len(junk)} of {len(values)} values, e.g. {examples})")
    if problems:
        raise TableError(
            f"non-numeric values in numeric column(s) of {name}: {'; '.join(problems)}; "
            "fix or blank them (blank = missing)"
        )


def encode_target(series: pd.Series, kind: ModelKind, positive: str | None, name: str) -> np.ndarray:
    """The target as floats: 0/1 for classifiers, values for expected margin; NaN = missing."""
    column = series.name
    if not kind.is_classifier:
        values = pd.to_numeric(series, errors="coerce")
        bad = series.notna() & values.isna()
        if bad.any():
            examples = ", ".join(repr(v) for v in series[bad].unique()[:3])
            raise TableError(f"target {column!r} of {name} must be numeric for {kind.value}; got {examples}")
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    present = series.dropna()
    text = present.astype(str)
    if positive is not None:
        distinct = sorted(text.unique())
        if positive not in distinct:
            shown = ", ".join(repr(v) for v in distinct[:10])
            raise TableError(f"positive class {positive!r} does not occur in target {column!r} of {name}; its values are {shown}")
        out = np.where(series.isna(), np.nan, (series.astype(str) == positive).astype(np.float64))
        return out.astype(np.float64)
    if pd.api.types.is_bool_dtype(present):
        return series.map({True: 1.0, False: 0.0}).to_numpy(dtype=np.float64, na_value=np.nan)
    lowered = set(text.str.lower().unique())
    if lowered <= {"true", "false"}:
        return np.where(series.isna(), np.nan, (series.astype(str).str.lower() == "true").astype(np.float64))
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
    if test is not None:
        expected = set(features) | ({id_column} if id_column else set())
        have = set(test.columns) - {target}
        missing, extra = sorted(expected - have), sorted(have - expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise TableError(f"{test_name} columns differ from {train_name}: {'; '.join(parts)}")
    check_numeric_junk(train, features, train_name)
    if test is not None:
        check_numeric_junk(test, features, test_name)

    y = encode_target(train[target], kind, positive, train_name)
    labelled = ~np.isnan(y)
    if (~labelled).any():
        logger.warning("%d rows of %s have no target and are left out of training", int((~labelled).sum()), train_name)
    frame = train.loc[labelled, features].copy()
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
    frame[TARGET] = y
    config = _config_for(len(frame), config)

    # Text columns become categoricals over the levels seen in training (and test).
    text_cols = [c for c in features if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]
    for col in text_cols:
        levels = set(frame[col].dropna().astype(str))
        if test is not None:
            levels |= set(test[col].dropna().astype(str))
        frame[col] = pd.Categorical(frame[col].astype("object").where(frame[col].notna(), None), categories=sorted(levels))
    fs = infer_feature_set(frame, [TARGET])

    targets = [PropensityTarget(positive or "1", TARGET)] if kind is ModelKind.PROPENSITY else []
    bundle, oof, y_oof = fit_bundle_cv(kind, frame, fs, config, label=TARGET, targets=targets)
    result = FitTableResult(bundle)
    result.metrics["validation"] = _metrics_from(kind, y_oof, oof)  # out-of-fold
    try:
        baseline = fit_baseline(kind, frame, fs, TARGET, config)
    except ValueError as exc:  # the baseline is a comparison, never a reason to fail the fit
        logger.warning("baseline not fitted: %s", exc)
        baseline = None
    if test is not None:
        scores = _predict(bundle, test, fs)
        ids = test[id_column].to_numpy() if id_column else np.arange(len(test))
        result.predictions = pd.DataFrame({id_column or "row": ids, "score": scores})
        if target in test.columns:
            y_test = encode_target(test[target], kind, positive, test_name)
            ok = ~np.isnan(y_test)
            result.metrics["test"] = _metrics_from(kind, y_test[ok], scores[ok])
            if baseline is not None:
                test_frame = _as_training_frame(test, fs)
                result.metrics["test"]["baseline"] = _metrics_from(
                    kind, y_test[ok], predict_baseline(baseline, kind, test_frame, fs)[ok]
                )
    return result


def _as_training_frame(frame: pd.DataFrame, fs: FeatureSet) -> pd.DataFrame:
    out = frame[fs.names].copy()
    for col, levels in fs.categorical.items():
        out[col] = pd.Categorical(out[col].astype("object").where(out[col].notna(), None).map(
            lambda v: None if v is None else str(v)), categories=levels)
    return out


def _predict(bundle: ModelBundle, frame: pd.DataFrame, fs: FeatureSet) -> np.ndarray:
    pred = bundle.predict(bundle.encode(_as_training_frame(frame, fs)))
    return pred[:, 0] if pred.ndim == 2 else pred


def _metrics(bundle: ModelBundle, frame: pd.DataFrame, kind: ModelKind) -> dict[str, Any]:
    pred = bundle.predict(bundle.encode(frame))
    pred = pred[:, 0] if pred.ndim == 2 else pred
    return _metrics_from(kind, frame[TARGET].to_numpy(dtype=np.float64), pred)


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
) -> FitTableResult:
    """``crmscore fit-table``: read, fit, write predictions and metrics, track in MLflow."""
    from crmscore.training import tracking

    train = read_table(train_path, "train")
    test = read_table(test_path, "test") if test_path is not None else None
    result = fit_table(kind, train, target, positive=positive, id_column=id_column, test=test,
                       config=config, train_name=Path(train_path).name,
                       test_name=Path(test_path).name if test_path else "test")
    if predictions_path is not None:
        if result.predictions is None:
            raise TableError("--predictions needs --test: predictions are written for the test rows")
        Path(predictions_path).parent.mkdir(parents=True, exist_ok=True)
        out = result.predictions.rename(columns={result.predictions.columns[0]: "id"})
        out.to_csv(predictions_path, index=False)
    if metrics_path is not None:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(result.metrics, indent=2, default=float) + "\n")
    if track:
        tracking.setup_tracking(home)
        flat = {f"validation_{k}": v for k, v in result.metrics.get("validation", {}).items() if not isinstance(v, dict)}
        flat.update({f"test_{k}": v for k, v in result.metrics.get("test", {}).items() if not isinstance(v, dict)})
        example = _as_training_frame((test if test is not None else train).head(5), _feature_set(result.bundle))
        record = tracking.log_run(
            result.bundle,
            params={"mode": "fit-table", "target": target, "positive": positive or "", "train_rows": len(train),
                    "trees": result.bundle.booster.num_trees()},
            metrics=flat,
            tags={"crmscore.mode": "fit-table", "crmscore.data.train": str(Path(train_path).resolve()),
                  "crmscore.data.hash": tracking.frame_fingerprint(train)},
            figures={}, input_example=example, register=False, home=home,
            run_name=f"fit-table-{Path(train_path).stem}",
        )
        result.run_id = record.run_id
    return result


def _feature_set(bundle: ModelBundle) -> FeatureSet:
    return FeatureSet(bundle.feature_names, bundle.categorical_levels)
