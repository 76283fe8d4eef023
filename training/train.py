"""Fitting the four kinds: pure functions from frames to a :class:`~crmscore.bundle.ModelBundle`.

No files, no MLflow here (``tracking.py`` logs what this returns). Every fit follows one recipe:

1. the rows are split into *train* and *validation*; validation is halved by a seeded shuffle
   into an *early-stopping* half and a *calibration* half, so the calibrator is fitted on rows
   the booster never saw, not even to choose its number of trees;
2. LightGBM with categoricals handled natively (integer codes + ``categorical_feature``; the
   calendar month too, :data:`CODED_CATEGORIES`), monotone constraints where the kind has them, early stopping on the first half;
3. classifiers: the positive class is up-weighted by sqrt(neg/pos) when rare, and a beta
   (or, on small data, Platt) calibrator maps raw scores to honest probabilities;
4. expected margin: trees alone, or trees boosted from a log-linear Tweedie GLM
   (:class:`~crmscore.bundle.LogLinearBase`), whichever has the lower deviance on the
   validation rows (``TrainConfig.margin_log_linear_base``);
5. a simple scikit-learn baseline (logistic / ridge regression on imputed, scaled, one-hot
   features) is fitted beside it, so the lift of the booster over it is visible.

Flat tables (``crmscore fit-table``, :func:`fit_bundle_cv`) follow the same recipe with 5-fold
cross-validation in place of the validation split, which also chooses the trees' size and,
for classifiers too, whether to boost from a GLM base (logistic there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from crmscore.bundle import Calibrator, LogLinearBase, ModelBundle, ModelKind, sigmoid
from crmscore.training.config import TrainConfig
from crmscore.training.kinds import SPECS

logger = logging.getLogger(__name__)

#: fewer rows than this and a model cannot learn anything worth registering
MIN_ROWS = 50

#: integer-coded features the booster splits as categories, not at thresholds. The calendar
#: month of T (1-12) is cyclic (December sits next to January) and a season is a set of months
#: ({Nov, Dec, Jan}), which a threshold split cannot isolate in one step. On the 50k synthetic
#: base it took churn's seasonal misfit on the validation customers (mean prediction against the
#: truth, per training month) from 0.0051 to 0.0033 rms and its test ECE from 0.0141 to 0.0113,
#: lower on each of 4 seeds (docs/benchmarks.md, "Model quality"). Not re-encoded: LightGBM
#: takes non-negative integers as category codes, so the bundle and serving see the same column.
CODED_CATEGORIES = ("as_of_month",)


@dataclass(frozen=True)
class FeatureSet:
    """The columns a model reads and how: names in order, categorical levels, descriptions."""

    names: list[str]
    categorical: dict[str, list[str]]
    descriptions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PropensityTarget:
    """One product category of the propensity model: its label and its own feature columns.

    ``own_features`` maps a target-specific feature name (e.g. ``target_revenue_share_365d``)
    to the customer column holding it for this category (e.g. ``revenue_share_365d_books``).
    """

    category: str
    label: str
    own_features: dict[str, str | None] = field(default_factory=dict)


def infer_feature_set(
    frame: pd.DataFrame, exclude: Sequence[str], descriptions: dict[str, str] | None = None
) -> FeatureSet:
    """Every column but ``exclude``; text and category columns are categorical.

    Raises a ValueError naming columns that are neither numeric nor text (e.g. dates).
    """
    names, categorical, bad = [], {}, []
    for col in frame.columns:
        if col in exclude:
            continue
        s = frame[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            categorical[col] = [str(v) for v in s.cat.categories]
        elif pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            pass
        elif pd.api.types.is_string_dtype(s) or s.dtype == object:
            categorical[col] = sorted({str(v) for v in s.dropna().unique()})
        else:
            bad.append(f"{col} ({s.dtype})")
            continue
        names.append(col)
    if bad:
        raise ValueError(f"columns of unsupported type (expected numbers or text): {', '.join(bad)}")
    if not names:
        raise ValueError("no feature columns left to learn from")
    return FeatureSet(names, categorical, descriptions or {})


def split_validation(n: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the early-stopping and calibration halves of ``n`` validation rows."""
    order = np.random.default_rng(random_state).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:])


def resolve_threads(requested: int, n_rows: int) -> int:
    """0 = auto: one thread below 100k rows (OpenMP start-up and spinning cost more than they
    save there, and stall badly when the cores are shared), every core above."""
    if requested > 0:
        return requested
    import os

    return 1 if n_rows < 100_000 else (os.cpu_count() or 1)


#: categorical features of up to this many levels are split one level against the rest; above,
#: many-vs-many, where ``cat_smooth`` and ``cat_l2`` apply
MAX_CAT_TO_ONEHOT = 8
#: a categorical feature with more than one level per this many rows reads like an identifier
#: (a surname, a customer code): its levels are too small to learn from one by one
ROWS_PER_LEVEL_OF_AN_IDENTIFIER = 20


