"""The serving bundle: champion models, the snapshot and every customer's scores, loaded as one.

:func:`load_serving_bundle` builds an immutable :class:`ServingBundle`:

1. downloads the four models at the registry alias (``champion``; credit risk is optional, as
   in batch scoring: a base without invoices has no credit model);
2. reads the feature snapshot and encodes it **once** into a float64 matrix with an id index
   (:meth:`ModelSet.encode <crmscore.serving.scoring.ModelSet.encode>`);
3. reads the last batch scoring when configured: its cut-offs (Parquet metadata), its cached
   reason codes (valid only for the model versions and as-of date they were computed with)
   and the portfolio summary;
4. scores every snapshot customer with the batch functions themselves
   (:func:`~crmscore.serving.scoring.score_matrix`, then
   :func:`~crmscore.serving.portfolio.assign_portfolio` with the bundle's cut-offs) and keeps
   the results column-wise: a request for a snapshot customer is a row look-up, and its
   numbers are the batch numbers by construction;
5. warms up (one prediction and one TreeSHAP explanation per model) before returning.

Why precompute (step 4) instead of scoring one row per request: measured here on 2 cores,
``score_matrix`` on one row costs ~0.55 ms (four ``Booster.predict`` calls of ~60 µs each plus
per-call overhead) and ``assess_customer`` ~1.4 ms (dozens of numpy calls on length-1
arrays), so a request would cost ~2 ms before HTTP: about 450 requests/s on a core, short
of the goal of BENCHMARKS.md. Scoring the snapshot at load costs ~0.1 ms per customer once
(vectorised, one core: about two minutes per million customers, while the previous bundle
serves), holds ~1 KB per customer beside the feature matrix (mostly the actions text), and a
reload swaps in a bundle that is already complete, so latency does not jump after a change. Inline
features (``POST /v1/scores``) still go through ``score_matrix`` + ``assign_portfolio`` per
request, on the rows sent.

:class:`BundleHolder` owns the current bundle and swaps it atomically: a request takes the
reference once and keeps that bundle to the end, so in-flight requests finish on the old
bundle; a failed load leaves the old bundle serving and keeps the reason. While a bundle is
serving, a reload builds the next one in a separate process
(:class:`~crmscore.serving.loader_process.LoaderProcess`), so the build's Python work does not
hold the GIL against the event loop; the first load, with nothing to serve yet, runs in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import math
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crmscore.bundle import ModelBundle, ModelKind, load_registered_bundle
from crmscore.features.io import AS_OF_KEY
from crmscore.serving.batch.chunks import CUTOFFS_KEY, POLICY_KEY
from crmscore.serving.loader_process import (
    LoaderProcess,
    LoaderProcessDied,
    from_pieces,
    malloc_trim,
    replay,
)
from crmscore.serving.policy import Cutoffs, Policy, load_policy
from crmscore.serving.portfolio import assign_portfolio, resolve_cutoffs
from crmscore.serving.report import portfolio_summary
from crmscore.serving.scoring import ModelSet, compute_reasons, score_matrix
from crmscore.serving.settings import ServingSettings

__all__ = [
    "BundleHolder",
    "FeatureProblem",
    "LoadAttempt",
    "LoadError",
    "ReloadInProgress",
    "ScoredRows",
    "ScoresFileInfo",
    "ServingBundle",
    "load_serving_bundle",
    "prepare_loading",
]

logger = logging.getLogger(__name__)

#: after a swap, wait up to steps x seconds for the old bundle's last request before malloc_trim
TRIM_WAIT_STEPS = 100
TRIM_WAIT_STEP_SECONDS = 0.1
#: rows scored at once while loading: bounds the memory of the portfolio frames
LOAD_CHUNK_ROWS = 50_000
#: largest magnitude accepted for an inline numeric feature (currency, counts, days)
MAX_ABS_FEATURE = 1e15
OPTIONAL_KINDS = (ModelKind.CREDIT_RISK,)
#: headline metrics shown by GET /v1/models, per kind (all metrics when none of them exist)
KEY_METRICS: dict[ModelKind, tuple[str, ...]] = {
    ModelKind.CHURN: ("auc", "pr_auc", "brier", "ece", "base_rate", "oracle_auc_ratio"),
    ModelKind.PROPENSITY: ("mean_auc", "mean_ece", "max_ece", "oracle_mean_auc_ratio"),
    ModelKind.CREDIT_RISK: ("auc", "gini", "ks", "brier", "ece", "base_rate", "oracle_auc_ratio"),
    ModelKind.EXPECTED_MARGIN: ("rmse", "mae", "spearman", "r2", "top20_capture", "aggregate_error",
                                "oracle_rmse_ratio"),
}


class LoadError(RuntimeError):
    """A bundle could not be loaded.

    ``reason`` is short and names no file (shown by the open ``/health/ready``); ``str(error)``
    adds the detail (paths, the underlying error) for logs and the admin reload response.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class FeatureProblem:
    """One invalid inline feature: its name and what is wrong (never the value sent)."""

    feature: str
    message: str
    type: str = "value_error"


