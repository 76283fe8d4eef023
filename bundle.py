"""The model bundle: what training writes to MLflow and what serving reads back.

Training (``crmscore.training``) fits a bundle; serving (``crmscore.serving``) only loads one
from the MLflow registry. Both import this module and nothing of each other, so the maths that
turns a booster's raw score into what a CRM screen shows lives here, once:

* the feature encoding (categoricals to the integer codes the booster was trained on),
* calibration of raw scores into probabilities (isotonic or Platt, fitted on data the
  booster did not see),
* propensity's expansion of one customer into one row per product category,
* reason codes from LightGBM's own TreeSHAP contributions (``pred_contrib=True``),
* scorecard points and grades for credit risk,
* customer lifetime value from expected margin and retention,
* the GLM base the trees are boosted from (:class:`LogLinearBase`: expected margin's
  log-linear one, or a fit-table classifier's logistic one), when validation chose one.

A bundle on disk is a folder: ``booster.txt`` (LightGBM's text format), ``bundle.json``
(everything else). No pickles: a bundle can be read by any later version of the code.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Collection

    import lightgbm as lgb

# LightGBM (which imports scikit-learn) and MLflow are imported where they are used, not here:
# they are ~4 of the ~5 CPU-seconds it takes to import this module, which every batch scoring
# worker process and every command pays (serving/batch/local.py).

BUNDLE_FORMAT = 1


#: propensity customers expanded (n_targets rows each) and predicted at a time by
#: ``ModelBundle.raw``: 8,192 x 6 rows x 55 features is a 21 MB buffer, reused slice after slice
EXPAND_SLICE = 8192


class ModelKind(StrEnum):
    """The four model kinds (ARCHITECTURE.md)."""

    CHURN = "churn"
    PROPENSITY = "propensity"
    CREDIT_RISK = "credit_risk"
    EXPECTED_MARGIN = "expected_margin"

    @property
    def registered_name(self) -> str:
        """MLflow experiment and registered-model name, e.g. ``crm-credit-risk``."""
        return "crm-" + self.value.replace("_", "-")

    @property
    def is_classifier(self) -> bool:
        return self is not ModelKind.EXPECTED_MARGIN

    @property
    def reason_prefix(self) -> str:
        return {"churn": "CHN", "propensity": "PRP", "credit_risk": "CRD", "expected_margin": "MRG"}[
            self.value
        ]

    @classmethod
    def parse(cls, value: str) -> ModelKind:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown model kind {value!r}; expected one of {allowed}") from None


# --- calibration ------------------------------------------------------------------------------


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


@dataclass
class Calibrator:
    """Maps a booster's raw score (log-odds) to a calibrated probability.

    ``method="beta"``: beta calibration (Kull, Silva Filho & Flach 2017),
    ``sigmoid(a * ln q - b * ln(1 - q) + c)`` with ``q = sigmoid(raw)`` and ``a, b >= 0``;
    ``"platt"``: a logistic curve ``sigmoid(a * raw + b)`` (Platt 1999), used when the
    calibration set is small or beta's fit is not monotone. Both are *strictly* increasing, so
    the booster's ranking (its AUC) and its monotone constraints survive calibration.
    Isotonic regression (Zadrozny & Elkan 2002) was the default until 2026-12: its flat steps
    tied customers the booster had ranked apart (on a 10k base, 18 distinct credit scores and
    an AUC of 0.885 against the raw score's 0.968), so it is kept only to load older bundles.
    """

    method: str = "identity"
    knots_x: list[float] = field(default_factory=list)
    knots_y: list[float] = field(default_factory=list)
    a: float = 1.0
    b: float = 0.0
    c: float = 0.0

    #: below this many calibration rows (or 50 of either class) fit only Platt's two parameters
    MIN_BETA_ROWS = 2000

    @classmethod
    def fit(cls, raw: np.ndarray, y: np.ndarray) -> Calibrator:
        """Fit on raw scores of rows the booster was not trained on. ``y`` is 0/1."""
        from sklearn.linear_model import LogisticRegression

        raw = np.asarray(raw, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if raw.size == 0 or y.min() == y.max():
            return cls()
        if raw.size >= cls.MIN_BETA_ROWS and y.sum() >= 50 and (1 - y).sum() >= 50:
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(_beta_features(raw), y)
            a, b = (float(v) for v in lr.coef_[0])
            if a > 0 and b > 0:
                return cls("beta", a=a, b=b, c=float(lr.intercept_[0]))
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
        return cls("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if self.method == "beta":
            f = _beta_features(raw.ravel())
            return sigmoid(self.a * f[:, 0] + self.b * f[:, 1] + self.c).reshape(raw.shape)
        if self.method == "isotonic":
            return np.interp(raw, self.knots_x, self.knots_y)
        if self.method == "platt":
            return sigmoid(self.a * raw + self.b)
        return sigmoid(raw)


def _readable(value: float | str | None, *, as_date: bool = False) -> str:
    """A reason's value in its text, for people: "= 25" (not 25.0), "= 5.77", "= 2,073.73",
    "= 846" (845.9987 days), "= 0.125", "= B2B", or "is missing"; ``as_date``, a number of days
    since 1970-01-01: "= 2021-08-24". The reason's ``value`` field keeps the number."""
    if value is None:
        return "is missing"
    if isinstance(value, str):
        return f"= {value}"
    if as_date and math.isfinite(value):
        return f"= {np.datetime64('1970-01-01') + np.timedelta64(math.floor(value), 'D')}"
    if abs(value) < 1:
        return f"= {value:.3g}"
    return "= " + f"{value:,.2f}".rstrip("0").rstrip(".")


def _beta_features(raw: np.ndarray) -> np.ndarray:
    """``ln q`` and ``-ln(1 - q)`` of ``q = sigmoid(raw)``, computed without overflow."""
    return np.column_stack([-np.logaddexp(0.0, -raw), np.logaddexp(0.0, raw)])


# --- scorecard and CLV --------------------------------------------------------------------------


@dataclass(frozen=True)
class ScorecardConfig:
    """Points-to-double-the-odds scaling (Siddiqi 2006, *Credit Risk Scorecards*, ch. 6).

    ``points = offset + factor * ln(odds)``, odds = good:bad = (1 - PD) / PD,
    ``factor = pdo / ln 2``, ``offset = base_points - factor * ln(base_odds)``.
    """

    base_points: float = 600.0
    base_odds: float = 50.0
    pdo: float = 20.0
    #: grade -> lowest points of the grade, best grade first
    grades: tuple[tuple[str, float], ...] = (
        ("A", 680.0), ("B", 640.0), ("C", 600.0), ("D", 560.0), ("E", -math.inf),
    )

    def points(self, pd_: np.ndarray) -> np.ndarray:
        factor = self.pdo / math.log(2.0)
        offset = self.base_points - factor * math.log(self.base_odds)
        p = np.clip(np.asarray(pd_, dtype=np.float64), 1e-9, 1 - 1e-9)
        return offset + factor * (np.log1p(-p) - np.log(p))

    def grade(self, points: np.ndarray) -> np.ndarray:
        labels = np.array([g for g, _ in self.grades], dtype=object)
        lows = np.array([lo for _, lo in self.grades])
        # grades are ordered best first with decreasing lower bounds
        index = np.searchsorted(-lows, -np.asarray(points, dtype=np.float64), side="left")
        out = labels[np.clip(index, 0, len(labels) - 1)]
        return np.where(np.isnan(points), None, out)


@dataclass(frozen=True)
class ClvConfig:
    """Customer lifetime value as the present value of expected future margins.

    ``CLV = sum_{k=0}^{K-1} m * r**k / (1 + d) ** ((k + 1) * H / 365)``, with m the expected
    margin of one horizon of H days (expected-margin model), r = 1 - churn probability the
    per-horizon retention (churn model), d the yearly discount rate, K = years * 365 / H
    horizons: the retention-based CLV of Gupta & Lehmann (2003, *J. Interactive Marketing*
    17(1)) and Berger & Nasr (1998), in discrete horizon-long periods.
    """

    years: float = 3.0
    discount_rate: float = 0.10

    def clv(self, expected_margin: np.ndarray, churn_prob: np.ndarray, horizon_days: int) -> np.ndarray:
        m = np.asarray(expected_margin, dtype=np.float64)
        r = 1.0 - np.asarray(churn_prob, dtype=np.float64)
        periods = max(1, int(round(self.years * 365.0 / horizon_days)))
        k = np.arange(periods, dtype=np.float64)
        discount = (1.0 + self.discount_rate) ** (-(k + 1) * horizon_days / 365.0)
        weights = r[..., None] ** k * discount  # (n, periods)
        return m * weights.sum(axis=-1)


def encode_columns(frame: pd.DataFrame, names: list[str], levels: dict[str, list[str]]) -> np.ndarray:
    """Frame -> float64 matrix (n, len(names)): numbers as they are, categoricals as the codes
    of ``levels`` (unknown level -> NaN), columns absent from ``frame`` -> NaN."""
    out = np.full((len(frame), len(names)), np.nan)
    for j, name in enumerate(names):
        if name not in frame.columns:
            continue
        col = frame[name]
        if name in levels:
            codes = pd.Categorical(col.astype("object"), categories=levels[name]).codes
            out[:, j] = np.where(codes < 0, np.nan, codes)
        else:
            out[:, j] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return out


# --- the bundle ----------------------------------------------------------------------------------


@dataclass
class Reason:
    """One reason code: a feature that pushed a score up or down."""

    code: str
    feature: str
    direction: str  # "up" or "down"
    contribution: float  # in the model's raw units (log-odds, or log margin for Tweedie)
    value: float | str | None
    text: str


#: rows per block of LogLinearBase.__call__: its buffers stay in the cache
_BASE_BLOCK_ROWS = 4096


@dataclass(frozen=True)
class LogLinearBase:
    """A GLM the booster is boosted from, on the booster's raw scale: its prediction is
    link^-1(base(x) + trees(x)), the log of expected margin or the log-odds of a classifier
    (or expected margin itself, for a least-squares booster from an additive base).

    Trees predict a constant per leaf, so they cannot rank or size the customers beyond the
    largest values a leaf of training rows holds; a log-linear model in log-scaled features
    (spend ~ rate x value, a power law in each) follows that tail multiplicatively, as the
    count x value models of customer-base analysis do (BG/NBD x Gamma-Gamma). On small
    tables a logistic model states a smooth trend with a few coefficients where trees need
    many leaves of few rows each (fit-table, docs/tables.md). Each numeric feature enters as
    ``sign(x) log(1 + |x|)`` (as ``x`` in an additive base: :attr:`log_scaled` False, for
    values a straight line fits, such as a card balance in the credit limit), clipped to its
    training range (no extrapolation past what training saw), missing values as the training
    median plus a missing indicator,
    standardised; ``coef`` and ``coef_missing`` are per feature. Each categorical feature in
    ``categorical`` enters by its level: ``level_coef[i][code]``, the last entry for a
    missing or unknown level (levels too rare to estimate share the reference, 0).

    ``terms`` gives each feature's part centred on its training mean (numeric features
    first, then the categorical ones: :attr:`features`), so reason codes can add it to the
    trees' TreeSHAP contributions and a row's parts still sum to its raw score.
    """

    columns: list[int]
    low: list[float]
    high: list[float]
    median: list[float]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    coef_missing: list[float]
    term_mean: list[float]
    intercept: float
    categorical: list[int] = field(default_factory=list)
    level_coef: list[list[float]] = field(default_factory=list)
    #: False: the numeric features enter as they are, not log-scaled: an additive base for a
    #: least-squares booster (expected margin in fit-table, when a straight line fits the value)
    log_scaled: bool = True

    def scaled(self, factor: float) -> LogLinearBase:
        """The same base with its raw prediction (and each of its terms) times ``factor``: the
        GLM's share in a blend of the GLM and trees (fit-table's classifiers)."""
        return replace(
            self, coef=[c * factor for c in self.coef], coef_missing=[c * factor for c in self.coef_missing],
            term_mean=[t * factor for t in self.term_mean], intercept=self.intercept * factor,
            level_coef=[[c * factor for c in table] for table in self.level_coef])

    @property
    def features(self) -> list[int]:
        """The matrix columns of :meth:`terms`, in its order."""
        return [*self.columns, *self.categorical]

    def terms(self, X: np.ndarray) -> np.ndarray:
        """Shape (n, len(features)): each feature's centred part of the base's raw prediction."""
        X = np.asarray(X, dtype=np.float64)
        n, v = X.shape[0], self._vectors
        V, Z = np.empty((n, len(self.columns))), np.empty((n, len(self.columns)))
        missing = self._transform(X, V, Z, np.empty(V.shape, dtype=bool))
        numeric = (Z - v["mean"]) * v["weight"] + missing * v["coef_missing"]
        levels = [self._level_terms(X[:, j], i) for i, j in enumerate(self.categorical)]
        return np.column_stack([numeric, *levels]) - np.asarray(self.term_mean)

    def _level_terms(self, codes: np.ndarray, i: int) -> np.ndarray:
        """The ``i``-th categorical feature's coefficient per row (its codes in ``codes``)."""
        table = self._vectors["level_coef"][i]
        missing = len(table) - 1
        safe = np.where(np.isnan(codes) | (codes < 0) | (codes >= missing), missing, codes)
        return table[safe.astype(np.intp)]

    def _transform(self, X: np.ndarray, V: np.ndarray, Z: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Fill ``Z`` with the features as the GLM reads them (``sign(x) log(1 + |x|)``, or
        ``x`` when not :attr:`log_scaled`; the median where missing, clipped to the training
        range) and ``missing`` with where they are missing, for the rows of ``X``; ``V`` (same
        shape) is scratch. Returns ``missing``."""
        np.take(X, self._vectors["columns"], axis=1, out=V)
        np.isnan(V, out=missing)
        if self.log_scaled:
            np.abs(V, out=Z)
            np.log1p(Z, out=Z)
            np.copysign(Z, V, out=Z)
        else:
            np.copyto(Z, V)
        np.copyto(Z, self._vectors["median"], where=missing)
        np.clip(Z, self._vectors["low"], self._vectors["high"], out=Z)
        return missing

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """The base's raw prediction per row: ``intercept + sum(term_mean) + terms(X).sum(1)``.

        Computed in blocks of rows, in buffers reused from block to block, as two matrix-vector
        products: full-size (n x features) temporaries for every step, as the per-feature
        :meth:`terms` needs, cost the batch job more than the trees' predict (first touches of
        fresh memory on these VMs).
        """
        X = np.asarray(X, dtype=np.float64)
        v = self._vectors
        constant = self.intercept - float(v["mean"] @ v["weight"])
        out = np.empty(X.shape[0])
        shape = (min(X.shape[0], _BASE_BLOCK_ROWS), len(self.columns))
        V, Z, missing = np.empty(shape), np.empty(shape), np.empty(shape, dtype=bool)
        for start in range(0, X.shape[0], _BASE_BLOCK_ROWS):
            stop = min(X.shape[0], start + _BASE_BLOCK_ROWS)
            b = stop - start
            self._transform(X[start:stop], V[:b], Z[:b], missing[:b])
            np.copyto(V[:b], missing[:b])  # V's buffer, reused as the missing indicators (0.0 / 1.0)
            out[start:stop] = Z[:b] @ v["weight"] + V[:b] @ v["coef_missing"] + constant
            for i, j in enumerate(self.categorical):
                out[start:stop] += self._level_terms(X[start:stop, j], i)
        return out

    @functools.cached_property
    def _vectors(self) -> dict[str, np.ndarray]:
        """The parameters as arrays, made once (not per chunk); ``weight`` = coef / scale."""
        vectors = {name: np.asarray(getattr(self, name), dtype=np.float64)
                   for name in ("low", "high", "median", "mean", "scale", "coef", "coef_missing")}
        vectors["weight"] = vectors["coef"] / vectors["scale"]
        vectors["columns"] = np.asarray(self.columns, dtype=np.intp)
        vectors["level_coef"] = [np.asarray(t, dtype=np.float64) for t in self.level_coef]
        return vectors


@dataclass
class ModelBundle:
    """A trained model of one kind, ready to score a feature matrix.

    Attributes
    ----------
    feature_names : list of str
        The customer features the model reads, in matrix column order.
    categorical_levels : dict of str to list of str
        For each categorical feature, its levels; code i stands for level i, unknown -> NaN.
    targets : list of str
        Product categories for propensity (one output column each); ``[kind]`` otherwise.
    """

    kind: ModelKind
    feature_names: list[str]
    categorical_levels: dict[str, list[str]]
    booster: lgb.Booster
    targets: list[str]
    calibrators: dict[str, Calibrator] = field(default_factory=dict)
    #: propensity: per target-specific feature, the customer column holding it for each target
    #: (e.g. ``target_revenue_share_365d`` -> [revenue_share_365d_books, ...]); None = absent
    target_features: dict[str, list[str | None]] = field(default_factory=dict)
    monotone: dict[str, int] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    horizon_days: int = 90
    scorecard: ScorecardConfig | None = None
    clv: ClvConfig | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: expected margin: the log-linear model the trees were boosted from (None = trees alone)
    base: LogLinearBase | None = None

    # -- encoding ---------------------------------------------------------------------------

    @property
    def booster_features(self) -> list[str]:
        """Columns of the booster's matrix: customer features, then the propensity target."""
        if self.kind is ModelKind.PROPENSITY:
            return [*self.feature_names, "target_category", *self.target_features]
        return list(self.feature_names)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Customer frame -> float64 matrix of shape (n_customers, n_features).

        Missing columns raise a KeyError naming them; categoricals become codes of the
        training levels (unknown levels become NaN, which LightGBM treats as missing).
        """
        missing = [c for c in self.feature_names if c not in frame.columns]
        if missing:
            raise KeyError(f"features missing for the {self.kind.value} model: {', '.join(missing)}")
        return encode_columns(frame, self.feature_names, self.categorical_levels)

    def expand(self, X: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Propensity: one row per (customer, category), customer-major; identity otherwise.

        Parameters
        ----------
        X : array of shape (n, len(feature_names))
        out : float64 array of shape (n * n_targets, len(booster_features)), optional
            Propensity only: written in place and returned, so a caller expanding slice after
            slice reuses one buffer instead of a fresh matrix per call (:meth:`raw`).
        """
        if self.kind is not ModelKind.PROPENSITY:
            return X
        n, d, k = X.shape[0], X.shape[1], len(self.targets)
        width = d + 1 + len(self.target_features)
        if out is None:
            out = np.empty((n * k, width))
        elif out.shape != (n * k, width) or out.dtype != np.float64:
            raise ValueError(f"out must be a float64 array of shape {(n * k, width)}; got {out.dtype} {out.shape}")
        rows = out.reshape(n, k, width)  # a view: rows[i, j] is customer i's row for category j
        rows[:, :, :d] = X[:, None, :]
        rows[:, :, d] = np.arange(k, dtype=np.float64)
        rows[:, :, d + 1:] = np.nan
        # Target-specific features: the target category's own column of each customer feature.
        for f, columns in enumerate(self.target_features.values(), start=d + 1):
            for j, column in enumerate(columns):
                if column is not None and column in self.feature_names:
                    rows[:, j, f] = X[:, self.feature_names.index(column)]
        return out

    def expand_rows(self, X: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Propensity: one row per customer, for the category ``target[i]`` of each.

        Equals ``expand(X)[np.arange(n) * n_targets + target]`` without building the other
        rows (reason codes explain one category per customer).

        Parameters
        ----------
        X : array of shape (n, len(feature_names))
        target : int array of shape (n,), indices into ``targets``
        """
        if self.kind is not ModelKind.PROPENSITY:
            raise ValueError(f"expand_rows is for the propensity model; this is the {self.kind.value} model")
        n, d = X.shape
        target = np.broadcast_to(np.asarray(target, dtype=np.intp), (n,))
        out = np.full((n, d + 1 + len(self.target_features)), np.nan)
        out[:, :d] = X
        out[:, d] = target
        for f, columns in enumerate(self.target_features.values(), start=d + 1):
            for j, column in enumerate(columns):
                if column is not None and column in self.feature_names:
                    mine = target == j
                    out[mine, f] = X[mine, self.feature_names.index(column)]
        return out

    # -- prediction -------------------------------------------------------------------------

    def raw(self, X: np.ndarray, *, num_threads: int = 0) -> np.ndarray:
        """Raw booster output; shape (n,) or, for propensity, (n, n_targets).

        Propensity expands and predicts ``EXPAND_SLICE`` customers at a time into one reused
        buffer: a fresh (n x n_targets)-row matrix per call cost more than the predict on
        these VMs (first touches of fresh memory; docs/benchmarks.md). Each row's score does
        not depend on the rows predicted with it, so the slices change no score.
        """
        if self.kind is not ModelKind.PROPENSITY:
            raw = self.booster.predict(X, raw_score=True, num_threads=num_threads)
            return raw if self.base is None else raw + self.base(X)
        n, k = X.shape[0], len(self.targets)
        out = np.empty((n, k))
        step = max(1, EXPAND_SLICE)
        buffer = np.empty((min(n, step) * k, X.shape[1] + 1 + len(self.target_features)))
        for start in range(0, n, step):
            stop = min(n, start + step)
            Z = self.expand(X[start:stop], out=buffer[: (stop - start) * k])
            out[start:stop] = self.booster.predict(Z, raw_score=True, num_threads=num_threads).reshape(stop - start, k)
        if self.base is not None:  # the customer's base, shared by every category
            out += self.base(X)[:, None]
        return out

    def predict(self, X: np.ndarray, *, num_threads: int = 0) -> np.ndarray:
        """Calibrated probabilities (classifiers) or expected values (expected margin)."""
        raw = self.raw(X, num_threads=num_threads)
        return self.from_raw(raw)

    def from_raw(self, raw: np.ndarray) -> np.ndarray:
        if self.kind is ModelKind.EXPECTED_MARGIN:
            objective = self.info.get("objective", "tweedie")
            value = np.exp(raw) if objective in ("tweedie", "poisson", "gamma") else raw
            if "lower_bound" in self.info:  # a least-squares model of a non-negative value
                value = np.maximum(value, float(self.info["lower_bound"]))
            # A log-link booster's predictions need not add up to the actual total; the scale
            # fitted on held-out rows (sum of actuals / sum of predictions) balances them.
            return value * float(self.info.get("margin_scale", 1.0))
        if self.kind is ModelKind.PROPENSITY:
            out = np.empty_like(raw)
            for j, target in enumerate(self.targets):
                out[:, j] = self.calibrators.get(target, Calibrator()).apply(raw[:, j])
            return out
        return self.calibrators.get(self.kind.value, Calibrator()).apply(raw)

    def contributions(self, X: np.ndarray, *, num_threads: int = 0, target: np.ndarray | int | None = None) -> np.ndarray:
        """TreeSHAP contributions to the raw score (LightGBM ``pred_contrib``).

        Shape (n, n_booster_features + 1), the last column the expected value; for propensity
        (n, n_targets, n_booster_features + 1), or with ``target`` (a category index per row,
        or one for all) (n, n_booster_features + 1) for that category's row only: TreeSHAP
        costs ~50x a predict per row, so explaining one category is n_targets times cheaper.
        Rows sum to the raw score. With a base (:class:`LogLinearBase`) each feature's
        centred base term is added to its column and the base's mean to the expected value.
        """
        if self.kind is ModelKind.PROPENSITY and target is not None:
            contrib = self.booster.predict(self.expand_rows(X, target), pred_contrib=True, num_threads=num_threads)
        else:
            contrib = self.booster.predict(self.expand(X), pred_contrib=True, num_threads=num_threads)
            if self.kind is ModelKind.PROPENSITY:
                contrib = contrib.reshape(X.shape[0], len(self.targets), -1)
        if self.base is not None:
            # the base is the customer's, the same for every category of a propensity model
            terms = self.base.terms(X)
            view = contrib if contrib.ndim == 2 else contrib.transpose(1, 0, 2)  # (targets, n, f)
            view[..., self.base.features] += terms
            view[..., -1] += self.base.intercept + float(np.sum(self.base.term_mean))
        return contrib

    def top_targets(self, X: np.ndarray, *, num_threads: int = 0) -> np.ndarray:
        """Propensity: each row's top category (index into ``targets``; ties: the first)."""
        return np.argmax(self.predict(X, num_threads=num_threads), axis=1)

    def reason_code(self, feature: str, direction: str) -> str:
        """Stable id: kind prefix, feature, direction, e.g. ``CHN.days_since_last_purchase.UP``."""
        return f"{self.kind.reason_prefix}.{feature}.{direction.upper()}"

    def importance(self, X: np.ndarray, *, max_rows: int = 1000, seed: int = 0, num_threads: int = 0) -> pd.DataFrame:
        """What drives the score over the rows of ``X``: each feature's mean absolute TreeSHAP
        contribution to the raw score (the base's terms included, as in :meth:`reasons`), on a
        seeded sample of at most ``max_rows`` rows (TreeSHAP costs ~50 predicts a row). For
        propensity each sampled row explains one category, the categories taken in turn.

        Columns ``feature``, ``description``, ``mean_abs_contribution`` and ``share`` (of the
        total), largest first. Global importance as the mean |SHAP| (Lundberg et al. 2020)."""
        rows = np.random.default_rng(seed).permutation(X.shape[0])[:max_rows]
        rows.sort()
        sample = X[rows]
        if self.kind is ModelKind.PROPENSITY:
            target = np.arange(len(rows)) % len(self.targets)
            contrib = self.contributions(sample, num_threads=num_threads, target=target)
        else:
            contrib = self.contributions(sample, num_threads=num_threads)
        mean_abs = np.abs(contrib[:, :-1]).mean(axis=0) if len(rows) else np.zeros(contrib.shape[1] - 1)
        names = self.booster_features
        total = float(mean_abs.sum())
        table = pd.DataFrame({
            "feature": names,
            "description": [self.descriptions.get(n, n.replace("_", " ")).split(";")[0] for n in names],
            "mean_abs_contribution": mean_abs,
            "share": mean_abs / total if total > 0 else 0.0,
        })
        return table.sort_values("mean_abs_contribution", ascending=False, kind="stable").reset_index(drop=True)

    def reasons(
        self,
        X: np.ndarray,
        *,
        top: int = 3,
        contributions: np.ndarray | None = None,
        target: np.ndarray | int | None = None,
        num_threads: int = 0,
        dates: Collection[str] = (),
    ) -> list[list[Reason]]:
        """Top ``top`` features by absolute contribution for each row (adverse-action style).
        A feature in ``dates`` holds days since 1970-01-01 and its text shows the date.

        For propensity, ``target`` selects the category, one index for all rows or one per
        row (default: each row's top category, :meth:`top_targets`); ``contributions`` is
        then either all categories' (n, n_targets, m + 1) or the chosen rows' (n, m + 1), as
        ``contributions(X, target=target)`` returns (``target`` required).
        """
        names = self.booster_features
        values = X
        if self.kind is ModelKind.PROPENSITY:
            if contributions is not None and contributions.ndim == 2 and target is None:
                raise ValueError("propensity contributions of one row per customer need the target they explain")
            n = X.shape[0]
            chosen = self.top_targets(X, num_threads=num_threads) if target is None else np.broadcast_to(target, (n,))
            if contributions is None:
                contrib = self.contributions(X, num_threads=num_threads, target=chosen)
            elif contributions.ndim == 3:
                contrib = contributions[np.arange(n), chosen]
            else:
                contrib = contributions
            # the expanded rows hold the target-specific feature values
            values = self.expand_rows(X, chosen)
        else:
            contrib = self.contributions(X, num_threads=num_threads) if contributions is None else contributions
        parts = contrib[:, :-1]
        order = np.argsort(-np.abs(parts), axis=1, kind="stable")[:, :top]
        out: list[list[Reason]] = []
        noun = {
            ModelKind.CHURN: "churn risk",
            ModelKind.PROPENSITY: "purchase propensity",
            ModelKind.CREDIT_RISK: "default risk",
            ModelKind.EXPECTED_MARGIN: "expected margin",
        }[self.kind]
        for i in range(X.shape[0]):
            row: list[Reason] = []
            for j in order[i]:
                c = float(parts[i, j])
                if c == 0.0:
                    continue
                name = names[j]
                direction = "up" if c > 0 else "down"
                value = self._display_value(name, values, i, j)
                desc = self.descriptions.get(name, name.replace("_", " ")).split(";")[0]
                verb = "raises" if c > 0 else "lowers"
                row.append(Reason(self.reason_code(name, direction), name, direction, c, value,
                                  f"{desc} {_readable(value, as_date=name in dates)}: {verb} {noun}"))
            out.append(row)
        return out

    def _display_value(self, name: str, X: np.ndarray, i: int, j: int) -> float | str | None:
        v = X[i, j]
        if name == "target_category":
            return None if np.isnan(v) else self.targets[int(v)]
        if np.isnan(v):
            return None
        levels = self.categorical_levels.get(name)
        if levels is not None:
            return levels[int(v)]
        return round(float(v), 4)

    # -- persistence ------------------------------------------------------------------------

    def to_payload(self) -> dict[str, str]:
        """The bundle as two strings (booster text, JSON): what ``save`` writes and Spark ships."""
        meta = {
            "format": BUNDLE_FORMAT,
            "kind": self.kind.value,
            "feature_names": self.feature_names,
            "categorical_levels": self.categorical_levels,
            "targets": self.targets,
            "calibrators": {k: asdict(v) for k, v in self.calibrators.items()},
            "target_features": self.target_features,
            "monotone": self.monotone,
            "descriptions": self.descriptions,
            "horizon_days": self.horizon_days,
            "scorecard": None if self.scorecard is None else asdict(self.scorecard),
            "clv": None if self.clv is None else asdict(self.clv),
            "metrics": self.metrics,
            "info": self.info,
            "base": None if self.base is None else asdict(self.base),
        }
        return {"booster": self.booster.model_to_string(), "meta": json.dumps(meta, indent=1, default=_json_default)}

    @classmethod
    def from_payload(cls, payload: dict[str, str], source: str = "payload") -> ModelBundle:
        meta = json.loads(payload["meta"])
        if meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{source}: bundle format {meta.get('format')!r} is not supported (expected {BUNDLE_FORMAT})")
        import lightgbm as lgb

        booster = lgb.Booster(model_str=payload["booster"])
        sc = meta.get("scorecard")
        scorecard = None
        if sc is not None:
            sc["grades"] = tuple((g, -math.inf if lo is None else float(lo)) for g, lo in sc["grades"])
            scorecard = ScorecardConfig(**sc)
        clv = None if meta.get("clv") is None else ClvConfig(**meta["clv"])
        return cls(
            kind=ModelKind(meta["kind"]),
            feature_names=meta["feature_names"],
            categorical_levels=meta["categorical_levels"],
            booster=booster,
            targets=meta["targets"],
            calibrators={k: Calibrator(**v) for k, v in meta["calibrators"].items()},
            target_features=meta["target_features"],
            monotone=meta["monotone"],
            descriptions=meta["descriptions"],
            horizon_days=meta["horizon_days"],
            scorecard=scorecard,
            clv=clv,
            metrics=meta["metrics"],
            info=meta["info"],
            base=None if meta.get("base") is None else LogLinearBase(**meta["base"]),
        )

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        payload = self.to_payload()
        (path / "booster.txt").write_text(payload["booster"])
        (path / "bundle.json").write_text(payload["meta"])
        return path

    @classmethod
    def load(cls, path: Path) -> ModelBundle:
        path = Path(path)
        meta_file, booster_file = path / "bundle.json", path / "booster.txt"
        if not meta_file.is_file() or not booster_file.is_file():
            raise FileNotFoundError(f"{path} is not a model bundle: expected bundle.json and booster.txt")
        return cls.from_payload({"booster": booster_file.read_text(), "meta": meta_file.read_text()}, str(path))


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _bundle_pyfunc() -> type:
    import mlflow.pyfunc

    class BundlePyfunc(mlflow.pyfunc.PythonModel):
        """MLflow ``python_model`` wrapper, so a bundle also works as an ``mlflow.pyfunc`` model
        (``mlflow models serve``, ``spark_udf``). Input: a customer feature frame; output: a frame
        of scores named like the batch output (``churn_prob``, ``propensity_<c>``, ...).
        """

        def load_context(self, context: Any) -> None:
            self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

        def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
            return score_frame(self.bundle, model_input)

    # pickled (by MLflow's cloudpickle) as crmscore.bundle.BundlePyfunc, as when it was a
    # module-level class: logged models load either way
    BundlePyfunc.__module__, BundlePyfunc.__qualname__ = __name__, "BundlePyfunc"
    return BundlePyfunc


def __getattr__(name: str) -> Any:
    """``BundlePyfunc`` is made on first use, so importing this module does not import MLflow."""
    if name == "BundlePyfunc":
        cls = globals()["BundlePyfunc"] = _bundle_pyfunc()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def output_columns(bundle: ModelBundle) -> list[str]:
    """Names of the score columns a bundle produces (batch, API and pyfunc alike)."""
    if bundle.kind is ModelKind.PROPENSITY:
        return [f"propensity_{t}" for t in bundle.targets]
    if bundle.kind is ModelKind.CHURN:
        return ["churn_prob"]
    if bundle.kind is ModelKind.CREDIT_RISK:
        return ["default_prob"]
    return ["expected_margin"]


def score_frame(bundle: ModelBundle, frame: pd.DataFrame) -> pd.DataFrame:
    """Score a customer feature frame with one bundle (the pyfunc entry point)."""
    pred = bundle.predict(bundle.encode(frame))
    cols = output_columns(bundle)
    values = pred if pred.ndim == 2 else pred[:, None]
    return pd.DataFrame(values, columns=cols, index=frame.index)


def project_home() -> Path:
    """The project folder: ``CRMSCORE_HOME``, else the working directory."""
    import os

    return Path(os.environ.get("CRMSCORE_HOME", Path.cwd())).resolve()


def default_tracking_uri(home: Path | None = None) -> str:
    """The embedded default: a SQLite file ``mlflow.db`` in the project folder."""
    home = project_home() if home is None else Path(home).resolve()
    return f"sqlite:///{home / 'mlflow.db'}"


def setup_tracking(home: Path | None = None) -> str:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` or the embedded SQLite default; return the URI.

    Called by commands, jobs and the server's lifespan, never at import time.
    """
    import os

    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(home)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    return uri


def load_registered_bundle(
    kind: ModelKind, *, version: str | None = None, alias: str = "champion", dst: Path | None = None
) -> tuple[ModelBundle, str]:
    """Download a registered model's bundle: ``models:/crm-<kind>/<version>`` or ``@alias``.

    Returns the bundle and its version. MLflow must already point at the registry
    (``MLFLOW_TRACKING_URI`` or the caller's set-up). Raises ``LookupError`` naming the model
    and alias when there is none.
    """
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    name = kind.registered_name
    if version is None:
        try:
            version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            # only "no such model or alias" means there is none; anything else (a registry that
            # cannot be reached, a server error) propagates as itself, so the caller reports it
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise LookupError(f"registered model {name} has no version with alias {alias!r}") from exc
    local = download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=None if dst is None else str(dst))
    return ModelBundle.load(Path(local) / "artifacts" / "bundle"), version