def identifier_like(n_levels: int, n_rows: int) -> bool:
    """Whether a categorical of ``n_levels`` levels over ``n_rows`` rows reads like an identifier."""
    return n_levels > max(2, n_rows // ROWS_PER_LEVEL_OF_AN_IDENTIFIER)


def _params(kind: ModelKind, config: TrainConfig, objective: str, n_rows: int = 0) -> dict:
    s = config.lightgbm
    params = {
        "objective": objective,
        "learning_rate": s.learning_rate,
        "num_leaves": s.num_leaves,
        "min_child_samples": s.min_child_samples,
        "feature_fraction": s.feature_fraction,
        "bagging_fraction": s.bagging_fraction,
        "bagging_freq": s.bagging_freq,
        "lambda_l2": s.lambda_l2,
        "num_threads": resolve_threads(s.num_threads, n_rows),
        "seed": config.random_state,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
        "max_cat_to_onehot": MAX_CAT_TO_ONEHOT,
        "cat_smooth": s.cat_smooth,
        "cat_l2": s.cat_l2,
    }
    if objective == "tweedie":
        params["tweedie_variance_power"] = s.tweedie_variance_power
    params["metric"] = "binary_logloss" if objective == "binary" else ("tweedie" if objective == "tweedie" else "l2")
    return params


def _train_booster(
    params: dict,
    X: np.ndarray,
    y: np.ndarray,
    X_es: np.ndarray,
    y_es: np.ndarray,
    feature_names: list[str],
    categorical: list[str],
    config: TrainConfig,
    weight: np.ndarray | None = None,
    init_score: tuple[np.ndarray, np.ndarray] | None = None,
) -> lgb.Booster:
    """Early-stopped booster; ``init_score``: offsets of the training and early-stopping rows
    (the trees are then boosted from them, e.g. from a :class:`LogLinearBase`)."""
    cat_idx = [feature_names.index(c) for c in categorical]
    train_init, es_init = (None, None) if init_score is None else init_score
    train_set = lgb.Dataset(X, y, weight=weight, init_score=train_init, feature_name=feature_names,
                            categorical_feature=cat_idx, free_raw_data=True)
    valid_set = lgb.Dataset(X_es, y_es, init_score=es_init, reference=train_set, categorical_feature=cat_idx)
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=config.lightgbm.max_rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(config.lightgbm.early_stopping_rounds, verbose=False)],
    )
    # Keep only the trees early stopping chose: smaller files, cheaper TreeSHAP.
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def booster_categorical(bundle: ModelBundle) -> list[str]:
    """Booster columns LightGBM treats as categorical: the categorical features (as codes of
    their levels), the integer-coded :data:`CODED_CATEGORIES` the booster reads, and, for
    propensity, the scored category."""
    names = bundle.booster_features
    out = list(bundle.categorical_levels)
    out += [c for c in CODED_CATEGORIES if c in names and c not in bundle.categorical_levels]
    if bundle.kind is ModelKind.PROPENSITY:
        out.append("target_category")
    return out


def _monotone_vector(names: list[str], monotone: dict[str, int]) -> list[int]:
    return [int(monotone.get(n, 0)) for n in names]


def _class_weight(y: np.ndarray, config: TrainConfig) -> np.ndarray | None:
    rate = float(np.mean(y))
    if 0 < rate < config.imbalance_threshold:
        w_pos = float(np.sqrt((1 - rate) / rate))
        return np.where(y > 0, w_pos, 1.0)
    return None


def fit_settings(proto: ModelBundle, y: np.ndarray, config: TrainConfig, label: str) -> tuple[dict, np.ndarray | None]:
    """LightGBM parameters and row weights for one kind's target (checked here).

    Expected margin: Tweedie needs a non-negative target; with loss-making rows (or returns) it
    falls back to least squares (``fit_bundle`` then also tries Tweedie on the labels floored at
    zero: ``_lower_rmse``). Classifiers: a 0/1 target, rare positives up-weighted.
    """
    kind = proto.kind
    objective = SPECS[kind].objective
    if kind is ModelKind.EXPECTED_MARGIN:
        objective = "tweedie" if np.nanmin(y) >= 0 else "regression"
        proto.info["objective"] = objective
    else:
        check_binary_target(y, f"label {label!r}")
    params = _params(kind, config, objective, len(y))
    if proto.monotone:
        params["monotone_constraints"] = _monotone_vector(proto.booster_features, proto.monotone)
        # "advanced" was seen to break monotonicity (LightGBM issue #6155); "basic" holds it.
        params["monotone_constraints_method"] = "basic"
    weight = _class_weight(y, config) if kind.is_classifier else None
    return params, weight


def balance_scale(y: np.ndarray, pred: np.ndarray) -> float:
    """Sum of actuals / sum of predictions on held-out rows: the expected-margin model's
    calibration in aggregate (its predictions then add up to what customers actually brought).
    Bounded to [0.5, 2] so a tiny or odd calibration set cannot swing it."""
    total = float(np.sum(pred))
    if not np.isfinite(total) or total <= 0:
        return 1.0
    return float(np.clip(np.sum(y) / total, 0.5, 2.0))


def check_binary_target(y: np.ndarray, what: str) -> None:
    values = np.unique(y[~np.isnan(y)])
    if not np.isin(values, [0.0, 1.0]).all():
        raise ValueError(f"{what} must be 0/1; got values {values[:5].tolist()}")
    if values.size < 2:
        raise ValueError(f"{what} is constant ({values.tolist()}): there is nothing to learn")


def new_bundle(
    kind: ModelKind, features: FeatureSet, config: TrainConfig, targets: Sequence[PropensityTarget] = ()
) -> ModelBundle:
    """An untrained bundle: features, targets, constraints and settings of the kind."""
    spec = SPECS[kind]
    return ModelBundle(
        kind=kind,
        feature_names=list(features.names),
        categorical_levels={k: list(v) for k, v in features.categorical.items()},
        booster=None,  # type: ignore[arg-type]
        targets=[t.category for t in targets] if kind is ModelKind.PROPENSITY else [kind.value],
        target_features={
            name: [t.own_features.get(name) for t in targets]
            for name in dict.fromkeys(n for t in targets for n in t.own_features)
        } if kind is ModelKind.PROPENSITY else {},
        monotone={k: v for k, v in spec.monotone.items() if k in features.names},
        descriptions=dict(features.descriptions),
        horizon_days=config.horizon_days,
        scorecard=config.scorecard.build() if kind is ModelKind.CREDIT_RISK else None,
        clv=config.clv.build() if kind is ModelKind.EXPECTED_MARGIN else None,
    )