# --- scored rows --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScoredRows:
    """Scores and portfolio placement of n customers, column-wise.

    Built by the batch functions (``score_matrix`` then ``assign_portfolio``); a row becomes a
    plain dict with :meth:`record` (NaN -> None) in a few microseconds.
    """

    float_names: tuple[str, ...]
    floats: np.ndarray  # (n, len(float_names)) float64
    bool_names: tuple[str, ...]
    bools: np.ndarray  # (n, len(bool_names)) bool
    object_names: tuple[str, ...]
    objects: np.ndarray  # (n, len(object_names)) object: str or None

    def __len__(self) -> int:
        return int(self.floats.shape[0])

    def record(self, i: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            n: (None if v != v else v)  # NaN -> None
            for n, v in zip(self.float_names, self.floats[i].tolist(), strict=True)
        }
        out.update(zip(self.bool_names, self.bools[i].tolist(), strict=True))
        out.update(zip(self.object_names, self.objects[i].tolist(), strict=True))
        return out

    @classmethod
    def from_frame(cls, placed: pd.DataFrame, float_names: Sequence[str], bool_names: Sequence[str],
                   object_names: Sequence[str]) -> ScoredRows:
        floats = np.column_stack([placed[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in float_names])
        bools = np.column_stack([placed[c].to_numpy(dtype=bool) for c in bool_names])
        objects = np.empty((len(placed), len(object_names)), dtype=object)
        for j, c in enumerate(object_names):
            values = placed[c].astype(object).to_numpy()
            objects[:, j] = [None if v is None or v != v else str(v) for v in values.tolist()]
        return cls(tuple(float_names), floats, tuple(bool_names), bools, tuple(object_names), objects)

    @classmethod
    def concat(cls, parts: Sequence[ScoredRows]) -> ScoredRows:
        first = parts[0]
        return cls(first.float_names, np.concatenate([p.floats for p in parts]),
                   first.bool_names, np.concatenate([p.bools for p in parts]),
                   first.object_names, np.concatenate([p.objects for p in parts]))


def _columns(models: ModelSet, policy: Policy) -> tuple[list[str], list[str], list[str]]:
    """(float, bool, object) columns kept from the scored frame, in a fixed order."""
    props = [f"propensity_{c}" for c in models.categories]
    floats = ["churn_prob", *props, "default_prob", "credit_points", "expected_margin", "clv",
              "current_value", "margin_365d", "cost_to_serve_365d", "outstanding_balance",
              "credit_exposure", "expected_credit_loss", "future_potential", "top_propensity"]
    bools = ["currently_profitable", "high_potential", "flag_high_value",
             *[f.output_column for f in policy.flags], "strategically_significant"]
    objects = ["credit_grade", "quadrant", "top_category", "primary_action", "actions",
               "missing_components", "policy_version"]
    return floats, bools, objects


def _scores_frame(ids: np.ndarray, scores: Mapping[str, np.ndarray], attributes: Mapping[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": ids, **scores, **attributes}, copy=False)


def place_rows(models: ModelSet, policy: Policy, cutoffs: Cutoffs, ids: np.ndarray,
               scores: Mapping[str, np.ndarray], attributes: Mapping[str, np.ndarray]) -> ScoredRows:
    """Portfolio placement of scored rows (``assign_portfolio``), kept column-wise."""
    placed = assign_portfolio(_scores_frame(ids, scores, attributes), policy, cutoffs)
    return ScoredRows.from_frame(placed, *_columns(models, policy))


# --- the batch scoring file -----------------------------------------------------------------


@dataclass(frozen=True)
class ScoresFileInfo:
    """What the server took from the last batch scoring (``scores_path``), and why not more."""

    status: str  # "loaded", "missing" or "not_configured"
    as_of: date | None = None
    model_versions: dict[str, str] = field(default_factory=dict)
    policy_version: str | None = None
    cutoffs_used: bool = False
    reasons_kinds: tuple[str, ...] = ()
    customers_with_reasons: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class _BatchFile:
    info: ScoresFileInfo
    cutoffs: Cutoffs | None
    reasons: dict[str, pa.Array]  # kind -> JSON text per snapshot row (null where absent)
    summary: dict[str, Any] | None


REASON_KEYS = {"code", "feature", "direction", "contribution", "value", "text"}


def _checked_reasons(column: pa.Array, kind: ModelKind, top: int, path: Path) -> pa.Array:
    """Cached reasons, checked on a sample (JSON lists of reason dicts), trimmed to ``top``.

    The API passes the cached text through unparsed, so its shape is checked here, once.
    """
    texts = column.drop_null()
    longest = 0
    for text in texts.slice(0, 200).to_pylist():
        try:
            rows = json.loads(text)
            ok = isinstance(rows, list) and all(isinstance(r, dict) and set(r) == REASON_KEYS for r in rows)
        except ValueError:
            ok = False
        if not ok:
            raise LoadError("the batch scoring file has malformed reason codes",
                            f"{path}: column reasons_{kind.value} is not a JSON list of reason codes")
        longest = max(longest, len(rows))
    if longest <= top:
        return column
    trimmed = [None if t is None else json.dumps(json.loads(t)[:top]) for t in column.to_pylist()]
    return pa.array(trimmed, type=pa.string())


def _read_batch_file(path: Path, *, rows: Mapping[str, int], n_rows: int, versions: Mapping[ModelKind, str],
                     snapshot_as_of: date | None, policy: Policy, top_reasons: int) -> _BatchFile:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise LoadError("the batch scoring file cannot be read", f"{path}: {exc}") from exc
    if "customer_id" not in table.column_names:
        raise LoadError("the batch scoring file has no customer_id column", str(path))
    meta = table.schema.metadata or {}
    notes: list[str] = []
    file_as_of: date | None = None
    if "as_of" in table.column_names and table.num_rows:
        latest = pc.max(table["as_of"]).as_py()
        file_as_of = latest.date() if isinstance(latest, datetime) else latest
    cutoffs: Cutoffs | None = None
    if CUTOFFS_KEY in meta:
        try:
            cutoffs = Cutoffs.model_validate_json(meta[CUTOFFS_KEY])
        except ValueError as exc:
            raise LoadError("the batch scoring file has unreadable cut-offs", f"{path}: {exc}") from exc
        file_as_of = file_as_of or cutoffs.as_of
    file_versions: dict[str, str] = {}
    for kind in ModelKind:
        column = f"model_version_{kind.value}"
        if column in table.column_names:
            values = [v for v in pc.unique(table[column]).to_pylist() if v]
            if len(values) == 1:
                file_versions[kind.value] = str(values[0])
    same_day = snapshot_as_of is None or file_as_of is None or file_as_of == snapshot_as_of
    if not same_day:
        notes.append(f"the batch scoring is of {file_as_of}, the snapshot of {snapshot_as_of}: its cut-offs "
                     "and reason codes are not used")
    elif snapshot_as_of is None:
        notes.append("the snapshot has no as-of date: the batch scoring's date could not be checked")
    use_cutoffs = cutoffs is not None and same_day and cutoffs.label == policy.label
    if cutoffs is not None and cutoffs.label != policy.label:
        notes.append(f"the batch cut-offs are for policy {cutoffs.label}, the server runs {policy.label}: "
                     "cut-offs resolved on the snapshot instead")
    reasons: dict[str, pa.Array] = {}
    with_reasons = np.zeros(n_rows, dtype=bool)
    if same_day:
        ids = table["customer_id"].cast(pa.string()).to_pylist()
        position = np.array([rows.get(str(i), -1) for i in ids], dtype=np.int64)
        take = np.full(n_rows, -1, dtype=np.int64)
        known = position >= 0
        take[position[known]] = np.flatnonzero(known)
        indices = pa.array(take, mask=take < 0)
        for kind, version in versions.items():
            column = f"reasons_{kind.value}"
            if column not in table.column_names:
                continue
            if file_versions.get(kind.value) != version:
                notes.append(f"cached {kind.value} reasons are of model version "
                             f"{file_versions.get(kind.value)}, the server runs {version}: computed on demand")
                continue
            aligned = table[column].cast(pa.string()).take(indices).combine_chunks()
            if aligned.null_count == len(aligned):  # batch scoring ran without reasons
                continue
            aligned = _checked_reasons(aligned, kind, top_reasons, path)
            reasons[kind.value] = aligned
            with_reasons |= ~np.asarray(aligned.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    heavy = [c for c in table.column_names if c == "actions" or c.startswith("reasons_")]  # not summarised
    try:
        summary = portfolio_summary(table.drop_columns(heavy).to_pandas())
    except (ValueError, KeyError) as exc:
        notes.append(f"no portfolio summary: {exc}")
        summary = None
    info = ScoresFileInfo(
        status="loaded", as_of=file_as_of, model_versions=file_versions,
        policy_version=meta.get(POLICY_KEY, b"").decode() or None, cutoffs_used=use_cutoffs,
        reasons_kinds=tuple(reasons), customers_with_reasons=int(with_reasons.sum()), notes=tuple(notes),
    )
    return _BatchFile(info, cutoffs if use_cutoffs else None, reasons, summary)


# --- the bundle ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ServingBundle:
    """Everything one request needs, immutable once built. See the module docstring."""

    bundle_id: str
    models: ModelSet
    model_alias: str
    policy: Policy
    cutoffs: Cutoffs
    cutoffs_source: str  # "scores_file" or "snapshot"
    snapshot_as_of: date | None
    customer_ids: np.ndarray  # (n,) object
    rows: dict[str, int]
    X: np.ndarray  # (n, len(models.feature_names)) float64, the encoded snapshot
    attributes: dict[str, np.ndarray]  # policy flag columns per row
    scored: ScoredRows
    reasons: dict[str, pa.Array]  # cached batch reasons per kind, aligned to rows
    summary: dict[str, Any] | None
    scores_file: ScoresFileInfo
    loaded_at: datetime
    load_seconds: float
    top_reasons: int = 3
    #: per categorical feature, level -> code (inline features)
    level_codes: dict[str, dict[str, int]] = field(default_factory=dict)
    feature_position: dict[str, int] = field(default_factory=dict)

    # -- identity ---------------------------------------------------------------------------

    @property
    def versions(self) -> dict[str, str | None]:
        """Model version per kind (None for an optional kind that is not registered)."""
        return {k.value: self.models.versions.get(k) for k in ModelKind}

    @property
    def snapshot_as_of_text(self) -> str | None:
        return None if self.snapshot_as_of is None else self.snapshot_as_of.isoformat()

    @property
    def categories(self) -> list[str]:
        return self.models.categories

    @property
    def horizon_days(self) -> int:
        return self.models.horizon_days

    @property
    def n_customers(self) -> int:
        return len(self.customer_ids)

    @property
    def flag_columns(self) -> list[str]:
        return [f.column for f in self.policy.flags]

    def row_of(self, customer_id: str) -> int | None:
        return self.rows.get(customer_id)

    # -- reasons ----------------------------------------------------------------------------

    def cached_reasons(self, i: int) -> tuple[dict[str, str], list[ModelKind]]:
        """Reasons of row ``i`` from the batch file as JSON text, and the kinds with none cached.

        The text is passed through to the response as it is (checked when loaded).
        """
        found: dict[str, str] = {}
        missing: list[ModelKind] = []
        for kind in self.models.bundles:
            column = self.reasons.get(kind.value)
            text = None if column is None else column[i].as_py()
            if text is None:
                missing.append(kind)
            else:
                found[kind.value] = text
        return found, missing

    def compute_reasons(self, X: np.ndarray, kinds: Sequence[ModelKind] | None = None) -> list[dict[str, list[dict[str, Any]]]]:
        """TreeSHAP reason codes of the rows of ``X`` (one thread), per row and kind."""
        models = self.models
        if kinds is not None:
            models = dataclasses.replace(models, bundles={k: b for k, b in models.bundles.items() if k in kinds})
        if not models.bundles or X.shape[0] == 0:
            return [{} for _ in range(X.shape[0])]
        per_kind = compute_reasons(models, X, top=self.top_reasons, num_threads=1)
        return [{kind: rows[i] for kind, rows in per_kind.items()} for i in range(X.shape[0])]

    # -- inline features --------------------------------------------------------------------

    def encode_features(self, features: Mapping[str, Any], base: np.ndarray | None,
                        base_attributes: Mapping[str, Any] | None = None
                        ) -> tuple[np.ndarray, dict[str, Any], list[FeatureProblem], list[str]]:
        """One customer's inline features -> a matrix row, flag attributes, problems, warnings.

        Starts from ``base`` (the customer's snapshot row) or all missing; each feature sent
        replaces its column. ``None`` means missing. Numbers must be finite and within
        +-1e15; categoricals must be strings, and a level the models never saw is treated as
        missing (with a warning). Policy flag columns (e.g. ``is_reference_account``) are
        accepted as attributes. Messages never contain the values sent.
        """
        row = np.full(len(self.models.feature_names), np.nan) if base is None else base.copy()
        attributes = dict(base_attributes or {c: False for c in self.flag_columns})
        problems: list[FeatureProblem] = []
        unknown_levels: list[str] = []
        for name, value in features.items():
            if name in self.flag_columns:
                if value is not None and not isinstance(value, bool | int | float | str):
                    problems.append(FeatureProblem(name, "must be true/false, a number or a string"))
                else:
                    attributes[name] = value
                continue
            j = self.feature_position.get(name)
            if j is None:
                problems.append(FeatureProblem(
                    name, "unknown feature: the loaded models do not read it (GET /v1/models lists the features)",
                    "extra_forbidden"))
                continue
            if value is None:
                row[j] = np.nan
                continue
            levels = self.level_codes.get(name)
            if levels is not None:
                if not isinstance(value, str):
                    problems.append(FeatureProblem(name, "must be a string (a category level) or null", "string_type"))
                    continue
                code = levels.get(value)
                if code is None:
                    unknown_levels.append(name)
                    row[j] = np.nan
                else:
                    row[j] = code
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(FeatureProblem(name, "must be a number or null", "float_type"))
                continue
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                problems.append(FeatureProblem(
                    name, "must be a finite number; send null for a missing value", "finite_number"))
            elif abs(number) > MAX_ABS_FEATURE:
                problems.append(FeatureProblem(
                    name, f"must be between -{MAX_ABS_FEATURE:g} and {MAX_ABS_FEATURE:g}", "less_than_equal"))
            else:
                row[j] = number
        warnings = [f"{name}: unknown category level, treated as missing" for name in unknown_levels]
        return row, attributes, problems, warnings

    def score_rows(self, ids: Sequence[str], X: np.ndarray, attributes: Mapping[str, Sequence[Any]]) -> ScoredRows:
        """Score rows sent inline: ``score_matrix`` (one thread) + ``assign_portfolio``."""
        scores = score_matrix(self.models, X, num_threads=1)
        attrs = {c: np.asarray(list(attributes.get(c, [False] * len(ids))), dtype=object) for c in self.flag_columns}
        return place_rows(self.models, self.policy, self.cutoffs, np.asarray(list(ids), dtype=object), scores, attrs)

    # -- description ------------------------------------------------------------------------

    def features_description(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in self.models.feature_names:
            levels = self.models.categorical_levels.get(name)
            out.append({"name": name, "type": "category" if levels is not None else "number",
                        "levels": list(levels) if levels is not None else None})
        for column in self.flag_columns:
            out.append({"name": column, "type": "attribute", "levels": None})
        return out

    def models_description(self) -> list[dict[str, Any]]:
        out = []
        for kind in ModelKind:
            bundle: ModelBundle | None = self.models.bundles.get(kind)
            if bundle is None:
                out.append({"kind": kind.value, "registered_name": kind.registered_name, "alias": self.model_alias,
                            "version": None, "loaded": False, "horizon_days": None, "trees": None,
                            "n_features": None, "targets": [], "metrics": {}})
                continue
            wanted = [m for m in KEY_METRICS[kind] if m in bundle.metrics] or list(bundle.metrics)
            metrics = {m: _finite(bundle.metrics[m]) for m in wanted}
            out.append({"kind": kind.value, "registered_name": kind.registered_name, "alias": self.model_alias,
                        "version": self.models.versions.get(kind), "loaded": True,
                        "horizon_days": bundle.horizon_days, "trees": bundle.booster.num_trees(),
                        "n_features": len(bundle.feature_names),
                        "targets": list(bundle.targets) if kind is ModelKind.PROPENSITY else [],
                        "metrics": metrics})
        return out


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --- loading ---------------------------------------------------------------------------------


def _setup_mlflow(settings: ServingSettings) -> str:
    import mlflow

    uri = settings.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def prepare_loading(settings: ServingSettings) -> None:
    """A loading process's one-time set-up, for the registry of ``settings``, ahead of its first load.

    A process's first load imports LightGBM (with scikit-learn and SciPy, seconds of CPU:
    ``crmscore.bundle`` imports it on first use) and MLflow, and its first MLflow client builds
    the tracking store (SQLAlchemy, Alembic, MLflow's ORM models; for a database URI, the engine
    and a schema check), which MLflow then caches for the process. The loader process calls
    this as it starts, while the server is loading its first bundle, so that its first reload
    costs what later ones cost (it took 21-23 s at niceness 10 on busy cores:
    docs/reliability.md). Nothing is read from the registry: one that cannot be reached costs
    no wait here, and fails the load that needs it, with the reason.
    """
    import lightgbm  # noqa: F401 - for ModelBundle.from_payload
    import mlflow.artifacts  # noqa: F401 - the modules download_artifacts needs
    from mlflow import MlflowClient

    _setup_mlflow(settings)
    MlflowClient()  # builds the tracking store for the URI (cached by MLflow)


def load_champions(alias: str = "champion") -> ModelSet:
    """The four registered models at ``alias``, as one ModelSet: what the server and batch
    scoring load. Credit risk is optional (a base without invoices has no credit model: its
    scores are empty, a missing component). MLflow must already point at the registry.

    Raises
    ------
    LoadError
        A required model has no version at ``alias``, one cannot be loaded (registry
        unreachable, artefact missing or corrupt), or the models do not fit together.
    """
    bundles: dict[ModelKind, ModelBundle] = {}
    versions: dict[ModelKind, str] = {}
    for kind in ModelKind:
        name = f"{kind.registered_name}@{alias}"
        try:
            bundles[kind], versions[kind] = load_registered_bundle(kind, alias=alias)
        except LookupError as exc:
            if kind in OPTIONAL_KINDS:
                logger.warning("no %s: credit scores will be empty (listed as a missing component)", name)
                continue
            reason = f"registered model {kind.registered_name} has no version with alias {alias!r}"
            raise LoadError(reason, "" if str(exc) == reason else str(exc)) from exc
        except Exception as exc:  # registry unreachable, artefact missing or corrupt
            raise LoadError(f"model {name} could not be loaded", f"{type(exc).__name__}: {exc}") from exc
    try:
        return ModelSet.from_bundles(bundles, versions)
    except ValueError as exc:
        raise LoadError("the champion models do not fit together", str(exc)) from exc


def _read_snapshot(path: Path) -> tuple[pd.DataFrame, date | None]:
    if not path.exists():
        raise LoadError("feature snapshot not found", f"no file or folder at {path}")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise LoadError("the feature snapshot cannot be read", f"{path}: {exc}") from exc
    if "customer_id" not in table.column_names:
        raise LoadError("the feature snapshot has no customer_id column", str(path))
    if table.num_rows == 0:
        raise LoadError("the feature snapshot has no customers", str(path))
    as_of: date | None = None
    raw = (table.schema.metadata or {}).get(AS_OF_KEY)
    if raw:
        try:
            as_of = date.fromisoformat(raw.decode()[:10])
        except ValueError:
            logger.warning("snapshot %s: as-of metadata is not a date; ignored", path)
    if as_of is None and "as_of" in table.column_names:
        latest = pc.max(table["as_of"]).as_py()
        as_of = latest.date() if isinstance(latest, datetime) else latest
    return table.to_pandas(), as_of


Loader = Callable[[ServingSettings], ServingBundle]


def load_serving_bundle(settings: ServingSettings) -> ServingBundle:
    """Load, score and warm up a complete bundle; raise :class:`LoadError` saying why not.

    Blocking (MLflow downloads, Parquet, scoring the snapshot): the server runs it in a worker
    thread while the previous bundle keeps serving.
    """
    started = time.perf_counter()
    # Local files first: a bad file fails fast, before any download.
    try:
        policy = load_policy(settings.policy_path)
    except (OSError, ValueError) as exc:
        raise LoadError("the portfolio policy cannot be read", str(exc)) from exc
    frame, as_of = _read_snapshot(settings.snapshot_path)
    ids = frame["customer_id"].astype(str).to_numpy(dtype=object)
    rows = {cid: i for i, cid in enumerate(ids.tolist())}
    if len(rows) != len(ids):
        raise LoadError("the feature snapshot has duplicate customer ids",
                        f"{len(ids) - len(rows)} duplicate(s) in {settings.snapshot_path}")
    _setup_mlflow(settings)
    models = load_champions(settings.model_alias)
    try:
        X = np.ascontiguousarray(models.encode(frame), dtype=np.float64)
    except (KeyError, ValueError, TypeError) as exc:
        raise LoadError("the feature snapshot does not fit the models", str(exc).strip("'\"")) from exc
    attributes = {
        c: (frame[c].astype(object).to_numpy() if c in frame.columns else np.zeros(len(ids), dtype=bool))
        for c in dict.fromkeys(f.column for f in policy.flags)
    }
    del frame

    batch: _BatchFile | None = None
    if settings.scores_path is None:
        scores_info = ScoresFileInfo(status="not_configured")
    elif not settings.scores_path.exists():
        logger.warning("no batch scoring at %s yet: reasons computed on demand, no portfolio summary",
                       settings.scores_path)
        scores_info = ScoresFileInfo(status="missing", notes=("the batch scoring file does not exist yet",))
    else:
        batch = _read_batch_file(settings.scores_path, rows=rows, n_rows=len(ids), versions=models.versions,
                                 snapshot_as_of=as_of, policy=policy, top_reasons=settings.top_reasons)
        scores_info = batch.info
        for note in scores_info.notes:
            logger.warning("batch scoring %s: %s", settings.scores_path, note)

    # Pass 1: every model score of every customer (the batch function, in chunks).
    n = len(ids)
    chunks = [slice(a, min(a + LOAD_CHUNK_ROWS, n)) for a in range(0, n, LOAD_CHUNK_ROWS)]
    try:
        parts = [score_matrix(models, X[s], num_threads=settings.load_threads) for s in chunks]
    except Exception as exc:
        raise LoadError("the models failed to score the snapshot", f"{type(exc).__name__}: {exc}") from exc
    scores = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    if batch is not None and batch.cutoffs is not None:
        cutoffs, source = batch.cutoffs, "scores_file"
    else:
        try:
            cutoffs = resolve_cutoffs(policy, _scores_frame(ids, scores, {}).assign(as_of=pd.Timestamp(as_of) if as_of else pd.NaT))
        except ValueError as exc:
            raise LoadError("the portfolio cut-offs cannot be resolved", str(exc)) from exc
        source = "snapshot"
    # Pass 2: portfolio placement with the bundle's cut-offs.
    scored = ScoredRows.concat([
        place_rows(models, policy, cutoffs, ids[s], {k: v[s] for k, v in scores.items()},
                   {k: v[s] for k, v in attributes.items()})
        for s in chunks
    ])

    bundle = ServingBundle(
        bundle_id=uuid.uuid4().hex[:12],
        models=models,
        model_alias=settings.model_alias,
        policy=policy,
        cutoffs=cutoffs,
        cutoffs_source=source,
        snapshot_as_of=as_of,
        customer_ids=ids,
        rows=rows,
        X=X,
        attributes=attributes,
        scored=scored,
        reasons=batch.reasons if batch is not None else {},
        summary=batch.summary if batch is not None else None,
        scores_file=scores_info,
        loaded_at=datetime.now(UTC),
        load_seconds=0.0,
        top_reasons=settings.top_reasons,
        level_codes={f: {lv: i for i, lv in enumerate(levels)} for f, levels in models.categorical_levels.items()},
        feature_position={name: j for j, name in enumerate(models.feature_names)},
    )
    _warm_up(bundle)
    elapsed = time.perf_counter() - started
    bundle = dataclasses.replace(bundle, load_seconds=round(elapsed, 3))
    logger.info("bundle %s loaded in %.1f s: models %s, %d customers as of %s, cut-offs from the %s",
                bundle.bundle_id, elapsed, bundle.versions, n, as_of, source.replace("_", " "))
    return bundle


def _warm_up(bundle: ServingBundle) -> None:
    """One prediction and one explanation per model, so the first request pays for nothing."""
    try:
        _serve_one(bundle)
    except Exception as exc:
        raise LoadError("the models failed their warm-up prediction", f"{type(exc).__name__}: {exc}") from exc


def _serve_one(bundle: ServingBundle) -> None:
    """What a request does for its first customer: scores, reasons and the cached row."""
    x = bundle.X[:1]
    score_matrix(bundle.models, x, num_threads=1)
    bundle.compute_reasons(x)
    bundle.scored.record(0)


# --- the holder ------------------------------------------------------------------------------


class ReloadInProgress(RuntimeError):
    """A load is already running; the message says since when."""


@dataclass(frozen=True)
class LoadAttempt:
    """The outcome of the last load attempt."""

    at: datetime
    ok: bool
    seconds: float
    reason: str | None = None  # short, names no file
    detail: str | None = None


class BundleHolder:
    """The bundle being served, swapped atomically by :meth:`reload`.

    Readers call :attr:`current` once per request and use that object to the end; the swap
    is a single reference assignment on the event loop, so a request never sees half of one
    bundle and half of another. Only one load runs at a time.

    With the default loader, the first load runs in a worker thread (nothing is served yet, so
    nothing waits for the GIL) and starts the loader process beside it; every later load is
    built in that process and only unpickled and warmed up here. :meth:`close` stops it.
    """

    def __init__(self, settings: ServingSettings, loader: Loader | None = None) -> None:
        self.settings = settings
        self.loader: Loader = loader or load_serving_bundle
        #: with the default loader, reloads are built here (a loader passed in runs in a thread)
        self.loader_process: LoaderProcess | None = LoaderProcess() if loader is None else None
        self.current: ServingBundle | None = None
        self.last_attempt: LoadAttempt | None = None
        self.loading_since: datetime | None = None
        self.generation = 0
        self._check: tuple[ServingBundle, float, str | None] | None = None  # (bundle, when, reason)
        self._listeners: list[Callable[[ServingBundle], None]] = []
        self._background: set[asyncio.Task[None]] = set()

    def on_swap(self, listener: Callable[[ServingBundle], None]) -> None:
        """Call ``listener(bundle)`` after each successful swap (e.g. to update metrics)."""
        self._listeners.append(listener)

    @property
    def ready(self) -> bool:
        return self.current is not None

    def self_check(self, bundle: ServingBundle, max_age_seconds: float = 5.0) -> str | None:
        """Can ``bundle`` still serve? ``None`` if so, else the reason (logged as our bug).

        Readiness must tell the truth: a bundle that loaded but cannot answer (the check: one
        customer's four scores and cached row, well under a millisecond) turns readiness red. The
        result is cached per bundle for ``max_age_seconds``, so probes cost nothing under load.
        """
        now = time.monotonic()
        cached = self._check
        if cached is not None and cached[0] is bundle and now - cached[1] < max_age_seconds:
            return cached[2]
        try:
            x = bundle.X[:1]
            score_matrix(bundle.models, x, num_threads=1)  # scores only: reasons were proven at warm-up
            bundle.scored.record(0)
            reason = None
        except Exception as exc:
            reason = "the loaded bundle fails its self-check (one customer's scores): an internal fault"
            logger.error("bundle %s fails its self-check: %s: %s", bundle.bundle_id, type(exc).__name__, exc)
        self._check = (bundle, now, reason)
        return reason

    def not_ready_reason(self) -> str:
        if self.current is not None:
            return ""
        if self.loading_since is not None and self.last_attempt is None:
            return f"loading the first bundle (started {self.loading_since.isoformat(timespec='seconds')})"
        if self.last_attempt is not None and not self.last_attempt.ok:
            when = self.last_attempt.at.isoformat(timespec="seconds")
            retry = " (retrying)" if self.loading_since is not None else ""
            return f"the last load failed at {when}: {self.last_attempt.reason}{retry}"
        return "no bundle loaded yet"

    async def reload(self) -> ServingBundle:
        """Load a new bundle in a worker thread and swap it in; raise on failure.

        Raises
        ------
        ReloadInProgress
            Another load is running.
        LoadError
            The load failed; the previous bundle (if any) keeps serving.
        """
        import anyio.to_thread

        if self.loading_since is not None:
            raise ReloadInProgress(
                f"a reload is already running (started {self.loading_since.isoformat(timespec='seconds')})")
        self.loading_since = datetime.now(UTC)
        started = time.perf_counter()
        work = self._load_in_loader_process if self.loader_process is not None and self.current is not None \
            else self._load
        try:
            bundle = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except LoadError as exc:
            self.last_attempt = LoadAttempt(datetime.now(UTC), False, time.perf_counter() - started,
                                            exc.reason, str(exc))
            logger.error("bundle load failed after %.1f s: %s%s", time.perf_counter() - started, exc,
                         "; the previous bundle keeps serving" if self.current is not None else "")
            raise
        finally:
            self.loading_since = None
        previous, self.current = self.current, bundle  # the swap
        self.generation += 1
        self._check = None  # the cached self-check held the old bundle alive
        self._trim_once_freed(previous)
        del previous
        # The bundle lives until the next reload: move it (and whatever else is alive now) out of
        # the cyclic GC's generations, so full collections stop scanning its millions of objects
        # (a latency spike each time otherwise). Cheap, no collection here; reference counting
        # still frees an old bundle, which holds no reference cycles.
        gc.freeze()
        self.last_attempt = LoadAttempt(datetime.now(UTC), True, time.perf_counter() - started)
        for listener in self._listeners:
            listener(bundle)
        return bundle

    def _trim_once_freed(self, previous: ServingBundle | None) -> None:
        """Once the replaced bundle is freed, give the C heap's free pages back to the system.

        Freed objects go back to malloc, which keeps the pages: measured here, the server's RSS
        grew ~10 MB per reload (docs/reliability.md). Requests in flight (and the admin
        reload's response) hold the old bundle for a moment: wait for its last reference, then
        ``malloc_trim`` in a worker thread (the call releases the GIL).
        """
        if previous is None:
            return
        gone = weakref.ref(previous)

        async def trim() -> None:
            import anyio.to_thread

            for _ in range(TRIM_WAIT_STEPS):
                if gone() is None:
                    break
                await asyncio.sleep(TRIM_WAIT_STEP_SECONDS)
            await anyio.to_thread.run_sync(malloc_trim)

        task = asyncio.get_running_loop().create_task(trim(), name="crmscore-malloc-trim")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _load(self) -> ServingBundle:
        if self.loader_process is not None:
            # imports and sets up MLflow in the background (seconds of CPU) while this load
            # runs, so the first reload finds it ready (prepare_loading)
            self.loader_process.start(self.settings)
        try:
            return self.loader(self.settings)
        except LoadError:
            raise
        except Exception as exc:  # anything else is still a failed load, never a crash
            logger.exception("unexpected error while loading a bundle")
            raise LoadError("unexpected error while loading", f"{type(exc).__name__}: {exc}") from exc

    def _load_in_loader_process(self) -> ServingBundle:
        """Build the bundle in the loader process; here only unpickle it and warm it up."""
        assert self.loader_process is not None
        started = time.perf_counter()
        try:
            pieces, records = self.loader_process.load(self.settings)
        except LoaderProcessDied as exc:
            raise LoadError("the bundle loader process stopped before the bundle was built", str(exc)) from exc
        except LoadError:
            raise
        except Exception as exc:  # the pipe or the child misbehaving is still a failed load
            logger.exception("unexpected error while loading a bundle in the loader process")
            raise LoadError("unexpected error while loading", f"{type(exc).__name__}: {exc}") from exc
        replay(records)
        try:
            bundle = from_pieces(ServingBundle, pieces)
        except Exception as exc:
            raise LoadError("the bundle built by the loader process cannot be read",
                            f"{type(exc).__name__}: {exc}") from exc
        _warm_up(bundle)  # this process's first predictions, before the swap
        elapsed = time.perf_counter() - started
        logger.info("bundle %s received from the loader process and warmed up in %.1f s", bundle.bundle_id, elapsed)
        return dataclasses.replace(bundle, load_seconds=round(elapsed, 3))

    def close(self) -> None:
        """Stop the loader process (the server is shutting down)."""
        if self.loader_process is not None:
            self.loader_process.close()