def fit_bundle(
    kind: ModelKind,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    features: FeatureSet,
    config: TrainConfig,
    *,
    label: str | None = None,
    targets: Sequence[PropensityTarget] = (),
) -> ModelBundle:
    """Fit one kind's booster and calibrator(s).

    Parameters
    ----------
    train, valid : DataFrame
        Feature columns (``features.names``) and the label column(s); rows with a missing
        label are not eligible and are left out.
    label : str, optional
        Label column (default: the kind's, see ``kinds.SPECS``); unused for propensity.
    targets : sequence of PropensityTarget
        Propensity only: the categories to score.
    """
    spec = SPECS[kind]
    label = label or spec.label
    proto = new_bundle(kind, features, config, targets)
    if kind is ModelKind.PROPENSITY:
        return _fit_propensity(proto, train, valid, targets, config)

    def eligible(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        y = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        keep = ~np.isnan(y)
        return proto.encode(frame.loc[keep]), y[keep]

    X, y = eligible(train)
    Xv, yv = eligible(valid)
    if len(y) < MIN_ROWS or len(yv) < 2 * 10:
        raise ValueError(
            f"too few rows to learn the {kind.value} model: {len(y)} training and {len(yv)} "
            f"validation rows with a label (need at least {MIN_ROWS} and 20)"
        )
    es, cal = split_validation(len(yv), config.random_state)

    def fit(proto: ModelBundle, y: np.ndarray, yv: np.ndarray) -> ModelBundle:
        """``proto`` fitted to the labels ``y`` (training rows) and ``yv`` (validation rows)."""
        params, weight = fit_settings(proto, y, config, label)
        proto.booster = _train_booster(
            params, X, y, Xv[es], yv[es], proto.feature_names, booster_categorical(proto), config, weight
        )
        proto.info.update({"trees": proto.booster.num_trees(), "train_rows": int(len(y)),
                           "positive_weight": None if weight is None else float(weight.max())})
        if kind.is_classifier:
            proto.calibrators[kind.value] = Calibrator.fit(proto.raw(Xv[cal]), yv[cal])
        elif params["objective"] == "tweedie" and config.margin_log_linear_base:
            _choose_log_linear_base(proto, params, X, y, Xv[es], yv[es], Xv, yv, config, weight)
        return proto

    proto = fit(proto, y, yv)
    if kind is ModelKind.EXPECTED_MARGIN and proto.info["objective"] == "regression":
        # Tweedie on the labels floored at zero, scaled to the net total on the calibration half
        floored = fit(new_bundle(kind, features, config, targets), np.maximum(y, 0.0), np.maximum(yv, 0.0))
        floored.info["margin_scale"] = balance_scale(yv[cal], floored.predict(Xv[cal]))
        # both halves of validation: early stopping read the first, the scale the second
        proto, _ = _lower_rmse((proto, proto.predict(Xv)), (floored, floored.predict(Xv)), yv, "validation_rmse")
        proto.info["labels_below_zero"] = int(np.sum(yv < 0))
    elif proto.info.get("objective") == "tweedie":  # least squares already matches the mean
        proto.info["margin_scale"] = balance_scale(yv[cal], proto.predict(Xv[cal]))
    logger.info("%s: %d trees on %d rows", kind.value, proto.booster.num_trees(), len(y))
    return proto


def _lower_rmse(
    least_squares: tuple[ModelBundle, np.ndarray], floored: tuple[ModelBundle, np.ndarray], y: np.ndarray, key: str
) -> tuple[ModelBundle, np.ndarray]:
    """Expected margin on labels with losses (returns, loss-making sales): Tweedie needs labels
    of zero or above, so the candidates are least squares on the labels as they are and Tweedie
    fitted to the labels floored at zero, scaled to their net total (already, by the caller).
    A base with returns has a few net-negative customers in a zero-inflated, heavy-tailed
    margin, where least squares gives up the log link's shape; a margin of many losses and gains
    is the other way round. Each comes with its predictions of rows it was not fitted on
    (validation customers, or out of fold); the one with the lower RMSE against ``y`` is
    returned, both RMSEs in its ``info[key]``."""
    rmse = {name: float(np.sqrt(np.mean((pred - y) ** 2)))
            for name, (_, pred) in (("least_squares", least_squares), ("tweedie_floored", floored))}
    chosen = floored if rmse["tweedie_floored"] < rmse["least_squares"] else least_squares
    chosen[0].info[key] = rmse
    return chosen


def stack_propensity(
    bundle: ModelBundle, frame: pd.DataFrame, targets: Sequence[PropensityTarget]
) -> tuple[np.ndarray, np.ndarray]:
    """(customer, category) rows, customer-major, and their 0/1 labels."""
    X = bundle.expand(bundle.encode(frame))
    y = np.column_stack(
        [pd.to_numeric(frame[t.label], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan) for t in targets]
    ).ravel()
    keep = ~np.isnan(y)
    return X[keep], y[keep]


def _fit_propensity(
    proto: ModelBundle, train: pd.DataFrame, valid: pd.DataFrame, targets: Sequence[PropensityTarget], config: TrainConfig
) -> ModelBundle:
    if not targets:
        raise ValueError("the propensity model needs at least one product category")
    X, y = stack_propensity(proto, train, targets)
    check_binary_target(y, "purchase labels")
    es, cal = split_validation(len(valid), config.random_state)
    Xe, ye = stack_propensity(proto, valid.iloc[es], targets)
    names = proto.booster_features
    categorical = booster_categorical(proto)
    params = _params(ModelKind.PROPENSITY, config, "binary", len(y))
    proto.booster = _train_booster(params, X, y, Xe, ye, names, categorical, config, _class_weight(y, config))
    proto.info.update({"trees": proto.booster.num_trees(), "train_rows": int(len(y))})
    cal_frame = valid.iloc[cal]
    raw = proto.raw(proto.encode(cal_frame))
    for j, t in enumerate(targets):
        yc = pd.to_numeric(cal_frame[t.label], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ok = ~np.isnan(yc)
        proto.calibrators[t.category] = Calibrator.fit(raw[ok, j], yc[ok])
    logger.info("propensity: %d trees on %d (customer, category) rows", proto.booster.num_trees(), len(y))
    return proto


#: L2 penalty of the log-linear base on its standardised inputs (sklearn's ``alpha``): within
#: the CDNOW training halves' 5-fold CV, 1e-4 and 1e-2 gave the same deviance to 0.1%
LOG_LINEAR_ALPHA = 1e-4
#: a classifier's base: the penalty of the scikit-learn baseline (``C`` = 1, a fixed prior on
#: the standardised coefficients whatever the number of rows)
LOGISTIC_C = 1.0
#: a level of a categorical feature gets its own coefficient in the base from this many
#: training rows on (the baseline's one-hot encoder groups rarer levels the same way)
BASE_MIN_LEVEL_ROWS = 20


def fit_log_linear_base(
    X: np.ndarray, y: np.ndarray, names: list[str], categorical: Sequence[str], power: float | None,
    *, levels: dict[str, int] | None = None, weight: np.ndarray | None = None, additive: bool = False,
    monotone: dict[str, int] | None = None,
) -> LogLinearBase | None:
    """A GLM on the numeric features, log-scaled (:class:`LogLinearBase`): Tweedie with log
    link (``power``), or logistic for a 0/1 target (``power`` None); with ``additive``, least
    squares on the features as they are (identity link, ``power`` ignored).

    ``levels`` (feature name -> number of levels) puts those categorical features in the base
    too, one coefficient per level of at least :data:`BASE_MIN_LEVEL_ROWS` rows; other
    categorical features are the trees' alone. Returns None when no feature varies or the fit
    fails to give finite coefficients.

    ``monotone`` (feature name -> +1 or -1, the trees' constraints) holds for the base too: a
    feature whose coefficient comes out with the other sign (collinear with its neighbours, say)
    is left to the trees and the GLM refitted without it, so more days late never lowers the
    risk of a model boosted from or averaged with the base either. (The transform is increasing
    in the feature, so the coefficient's sign is the term's direction.)
    """
    cats = set(categorical)
    columns = [j for j, n in enumerate(names) if n not in cats and np.unique(X[~np.isnan(X[:, j]), j]).size > 1]
    monotone = monotone or {}
    while True:
        base = _fit_glm_base(X, y, names, categorical, columns, power, levels or {}, weight, additive)
        wrong = [] if base is None else [j for j, c in zip(base.columns, base.coef, strict=True)
                                          if c * monotone.get(names[j], 0) < 0]
        if not wrong:
            return base
        logger.info("GLM base: %s left to the trees (a coefficient against the monotone constraint)",
                    ", ".join(names[j] for j in wrong))
        columns = [j for j in columns if j not in wrong]


def _fit_glm_base(
    X: np.ndarray, y: np.ndarray, names: list[str], categorical: Sequence[str], columns: list[int],
    power: float | None, levels: dict[str, int], weight: np.ndarray | None, additive: bool,
) -> LogLinearBase | None:
    """:func:`fit_log_linear_base` on the numeric ``columns`` (and the categorical ``levels``)."""
    from sklearn.linear_model import LogisticRegression, TweedieRegressor

    V = X[:, columns]
    missing = np.isnan(V)
    Z = V.copy() if additive else np.sign(V) * np.log1p(np.abs(V))
    median = np.nanmedian(Z, axis=0) if columns else np.zeros(0)
    low, high = np.nanmin(Z, axis=0, initial=np.inf), np.nanmax(Z, axis=0, initial=-np.inf)
    Z = np.where(missing, median, Z)
    mean = Z.mean(axis=0)
    scale = Z.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    Z = (Z - mean) / scale
    has_missing = missing.any(axis=0)
    blocks = [Z, missing[:, has_missing].astype(np.float64)]
    # categorical features in the base: one 0/1 column per frequent level, and one for
    # missing (or unknown) when training has it; the rest share the reference level
    categorical_columns, level_columns = [], []
    for j, n in enumerate(names):
        if n not in levels:
            continue
        codes = np.where(np.isnan(X[:, j]), levels[n], X[:, j]).astype(np.intp)
        counts = np.bincount(codes, minlength=levels[n] + 1)
        own = np.flatnonzero(counts >= BASE_MIN_LEVEL_ROWS)
        if own.size < (1 if counts[own].sum() < len(codes) else 2):  # a single level explains nothing
            continue
        categorical_columns.append(j)
        level_columns.append((levels[n] + 1, own, codes))
        blocks.append((codes[:, None] == own[None, :]).astype(np.float64))
    if not columns and not categorical_columns:
        return None
    design = np.hstack(blocks)
    if additive:  # least squares (the normal GLM), with the log-linear base's light penalty
        glm = TweedieRegressor(power=0, link="identity", alpha=LOG_LINEAR_ALPHA, solver="newton-cholesky", max_iter=100)
    elif power is None:
        # Newton-Cholesky: a few Newton steps, as for the Tweedie base below
        glm = LogisticRegression(C=LOGISTIC_C, solver="newton-cholesky", max_iter=100)
    else:
        # Newton-Cholesky (scikit-learn >= 1.2): a few Newton steps on ~100 standardised columns.
        # lbfgs stopped at max_iter=1000 without converging on the fit-table test table (1,304
        # rows, 99 columns: 10 s a fit and a ConvergenceWarning); Newton-Cholesky took 5
        # iterations, 0.15 s, and reached a slightly lower penalised deviance.
        glm = TweedieRegressor(power=power, link="log", alpha=LOG_LINEAR_ALPHA, solver="newton-cholesky", max_iter=100)
    try:
        glm.fit(design, y, sample_weight=weight)
    except (ValueError, ArithmeticError) as exc:
        logger.warning("log-linear base not fitted: %s", exc)
        return None
    coef = np.asarray(glm.coef_, dtype=np.float64).ravel()
    intercept = float(np.ravel(glm.intercept_)[0])
    if not (np.all(np.isfinite(coef)) and np.isfinite(intercept)):
        return None
    n_numeric, at = len(columns), len(columns) + int(has_missing.sum())
    coef_missing = np.zeros(n_numeric)
    coef_missing[has_missing] = coef[n_numeric:at]
    level_coef, level_terms = [], []
    for size, own, codes in level_columns:
        table = np.zeros(size)
        table[own] = coef[at: at + own.size]
        at += own.size
        level_coef.append(table)
        level_terms.append(table[codes])
    terms = np.column_stack([Z * coef[:n_numeric] + missing * coef_missing, *level_terms])
    return LogLinearBase(
        columns=columns, low=low.tolist(), high=high.tolist(), median=median.tolist(),
        mean=mean.tolist(), scale=scale.tolist(), coef=coef[:n_numeric].tolist(),
        coef_missing=coef_missing.tolist(), term_mean=terms.mean(axis=0).tolist(),
        intercept=intercept, categorical=categorical_columns, level_coef=[t.tolist() for t in level_coef],
        log_scaled=not additive,
    )


def _choose_log_linear_base(
    proto: ModelBundle, params: dict, X: np.ndarray, y: np.ndarray, X_es: np.ndarray, y_es: np.ndarray,
    X_valid: np.ndarray, y_valid: np.ndarray, config: TrainConfig, weight: np.ndarray | None,
) -> None:
    """Expected margin: keep ``proto``'s trees alone, or trees boosted from a log-linear base
    fitted on the training rows (early-stopped on the same rows ``X_es``), whichever has the
    lower Tweedie deviance on the validation rows ``X_valid`` (customers neither the base nor
    the trees were fitted on). Both halves of validation: early stopping chose one number per
    candidate on the first, so the comparison is even, and the second half alone (~1,500 rows
    on a 10k-row table) gave a noisier choice. Sets ``proto.base`` and ``proto.booster`` to
    the winner and records both deviances in ``proto.info["validation_deviance"]``."""
    from sklearn.metrics import mean_tweedie_deviance

    power = params["tweedie_variance_power"]
    names, categorical = proto.booster_features, booster_categorical(proto)
    base = fit_log_linear_base(X, y, names, categorical, power)
    proto.info["log_linear_base"] = False
    if base is None or np.min(y_valid, initial=0.0) < 0:  # Tweedie deviance needs y >= 0
        return
    trees = proto.booster
    boosted = _train_booster(params, X, y, X_es, y_es, names, categorical, config, weight,
                             init_score=(base(X), base(X_es)))

    def deviance(booster: lgb.Booster, offset: LogLinearBase | None) -> float:
        raw = booster.predict(X_valid, raw_score=True) + (0.0 if offset is None else offset(X_valid))
        return float(mean_tweedie_deviance(y_valid, np.exp(raw), power=power))

    scores = {"trees": deviance(trees, None), "log_linear_base": deviance(boosted, base)}
    proto.info["validation_deviance"] = scores
    if scores["log_linear_base"] < scores["trees"]:
        proto.booster, proto.base = boosted, base
        proto.info.update({"trees": boosted.num_trees(), "log_linear_base": True})


def _choose_blend(
    trees_raw: np.ndarray, offsets: list[np.ndarray], folds: list, chosen_raw: np.ndarray, y: np.ndarray,
    weight: np.ndarray | None, weights: Sequence[float],
) -> dict:
    """A classifier's GLM base and its trees alone, averaged on the log-odds: the weight on the
    GLM (of ``weights``, each in (0, 1)) with the lowest out-of-fold log loss, or 0 when none
    beats ``chosen_raw`` (the trees alone, or boosted from the base: what the cross-validation
    chose before). Out of fold on both sides: ``trees_raw`` and the base's ``offsets`` of fold
    k's rows come from a booster and a GLM fitted without them (stacking by cross-validation,
    Wolpert 1992, Breiman 1996, with one weight).

    Why: on small tables a GLM and trees each get part of the signal right (a smooth trend, an
    interaction) and their errors differ; their average ranked better than either on three of
    the four real classification tables of docs/tables.md, and level with the GLM on the fourth. Returns ``weight``, ``losses`` (by weight,
    "chosen" for ``chosen_raw``) and ``raw``, the blend on the bundle's scale
    (trees + base * w / (1 - w))."""
    from sklearn.metrics import log_loss

    base_raw = np.empty(len(y))
    for (_, held), offset in zip(folds, offsets, strict=True):
        base_raw[held] = offset[held]

    def loss(raw: np.ndarray) -> float:
        return float(log_loss(y, sigmoid(raw), sample_weight=weight, labels=[0, 1]))

    losses = {"chosen": loss(chosen_raw)}
    for w in weights:
        losses[f"{w:g}"] = loss(w * base_raw + (1 - w) * trees_raw)
    best = min(weights, key=lambda w: losses[f"{w:g}"])
    if losses[f"{best:g}"] >= losses["chosen"]:
        return {"weight": 0.0, "losses": losses, "raw": chosen_raw}
    return {"weight": best, "losses": losses, "raw": trees_raw + base_raw * best / (1 - best)}


def fit_bundle_cv(
    kind: ModelKind,
    frame: pd.DataFrame,
    features: FeatureSet,
    config: TrainConfig,
    *,
    label: str,
    targets: Sequence[PropensityTarget] = (),
    n_folds: int = 5,
    floored_candidate: bool = True,
) -> tuple[ModelBundle, np.ndarray, np.ndarray]:
    """Fit on *all* rows of a smaller table, choosing trees and calibration by cross-validation.

    ``lgb.cv`` picks the number of trees by early stopping across ``n_folds`` folds, for each
    size of tree tried (``config.leaves_search``), and the size with the lowest out-of-fold
    loss is kept; when a categorical feature reads like an identifier (:func:`identifier_like`),
    a stronger smoothing of its levels (``config.cat_smooth_search``) is tried the same way;
    then, for expected margin and classifiers, trees boosted from a GLM base are compared the
    same way (cross-fitted), and for classifiers also the GLM and the trees alone averaged on
    the log-odds (:func:`_choose_blend`). The calibrator is fitted on out-of-fold raw scores
    (each from a fold booster that did not train on the row); the final booster is trained on
    every row with that many trees.
    Propensity here is one target (``targets`` of length 1), the flat-table case.

    Expected margin with labels below zero (returns, losses) is fitted by least squares, as
    Tweedie needs labels of zero or above; with ``floored_candidate`` the fit is also made on
    the labels floored at zero and the better kept (:func:`_lower_rmse`), as :func:`fit_bundle`
    does on validation customers.

    Returns
    -------
    bundle, oof_prediction, y : the fitted bundle, out-of-fold calibrated predictions and labels
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    proto = new_bundle(kind, features, config, targets)
    y = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    keep = ~np.isnan(y)
    X = proto.expand(proto.encode(frame.loc[keep]))
    y = y[keep]
    params, weight = fit_settings(proto, y, config, label)
    names, categorical = proto.booster_features, booster_categorical(proto)
    cat_idx = [names.index(c) for c in categorical]
    splitter = (StratifiedKFold if kind.is_classifier else KFold)(n_folds, shuffle=True, random_state=config.random_state)
    folds = list(splitter.split(X, y))

    def cross_validate(offsets: list[np.ndarray] | None) -> tuple[lgb.Dataset, int, float, np.ndarray]:
        """``lgb.cv`` on ``folds``: trees alone (``offsets`` None), or boosted in fold k from
        ``offsets[k]``, an offset for every row from a base fitted without fold k's rows. The
        folds, the binning (of all rows), the lock-step boosting and the early stopping on
        the mean out-of-fold curve are ``lgb.cv``'s own; only the fold datasets' init scores
        are set, per fold, in its ``fpreproc`` hook."""
        dataset = lgb.Dataset(X, y, weight=weight, feature_name=names, categorical_feature=cat_idx,
                              free_raw_data=False)
        fold_offsets = iter(zip(folds, offsets or [], strict=False))

        def set_fold_offsets(train_set: lgb.Dataset, valid_set: lgb.Dataset, fold_params: dict):
            (train_idx, held), offset = next(fold_offsets)
            for part, idx in ((train_set, train_idx), (valid_set, held)):
                part.construct()
                if not np.array_equal(part.used_indices, np.sort(idx)):  # lgb.cv's fold order
                    raise RuntimeError("lgb.cv visited the folds out of order")
                part.set_init_score(offset[np.sort(idx)])
            return train_set, valid_set, fold_params

        result = lgb.cv(
            params, dataset, num_boost_round=config.lightgbm.max_rounds, folds=folds,
            fpreproc=None if offsets is None else set_fold_offsets,
            callbacks=[lgb.early_stopping(config.lightgbm.early_stopping_rounds, verbose=False)],
            return_cvbooster=True,
        )
        cv_booster = result["cvbooster"]
        curve = next(v for k, v in result.items() if k.endswith("-mean"))
        best = int(cv_booster.best_iteration or len(curve))
        oof_raw = np.empty(len(y))
        for k, ((_, held), booster) in enumerate(zip(folds, cv_booster.boosters, strict=True)):
            oof_raw[held] = booster.predict(X[held], raw_score=True, num_iteration=best)
            if offsets is not None:
                oof_raw[held] += offsets[k][held]
        return dataset, best, float(curve[best - 1]), oof_raw

    # The trees' size, chosen by the same cross-validation on tables up to
    # config.leaves_search_max_rows: on the real tables of docs/tables.md (400-10,000 rows) 7
    # leaves beat 31 out of fold on nearly every split (Caravan's test AUC 0.733 -> 0.753).
    # Largest first, each size one more CV, stopping at the first that is worse (the loss is
    # unimodal in the size): a 500-column table whose best size is 31 pays for one extra CV,
    # not two.
    leaves = [config.lightgbm.num_leaves]
    if len(y) <= config.leaves_search_max_rows:
        leaves = sorted(set(leaves) | set(config.leaves_search), reverse=True)
    tried: dict[int, tuple] = {}
    for num_leaves in leaves:
        params["num_leaves"] = num_leaves
        tried[num_leaves] = cross_validate(None)
        if tried[num_leaves][1] >= config.lightgbm.max_rounds:
            # still improving after max_rounds: a (near-)perfect predictor, e.g. a copy of the
            # target; every other size would run to the limit too, for nothing
            break
        if len(tried) > 1 and tried[num_leaves][2] > min(v[2] for k, v in tried.items() if k != num_leaves):
            break  # worse; a tie goes on (trees that never grew to the larger size are the same)
    params["num_leaves"] = min(tried, key=lambda k: (tried[k][2], k))
    dataset, best, loss, oof_raw = tried[params["num_leaves"]]
    if len(tried) > 1:
        proto.info["cv_leaves"] = {str(k): v[2] for k, v in tried.items()}
    # The smoothing of identifier-like categoricals, chosen the same way: LightGBM orders the
    # levels of a many-level feature by mean gradient and groups them, so a column of many tiny
    # levels (a surname) offers a noisy split in every tree. Stronger smoothing is kept only when
    # it wins out of fold. Only for identifier-like columns: a 10-level column such as German
    # credit's loan purpose keeps LightGBM's default (searched too, it lost 0.01 AUC on one split
    # of five and gained nothing; docs/tables.md).
    many_levels = [c for c in categorical if len(proto.categorical_levels.get(c, ())) > MAX_CAT_TO_ONEHOT
                   and identifier_like(len(proto.categorical_levels[c]), len(y))]
    default = (params["cat_smooth"], params["cat_l2"])
    candidates = [(v, v) for v in dict.fromkeys(config.cat_smooth_search) if (v, v) != default]
    if many_levels and candidates and len(y) <= config.leaves_search_max_rows and best < config.lightgbm.max_rounds:
        smoothing = {default: (dataset, best, loss, oof_raw)}
        for value in candidates:
            params.update(cat_smooth=value[0], cat_l2=value[1])
            smoothing[value] = cross_validate(None)
        chosen = min(smoothing, key=lambda k: (smoothing[k][2], k != default))  # a tie keeps the default
        params.update(cat_smooth=chosen[0], cat_l2=chosen[1])
        dataset, best, loss, oof_raw = smoothing[chosen]
        proto.info["cv_cat_smooth"] = {f"{k[0]:g}": v[2] for k, v in smoothing.items()}
    base = None
    objective = params["objective"]
    # Categorical features enter the logistic and the additive bases by level; not expected
    # margin's log-linear base, where a level's factor multiplies spend and overshoots (ISLP's
    # Credit balances, 5 splits: RMSE 106 -> 133; the 50k synthetic base: ratio 1.231 ->
    # 1.236; docs/tables.md). Identifier-like ones stay out of every base: their few frequent
    # levels fit noise (a surname-like column of no signal took Default from AUC 0.9518 to 0.9477).
    base_levels = {n: len(v) for n, v in proto.categorical_levels.items() if not identifier_like(len(v), len(y))}

    def cross_fitted_base(power: float | None, additive: bool) -> tuple[LogLinearBase, list[np.ndarray]] | None:
        """The base fitted on every row, and each fold's offsets from a base fitted without it."""
        def fit(rows: np.ndarray) -> LogLinearBase | None:
            levels = None if power is not None and not additive else base_levels
            return fit_log_linear_base(X[rows], y[rows], names, categorical, power, levels=levels,
                                       weight=None if weight is None else weight[rows], additive=additive,
                                       monotone=proto.monotone)

        full, per_fold = fit(np.arange(len(y))), [fit(train_idx) for train_idx, _ in folds]
        if full is None or any(b is None for b in per_fold):
            return None
        return full, [b(X) for b in per_fold]

    if ((objective == "tweedie" and config.margin_log_linear_base) or (objective == "binary" and config.classifier_base)
            or (objective == "regression" and config.margin_additive_base)):
        # Trees alone, or boosted from a GLM base (log-linear Tweedie for expected margin,
        # logistic for a classifier, additive least squares for a margin that can be negative,
        # the least-squares booster's), whichever has the lower out-of-fold loss (the one early
        # stopping reads). Cross-fitted: fold k's trees are boosted from a base fitted on the
        # other folds only, for its training and its held-out rows alike, so nothing of fold k
        # reaches fold k's score. (A base fitted on every row would be in-sample on the
        # held-out folds and win on small noisy tables where it should lose.) The model kept
        # is the base fitted on every row, boosted with the number of trees the cross-fitted
        # CV chose.
        fitted = cross_fitted_base(params.get("tweedie_variance_power") if objective == "tweedie" else None,
                                   additive=objective == "regression")
        if fitted is not None:
            candidate, offsets = fitted
            with_base = cross_validate(offsets)
            proto.info["cv_deviance"] = {"trees": loss, "log_linear_base": with_base[2]}
            trees_alone = (best, oof_raw)
            boosted = with_base[2] < loss
            if boosted:
                base = candidate
                _, best, loss, oof_raw = with_base
            if objective == "binary" and config.classifier_blend_weights:
                blend = _choose_blend(trees_alone[1], offsets, folds, oof_raw, y, weight, config.classifier_blend_weights)
                proto.info["cv_blend"] = blend["losses"]
                if blend["weight"]:
                    # the GLM and the trees alone, averaged on the log-odds with the GLM's weight w:
                    # stored as trees + base * w / (1 - w), one scale the calibrator then maps
                    w = blend["weight"]
                    base, boosted = candidate.scaled(w / (1 - w)), False
                    best, oof_raw = trees_alone[0], blend["raw"]
                    proto.info["base_blend_weight"] = w
            if boosted:
                # the trees' dataset of all rows (binned as before), now with the base's offsets
                dataset.set_init_score(candidate(X))
    if objective == "tweedie" and config.margin_additive_base and (additive_fit := cross_fitted_base(None, additive=True)):
        # One more candidate: least squares boosted from an additive base, for values a straight
        # line fits (a card balance in the credit limit, sales in the price), where a log link
        # states a power law and overshoots (docs/tables.md: Carseats RMSE 1.28 against ridge's
        # 1.05, 1.06 with it). Cross-fitted like the base above. It replaces the log link only
        # when it is better out of fold on both the squared error (expected margin's headline)
        # and the Tweedie deviance: on zero-inflated, heavy-tailed spend the squared error of
        # ~1,300 rows is set by a few large customers and chose least squares on 3 of 4 small
        # synthetic bases, with Spearman 0.48-0.66 against the log link's 0.71-0.78.
        from sklearn.metrics import mean_tweedie_deviance

        additive, offsets = additive_fit
        tweedie = dict(params)
        params.update(objective="regression", metric="l2")
        del params["tweedie_variance_power"]
        with_additive = cross_validate(offsets)
        # the deviance needs a positive mean: a straight line's predictions below a thousandth
        # of the mean are held there
        floor, power = 1e-3 * float(np.mean(y)), tweedie["tweedie_variance_power"]
        means = {"log_link": np.exp(oof_raw), "additive": np.maximum(with_additive[3], floor)}
        rmse = {k: float(np.sqrt(np.mean((m - y) ** 2))) for k, m in means.items()}
        deviance = {k: float(mean_tweedie_deviance(y, m, power=power)) for k, m in means.items()}
        proto.info.update({"cv_objective_rmse": rmse, "cv_objective_deviance": deviance})
        if rmse["additive"] < rmse["log_link"] and deviance["additive"] < deviance["log_link"]:
            base = additive
            dataset, best, loss, oof_raw = with_additive
            dataset.set_init_score(additive(X))
            # expected margin of a non-negative value: never below zero (from_raw)
            proto.info.update({"objective": "regression", "lower_bound": 0.0})
        else:
            params.clear()
            params.update(tweedie)
    final = lgb.train(params, dataset, num_boost_round=best)
    proto.booster = lgb.Booster(model_str=final.model_to_string())
    proto.base = base
    if base is not None and not base.log_scaled:
        proto.info["additive_base"] = True
    proto.info.update({"trees": best, "num_leaves": params["num_leaves"], "cat_smooth": params["cat_smooth"],
                       "train_rows": int(len(y)), "cv_folds": n_folds,
                       "log_linear_base": base is not None,
                       "positive_weight": None if weight is None else float(weight.max())})
    if kind.is_classifier:
        key = proto.targets[0]
        proto.calibrators[key] = Calibrator.fit(oof_raw, y)
        oof = proto.calibrators[key].apply(oof_raw)
    else:
        if params["objective"] == "tweedie":  # least squares already matches the mean
            proto.info["margin_scale"] = balance_scale(y, proto.from_raw(oof_raw))
        oof = proto.from_raw(oof_raw)
    logger.info("%s: %d trees chosen by %d-fold cross-validation on %d rows", kind.value, best, n_folds, len(y))
    if floored_candidate and kind is ModelKind.EXPECTED_MARGIN and (y < 0).any():
        floored = frame.assign(**{label: pd.to_numeric(frame[label], errors="coerce").clip(lower=0.0)})
        tweedie, tweedie_oof, _ = fit_bundle_cv(kind, floored, features, config, label=label, targets=targets,
                                                n_folds=n_folds, floored_candidate=False)
        # scaled out of fold to the net total of the labels as they are
        unscaled = tweedie_oof / float(tweedie.info.get("margin_scale", 1.0))
        tweedie.info["margin_scale"] = balance_scale(y, unscaled)
        proto, oof = _lower_rmse((proto, oof), (tweedie, unscaled * tweedie.info["margin_scale"]), y, "cv_floored_rmse")
    return proto, oof, y


def model_choice(info: dict) -> dict[str, Any]:
    """What :func:`fit_bundle_cv` chose, from a bundle's ``info``, for a data scientist: the
    trees' number and size, the GLM base (``none``, ``boosted`` from it, ``averaged`` with it on
    the log-odds at ``glm_weight``, or ``additive`` least squares), the objective, the smoothing
    of identifier-like levels, and for a margin with losses whether Tweedie on the target floored
    at zero won. Logged as the fit-table run's params and said by the CLI (:func:`describe_choice`)."""
    base = ("averaged" if info.get("base_blend_weight") else "additive" if info.get("additive_base")
            else "boosted" if info.get("log_linear_base") else "none")
    floored = info.get("cv_floored_rmse")
    return {
        "trees": info.get("trees"), "num_leaves": info.get("num_leaves"), "glm_base": base,
        "glm_weight": info.get("base_blend_weight"), "objective": info.get("objective"),
        "cat_smooth": info.get("cat_smooth"),
        "target_floored": None if floored is None else floored["tweedie_floored"] < floored["least_squares"],
    }


def describe_choice(info: dict) -> str:
    """:func:`model_choice` in words: "200 trees of up to 31 leaves, boosted from a GLM base"."""
    choice = model_choice(info)
    text = f"{choice['trees']} trees of up to {choice['num_leaves'] or '?'} leaves"
    if choice["glm_base"] == "averaged":
        text += f", averaged on the log-odds with a logistic GLM (weight {choice['glm_weight']:g} on the GLM)"
    else:
        text += {"additive": ", least squares boosted from an additive GLM base",
                 "boosted": ", boosted from a GLM base", "none": ""}[choice["glm_base"]]
    if choice["target_floored"] is not None:  # a margin with losses
        text += (", Tweedie on the target floored at zero, scaled to its net total" if choice["target_floored"]
                 else ", least squares (the target has losses)")
    tried = list(info.get("cv_cat_smooth", {}))  # LightGBM's default smoothing first
    if tried and f"{info['cat_smooth']:g}" != tried[0]:
        text += f", identifier-like text smoothed more (cat_smooth {info['cat_smooth']:g})"
    return text


# --- the baseline ----------------------------------------------------------------------------


def fit_baseline(
    kind: ModelKind, train: pd.DataFrame, features: FeatureSet, label: str, config: TrainConfig
):
    """A simple scikit-learn model on the same features, for the lift over it.

    Logistic regression (classifiers) or ridge regression (margin) on median-imputed,
    standardised numbers and one-hot categories (rare levels grouped).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    y = pd.to_numeric(train[label], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    rows = train.loc[~np.isnan(y)]
    y = y[~np.isnan(y)]
    if len(rows) > config.baseline_max_rows:
        pick = np.random.default_rng(config.random_state).choice(len(rows), config.baseline_max_rows, replace=False)
        rows, y = rows.iloc[np.sort(pick)], y[np.sort(pick)]
    numeric = [c for c in features.names if c not in features.categorical]
    categorical = list(features.categorical)
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()), numeric),
            ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="(missing)"),
                                  OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20)), categorical),
        ]
    )
    model = LogisticRegression(max_iter=500, C=1.0) if kind.is_classifier else Ridge(alpha=1.0)
    pipe = Pipeline([("pre", pre), ("model", model)])
    pipe.fit(baseline_frame(rows, features), y)
    return pipe


def baseline_frame(frame: pd.DataFrame, features: FeatureSet) -> pd.DataFrame:
    """Features as plain numbers and text (what scikit-learn's encoders expect)."""
    out = {}
    for c in features.names:
        s = frame[c]
        if c in features.categorical:
            out[c] = s.astype(object).where(s.notna(), None)
        else:
            out[c] = pd.to_numeric(s, errors="coerce").astype(np.float64)
    return pd.DataFrame(out, index=frame.index)


def predict_baseline(pipe, kind: ModelKind, frame: pd.DataFrame, features: FeatureSet) -> np.ndarray:
    X = baseline_frame(frame, features)
    if kind.is_classifier:
        return pipe.predict_proba(X)[:, 1]
    return pipe.predict(X)
