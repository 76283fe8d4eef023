"""Evaluation: score-quality metrics on numpy arrays, and the plots logged beside them.

Every metric is a pure function of arrays (no files, no MLflow, no global state); the plots
build :class:`matplotlib.figure.Figure` objects through the object API, so importing this
module neither imports :mod:`matplotlib.pyplot` nor selects a backend. :func:`save_figure`
is the one place that writes to disk.

Conventions used throughout
---------------------------
* ``y_true`` is the observed outcome: 0/1 (or bool) for classifiers, a number (e.g. margin
  in the base's currency) for regression.
* ``p`` is a predicted probability of the positive class, in [0, 1]; ``score`` is any
  finite number where higher means "more likely / more valuable" (a probability, scorecard
  points, an expected margin).
* **Equal-mass bins.** Calibration bins and deciles hold (nearly) equal numbers of rows.
  A row's bin is ``floor(n_bins * r / n)`` where ``r`` is the number of rows ranked strictly
  ahead of it (lower probability for calibration bins; higher score for deciles, so decile 1
  holds the highest scores). Rows with equal values therefore always share a bin: a cut can
  not separate customers the model cannot tell apart. With many ties bins are uneven, and a
  bin can be empty (it is then left out of tables).
* **Top shares.** "The top 20% of rows" means ``k = round(0.2 * n)`` rows (at least 1). When
  the k-th highest score is tied, the tied rows share the remaining places equally, which is
  the expected value over a random order of the ties. A constant score therefore captures
  exactly 20%, the random baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from scipy import stats
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "binary_metrics",
    "calibration_table",
    "expected_calibration_error",
    "explained",
    "ks_statistic",
    "lift_table",
    "oracle_ratios",
    "plot_calibration",
    "plot_gain",
    "plot_importance",
    "plot_ks",
    "plot_predicted_vs_actual",
    "plot_roc",
    "plots",
    "regression_metrics",
    "regression_oracle_ratio",
    "save_figure",
    "top_share",
]

#: size of a single-panel figure in inches (800 x 500 px at the 100 dpi of :func:`save_figure`)
_FIGSIZE = (8.0, 5.0)
#: size of a two-panel figure in inches (1,100 x 480 px at 100 dpi)
_FIGSIZE_WIDE = (11.0, 4.8)
_DPI = 100
_BLUE, _ORANGE, _GREY = "#1f77b4", "#ff7f0e", "#7f7f7f"


# --------------------------------------------------------------------------- input checks


def _as_vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    """Return ``values`` as a finite 1-D float array, or raise naming ``name``."""
    arr = np.asarray(values)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must hold numbers; got dtype object") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must hold numbers; got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one row")
    n_bad = int(np.count_nonzero(~np.isfinite(arr)))
    if n_bad:
        raise ValueError(f"{name} has {n_bad} NaN or infinite values; every value must be finite")
    return arr


def _as_pair(
    y_true: ArrayLike, other: ArrayLike, other_name: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    y = _as_vector(y_true, "y_true")
    x = _as_vector(other, other_name)
    if y.shape != x.shape:
        raise ValueError(
            f"y_true and {other_name} must have the same length; got {y.size} and {x.size}"
        )
    return y, x


def _check_labels(y: NDArray[np.float64]) -> None:
    bad = np.unique(y[(y != 0) & (y != 1)])
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise ValueError(f"y_true must hold 0/1 labels; got other values: {shown}")


def _check_probabilities(p: NDArray[np.float64], name: str) -> None:
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; got values from {p.min():g} to {p.max():g}"
        )


def _check_two_classes(y: NDArray[np.float64], metric: str) -> None:
    if y.min() == y.max():
        raise ValueError(f"y_true has a single class (all {int(y[0])}): {metric} is undefined")


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1; got {n_bins!r}")


def _check_positive_total(y: NDArray[np.float64], what: str) -> float:
    total = float(y.sum())
    if total <= 0.0:
        raise ValueError(f"y_true sums to {total:g}; {what} needs a positive total of the target")
    return total


def _binary(y_true: ArrayLike, p: ArrayLike, name: str = "p") -> tuple[NDArray, NDArray]:
    y, x = _as_pair(y_true, p, name)
    _check_labels(y)
    return y, x


# --------------------------------------------------------------------------- binning


def _equal_mass_bins(values: NDArray[np.float64], n_bins: int) -> NDArray[np.intp]:
    """Bin index 0..n_bins-1 of each row, equal-mass in ascending order of ``values``.

    ``r`` = number of rows with a strictly lower value (the sorted position of the first row
    of its group of ties), bin = ``floor(n_bins * r / n)`` in exact integer arithmetic, so
    ties share a bin. One argsort; no search over unsorted queries.
    """
    n = values.size
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    rank = np.maximum.accumulate(np.where(starts_group, np.arange(n), 0))
    bins = np.empty(n, dtype=np.intp)
    bins[order] = (rank * n_bins) // n
    return bins


def calibration_table(y_true: ArrayLike, p: ArrayLike, *, n_bins: int = 10) -> pd.DataFrame:
    """Observed rate against mean predicted probability, per equal-mass bin of ``p``.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed outcomes, 0/1.
    p : array-like of shape (n_rows,)
        Predicted probabilities of outcome 1, in [0, 1].
    n_bins : int, default 10
        Number of equal-mass (quantile) bins; see the module notes for ties.

    Returns
    -------
    pandas.DataFrame
        One row per non-empty bin, lowest probabilities first, with columns ``bin``
        (1-based), ``count`` (rows), ``mean_pred`` and ``observed_rate`` (probabilities)
        and ``abs_gap`` = ``|observed_rate - mean_pred|``.
    """
    _check_n_bins(n_bins)
    y, x = _binary(y_true, p)
    _check_probabilities(x, "p")
    bins = _equal_mass_bins(x, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=x, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    keep = count > 0
    mean_pred = sum_p[keep] / count[keep]
    observed = sum_y[keep] / count[keep]
    return pd.DataFrame(
        {
            "bin": np.flatnonzero(keep) + 1,
            "count": count[keep],
            "mean_pred": mean_pred,
            "observed_rate": observed,
            "abs_gap": np.abs(observed - mean_pred),
        }
    )


def expected_calibration_error(y_true: ArrayLike, p: ArrayLike, *, n_bins: int = 10) -> float:
    r"""Expected calibration error over equal-mass bins of the predicted probability.

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{n}\,\bigl|\bar y_b - \bar p_b\bigr|

    where the ``n_bins`` bins hold (nearly) equal numbers of rows, sorted by ``p`` (ties
    share a bin, see the module notes), and :math:`\bar y_b`, :math:`\bar p_b` are the
    observed rate and the mean prediction in bin *b*. Equal-mass bins follow Naeini,
    Cooper & Hauskrecht (2015), "Obtaining well calibrated probabilities using Bayesian
    binning", AAAI, and the adaptive calibration error of Nixon et al. (2019), "Measuring
    calibration in deep learning", CVPR workshops; unlike the equal-width bins of Guo et al.
    (2017) they keep every bin populated when probabilities are concentrated (a churn model
    with a 5% base rate puts most rows below 0.1). The project's goal is ECE <= 0.01.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed outcomes, 0/1.
    p : array-like of shape (n_rows,)
        Predicted probabilities of outcome 1, in [0, 1].
    n_bins : int, default 10
        Number of equal-mass bins.

    Returns
    -------
    float
        ECE, a probability in [0, 1]; 0 when every bin's mean prediction equals its rate.
    """
    table = calibration_table(y_true, p, n_bins=n_bins)
    n = table["count"].sum()
    return float((table["count"] * table["abs_gap"]).sum() / n)


# --------------------------------------------------------------------------- ranking metrics


def _ks_curve(
    y: NDArray[np.float64], score: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Distinct scores and the empirical CDFs of positives and negatives at each of them."""
    order = np.argsort(score, kind="stable")
    s, yy = score[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    cdf_pos = np.cumsum(yy)[last_of_tie] / yy.sum()
    cdf_neg = np.cumsum(1.0 - yy)[last_of_tie] / (yy.size - yy.sum())
    return s[last_of_tie], cdf_pos, cdf_neg


def ks_statistic(y_true: ArrayLike, score: ArrayLike) -> float:
    """Kolmogorov-Smirnov statistic between the scores of positives and of negatives.

    ``KS = max_t |F_1(t) - F_0(t)|`` over all scores ``t``, where ``F_1`` and ``F_0`` are the
    empirical CDFs of the score among rows with ``y_true`` 1 and 0 (the two-sample statistic
    of :func:`scipy.stats.ks_2samp`). Credit scoring reports it as the best separation any
    cut-off achieves (Siddiqi, 2006, *Credit Risk Scorecards*, ch. 6).

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed outcomes, 0/1, both classes present.
    score : array-like of shape (n_rows,)
        Any finite score; only its order matters.

    Returns
    -------
    float
        KS in [0, 1].
    """
    y, s = _binary(y_true, score, "score")
    _check_two_classes(y, "KS")
    _, cdf_pos, cdf_neg = _ks_curve(y, s)
    return float(np.max(np.abs(cdf_pos - cdf_neg)))


def _top_sum(
    y: NDArray[np.float64], score: NDArray[np.float64], fraction: float
) -> tuple[float, int]:
    """Sum of ``y`` over the top ``k = round(fraction * n)`` rows by score, ties shared."""
    n = y.size
    k = min(n, max(1, int(np.floor(fraction * n + 0.5))))
    threshold = np.partition(score, n - k)[n - k]  # the k-th highest score
    above = score > threshold
    tied = score == threshold
    n_above = int(np.count_nonzero(above))
    captured = y[above].sum() + (k - n_above) * y[tied].mean()
    return float(captured), k


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")


def top_share(y_true: ArrayLike, score: ArrayLike, *, fraction: float = 0.2) -> float:
    """Share of the total target held by the ``fraction`` of rows with the highest scores.

    For a 0/1 target this is the cumulative gain (share of all positives found); for a
    value such as holdout spend it is the capture (share of all spend). The top rows are
    ``k = round(fraction * n)`` (at least 1); ties at the cut share the remaining places.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed target, 0/1 or a value; its total must be positive.
    score : array-like of shape (n_rows,)
        Ranking score, higher first.
    fraction : float, default 0.2
        Share of rows targeted, in (0, 1].

    Returns
    -------
    float
        Share of ``sum(y_true)``; in [0, 1] when ``y_true`` is non-negative.
    """
    _check_fraction(fraction)
    y, s = _as_pair(y_true, score, "score")
    total = _check_positive_total(y, "top share")
    return _top_sum(y, s, fraction)[0] / total


def lift_table(y_true: ArrayLike, score: ArrayLike, *, n_bins: int = 10) -> pd.DataFrame:
    """Lift and cumulative gain by decile of score (decile 1 = highest scores).

    Works for a 0/1 target (``target_sum`` counts positives, ``rate`` is the positive rate)
    and for a continuous one such as margin (``target_sum`` is the total value, ``rate``
    the mean value per row). Deciles are equal-mass with ties kept together (module notes).

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed target; its total must be positive.
    score : array-like of shape (n_rows,)
        Ranking score, higher first (a probability or a predicted value).
    n_bins : int, default 10
        Number of equal-mass bins ("deciles" for the default).

    Returns
    -------
    pandas.DataFrame
        One row per non-empty decile, highest scores first, with columns

        * ``decile`` -- 1-based, 1 = highest scores;
        * ``count`` -- rows in the decile;
        * ``score_min``, ``score_max``, ``mean_score`` -- score range and mean (score units);
        * ``target_sum`` -- sum of the target (positives for 0/1);
        * ``rate`` -- ``target_sum / count`` (positive rate, or mean value per row);
        * ``lift`` -- ``rate`` / overall mean of the target (1 = random);
        * ``cum_share`` -- share of all rows in deciles 1..d;
        * ``cum_gain`` -- share of the target total in deciles 1..d.
    """
    _check_n_bins(n_bins)
    y, s = _as_pair(y_true, score, "score")
    total = _check_positive_total(y, "lift_table")
    bins = _equal_mass_bins(-s, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    keep = count > 0
    idx = np.flatnonzero(keep)
    score_min = np.full(n_bins, np.inf)
    score_max = np.full(n_bins, -np.inf)
    np.minimum.at(score_min, bins, s)
    np.maximum.at(score_max, bins, s)
    sum_s = np.bincount(bins, weights=s, minlength=n_bins)[keep]
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)[keep]
    count = count[keep]
    rate = sum_y / count
    return pd.DataFrame(
        {
            "decile": idx + 1,
            "count": count,
            "score_min": score_min[keep],
            "score_max": score_max[keep],
            "mean_score": sum_s / count,
            "target_sum": sum_y,
            "rate": rate,
            "lift": rate / (total / y.size),
            "cum_share": np.cumsum(count) / y.size,
            "cum_gain": np.cumsum(sum_y) / total,
        }
    )


# --------------------------------------------------------------------------- metric sets


def binary_metrics(y_true: ArrayLike, p: ArrayLike, *, n_bins: int = 10) -> dict[str, float]:
    """Every score-quality metric of a probability classifier, as one flat dict.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed outcomes, 0/1 (or bool), both classes present.
    p : array-like of shape (n_rows,)
        Predicted probabilities of outcome 1, in [0, 1].
    n_bins : int, default 10
        Equal-mass bins for the ECE.

    Returns
    -------
    dict of str to float
        * ``auc`` -- ROC AUC; ``gini`` = 2 AUC - 1 (accuracy ratio);
        * ``pr_auc`` -- average precision (area under the precision-recall curve, step rule);
        * ``brier`` -- mean squared error of ``p`` (probability squared);
        * ``ece`` -- :func:`expected_calibration_error` with ``n_bins`` equal-mass bins;
        * ``log_loss`` -- mean negative log-likelihood (nats per row);
        * ``base_rate`` -- observed share of 1s; ``mean_pred`` -- mean of ``p``;
        * ``gain_top_decile``, ``gain_top_20pct`` -- share of positives among the 10% / 20%
          of rows with the highest ``p`` (:func:`top_share`);
        * ``lift_top_decile`` -- positive rate in the top 10% / base rate;
        * ``ks`` -- :func:`ks_statistic`.

    Raises
    ------
    ValueError
        If ``y_true`` has a single class, holds values other than 0/1, ``p`` leaves [0, 1],
        or the lengths differ.
    """
    _check_n_bins(n_bins)
    y, x = _binary(y_true, p)
    _check_probabilities(x, "p")
    _check_two_classes(y, "AUC")
    auc = float(roc_auc_score(y, x))
    positives = float(y.sum())
    top10, k10 = _top_sum(y, x, 0.1)
    top20, _ = _top_sum(y, x, 0.2)
    _, cdf_pos, cdf_neg = _ks_curve(y, x)
    base_rate = positives / y.size
    return {
        "auc": auc,
        "pr_auc": float(average_precision_score(y, x)),
        "brier": float(brier_score_loss(y, x)),
        "ece": expected_calibration_error(y, x, n_bins=n_bins),
        "log_loss": float(log_loss(y, x, labels=[0, 1])),
        "base_rate": base_rate,
        "mean_pred": float(x.mean()),
        "lift_top_decile": (top10 / k10) / base_rate,
        "gain_top_decile": top10 / positives,
        "gain_top_20pct": top20 / positives,
        "ks": float(np.max(np.abs(cdf_pos - cdf_neg))),
        "gini": 2.0 * auc - 1.0,
    }


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Score-quality metrics of a value prediction (e.g. expected margin over the horizon).

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed values (e.g. currency), of any sign.
    y_pred : array-like of shape (n_rows,)
        Predicted values, same unit.

    Returns
    -------
    dict of str to float
        * ``rmse``, ``mae`` -- per row, in the target's unit;
        * ``r2`` -- coefficient of determination (:func:`sklearn.metrics.r2_score`);
        * ``spearman`` -- rank correlation of prediction and outcome; NaN when either is
          constant (the rank correlation is undefined);
        * ``top20_capture``, ``top10_capture`` -- share of the total actual value held by
          the 20% / 10% of rows with the highest predictions (:func:`top_share`);
        * ``aggregate_error`` -- ``sum(y_pred) / sum(y_true) - 1`` (0 = totals agree).

        The two shares and the aggregate error are left out when ``y_true`` does not sum to
        a positive total (losses and gains netting to zero or less): they have no meaning.
    """
    y, pred = _as_pair(y_true, y_pred, "y_pred")
    constant = y.min() == y.max() or pred.min() == pred.max()
    spearman = np.nan if constant else float(stats.spearmanr(y, pred).statistic)
    out = {
        "rmse": float(np.sqrt(mean_squared_error(y, pred))),
        "mae": float(mean_absolute_error(y, pred)),
        "spearman": spearman,
    }
    total = float(y.sum())
    if total > 0:  # shares of a total: a margin of losses and gains summing to <= 0 has none
        out.update({
            "top20_capture": _top_sum(y, pred, 0.2)[0] / total,
            "top10_capture": _top_sum(y, pred, 0.1)[0] / total,
            "aggregate_error": float(pred.sum()) / total - 1.0,
        })
    out["r2"] = float(r2_score(y, pred))
    return out


def oracle_ratios(y_true: ArrayLike, p_model: ArrayLike, p_true: ArrayLike) -> dict[str, float]:
    """A classifier against the true probabilities of the synthetic base.

    The goals of ``shared/BENCHMARKS.md`` are ``auc_ratio >= 0.97`` and ``ece_model <= 0.01``.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed outcomes, 0/1, both classes present.
    p_model : array-like of shape (n_rows,)
        The model's probabilities, in [0, 1].
    p_true : array-like of shape (n_rows,)
        The generator's true probabilities of the same outcomes, in [0, 1].

    Returns
    -------
    dict of str to float
        ``auc_ratio`` = ``auc_model / auc_truth``, ``auc_model``, ``auc_truth``,
        ``ece_model`` and ``ece_truth`` (the latter near 0 up to sampling noise, a check on
        the generator), both with 10 equal-mass bins.
    """
    y, pm = _binary(y_true, p_model, "p_model")
    _, pt = _as_pair(y, p_true, "p_true")
    _check_probabilities(pm, "p_model")
    _check_probabilities(pt, "p_true")
    _check_two_classes(y, "AUC")
    auc_model = float(roc_auc_score(y, pm))
    auc_truth = float(roc_auc_score(y, pt))
    return {
        "auc_ratio": auc_model / auc_truth,
        "auc_model": auc_model,
        "auc_truth": auc_truth,
        "ece_model": expected_calibration_error(y, pm),
        "ece_truth": expected_calibration_error(y, pt),
    }


def regression_oracle_ratio(
    y_true: ArrayLike, pred_model: ArrayLike, pred_true: ArrayLike
) -> dict[str, float]:
    """A value model against the true expectation of the synthetic base.

    The goal of ``shared/BENCHMARKS.md`` is ``rmse_ratio <= 1.05``.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed values (e.g. margin over the horizon, currency).
    pred_model : array-like of shape (n_rows,)
        The model's predictions, same unit.
    pred_true : array-like of shape (n_rows,)
        The generator's true expected values, same unit.

    Returns
    -------
    dict of str to float
        ``rmse_ratio`` = ``rmse_model / rmse_truth``, ``rmse_model``, ``rmse_truth``
        (per row, in the target's unit).
    """
    y, pm = _as_pair(y_true, pred_model, "pred_model")
    _, pt = _as_pair(y, pred_true, "pred_true")
    rmse_model = float(np.sqrt(np.mean((pm - y) ** 2)))
    rmse_truth = float(np.sqrt(np.mean((pt - y) ** 2)))
    if rmse_truth == 0.0:
        raise ValueError("pred_true equals y_true on every row (RMSE 0): rmse_ratio is undefined")
    return {
        "rmse_ratio": rmse_model / rmse_truth,
        "rmse_model": rmse_model,
        "rmse_truth": rmse_truth,
    }


# --------------------------------------------------------------------------- plots


def plots(y_true: ArrayLike, pred: ArrayLike, model: str, rows: str, *, classifier: bool,
          ks: bool = False) -> dict[str, Figure]:
    """A model's evaluation plots, by name (logged as ``plots/<name>.png``): for a classifier
    calibration, gain and lift, ROC and, with ``ks`` (credit risk), the KS curve; for a value,
    predicted against actual by decile. Titled "<model>: calibration (<rows>)", e.g. "churn:
    calibration (test)"."""
    if not classifier:
        return {"predicted_vs_actual": plot_predicted_vs_actual(y_true, pred, f"{model}: by decile ({rows})")}
    out = {"calibration": plot_calibration(y_true, pred, f"{model}: calibration ({rows})"),
           "gain": plot_gain(y_true, pred, f"{model}: gain and lift ({rows})"),
           "roc": plot_roc(y_true, pred, f"{model}: ROC ({rows})")}
    if ks:
        out["ks"] = plot_ks(y_true, pred, f"{model}: KS ({rows})")
    return out


def _new_figure(figsize: tuple[float, float], title: str) -> Figure:
    fig = Figure(figsize=figsize, dpi=_DPI, layout="constrained")
    fig.suptitle(title, fontsize=13)
    return fig


def plot_calibration(
    y_true: ArrayLike, p: ArrayLike, title: str = "Calibration", *, n_bins: int = 10
) -> Figure:
    """Reliability diagram over equal-mass bins, with the diagonal and a histogram of ``p``.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed outcomes, 0/1.
    p : array-like of shape (n_rows,)
        Predicted probabilities, in [0, 1].
    title : str
        Figure title, e.g. the model kind and data split.
    n_bins : int, default 10
        Equal-mass bins, as for :func:`expected_calibration_error`.

    Returns
    -------
    matplotlib.figure.Figure
        Top: observed rate against mean predicted probability per bin; bottom: histogram of
        ``p`` (rows per 0.02-wide bin).
    """
    table = calibration_table(y_true, p, n_bins=n_bins)
    x = np.asarray(p, dtype=np.float64)
    ece = float((table["count"] * table["abs_gap"]).sum() / table["count"].sum())
    fig = _new_figure((7.0, 7.0), title)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color=_GREY, label="perfectly calibrated")
    top.plot(
        table["mean_pred"],
        table["observed_rate"],
        marker="o",
        color=_BLUE,
        label=f"model ({len(table)} equal-mass bins, ECE = {ece:.4f})",
    )
    top.set_ylabel("Observed rate (share of 1s)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    bottom.hist(x, bins=np.linspace(0, 1, 51), color=_BLUE, alpha=0.7)
    bottom.set_xlabel("Predicted probability")
    bottom.set_ylabel("Rows")
    bottom.grid(alpha=0.3)
    return fig


def _gain_curve(
    y: NDArray[np.float64], score: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Share of rows against share of target, highest scores first, joined at tie ends.

    Joining only at the end of each group of tied scores draws the straight line a random
    order within the ties would give on average.
    """
    order = np.argsort(-score, kind="stable")
    s, yy = score[order], y[order]
    end_of_tie = np.r_[s[1:] != s[:-1], True]
    rows = np.r_[0, np.flatnonzero(end_of_tie) + 1] / y.size
    gain = np.r_[0.0, np.cumsum(yy)[end_of_tie]] / y.sum()
    return rows, gain


def plot_gain(y_true: ArrayLike, score: ArrayLike, title: str = "Gain and lift") -> Figure:
    """Cumulative gain curve with random and perfect references, and lift by decile.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed target, 0/1 or a value (e.g. spend); its total must be positive.
    score : array-like of shape (n_rows,)
        Ranking score, higher first.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Left: share of the target captured against share of rows targeted; right: lift of
        each decile of :func:`lift_table` (1 = random).
    """
    table = lift_table(y_true, score)
    y, s = _as_pair(y_true, score, "score")
    rows, gain = _gain_curve(y, s)
    perfect_rows, perfect_gain = _gain_curve(y, y)
    fig = _new_figure(_FIGSIZE_WIDE, title)
    left, right = fig.subplots(1, 2)
    left.plot(perfect_rows * 100, perfect_gain * 100, color=_GREY, linestyle=":", label="perfect")
    left.plot([0, 100], [0, 100], color=_GREY, linestyle="--", label="random")
    top20 = np.interp(0.2, rows, gain)
    left.plot(rows * 100, gain * 100, color=_BLUE, label=f"model (top 20%: {top20:.1%})")
    left.set_xlabel("Rows targeted, highest scores first (%)")
    left.set_ylabel("Share of target captured (%)")
    left.set_title("Cumulative gain")
    left.set_xlim(0, 100)
    # a target with negative values (margin) can climb above 100% before falling back
    low = min(0.0, float(gain.min()), float(perfect_gain.min())) * 100
    high = max(1.0, float(gain.max()), float(perfect_gain.max())) * 100
    left.set_ylim(low, high + 5)
    left.grid(alpha=0.3)
    left.legend(loc="lower right")
    right.bar(table["decile"], table["lift"], color=_BLUE)
    right.axhline(1.0, color=_GREY, linestyle="--", label="random (lift 1)")
    right.set_xticks(table["decile"])
    right.set_xlabel("Decile of score (1 = highest)")
    right.set_ylabel("Lift (decile rate / overall rate)")
    right.set_title("Lift by decile")
    right.grid(alpha=0.3, axis="y")
    right.legend(loc="upper right")
    return fig


def plot_roc(y_true: ArrayLike, score: ArrayLike, title: str = "ROC curve") -> Figure:
    """ROC curve with the chance diagonal and the AUC in the legend.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed outcomes, 0/1, both classes present.
    score : array-like of shape (n_rows,)
        Predicted probability or any score, higher = more likely 1.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        True positive rate against false positive rate.
    """
    y, s = _binary(y_true, score, "score")
    _check_two_classes(y, "AUC")
    fpr, tpr, _ = roc_curve(y, s)
    auc = float(roc_auc_score(y, s))
    fig = _new_figure(_FIGSIZE, title)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color=_GREY, linestyle="--", label="chance (AUC 0.5)")
    ax.plot(fpr, tpr, color=_BLUE, label=f"model (AUC {auc:.3f}, Gini {2 * auc - 1:.3f})")
    ax.set_xlabel("False positive rate (share of 0s above the cut-off)")
    ax.set_ylabel("True positive rate (share of 1s above the cut-off)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def plot_ks(y_true: ArrayLike, score: ArrayLike, title: str = "Kolmogorov-Smirnov") -> Figure:
    """Empirical CDFs of the score among 1s and 0s, with the KS distance marked.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed outcomes, 0/1, both classes present.
    score : array-like of shape (n_rows,)
        Predicted probability or any score.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The two CDFs as steps and a vertical segment at the score of greatest separation.
    """
    y, s = _binary(y_true, score, "score")
    _check_two_classes(y, "KS")
    thresholds, cdf_pos, cdf_neg = _ks_curve(y, s)
    gap = np.abs(cdf_pos - cdf_neg)
    i = int(np.argmax(gap))
    fig = _new_figure(_FIGSIZE, title)
    ax = fig.subplots()
    ax.step(thresholds, cdf_neg, where="post", color=_BLUE, label="y = 0")
    ax.step(thresholds, cdf_pos, where="post", color=_ORANGE, label="y = 1")
    ax.vlines(
        thresholds[i],
        min(cdf_pos[i], cdf_neg[i]),
        max(cdf_pos[i], cdf_neg[i]),
        color="black",
        linewidth=2,
        label=f"KS = {gap[i]:.3f} at score {thresholds[i]:.4g}",
    )
    ax.set_xlabel("Score (model units; higher = more likely y = 1)")
    ax.set_ylabel("Cumulative share of rows with score <= x")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def plot_predicted_vs_actual(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    title: str = "Predicted vs actual",
    *,
    unit: str = "target units",
) -> Figure:
    """Mean predicted and mean actual value per decile of prediction.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Observed values; their total must be positive.
    y_pred : array-like of shape (n_rows,)
        Predicted values, same unit.
    title : str
        Figure title.
    unit : str, default "target units"
        Unit shown on the value axis, e.g. ``"currency"`` or ``"EUR"``.

    Returns
    -------
    matplotlib.figure.Figure
        Paired bars per decile (1 = highest predictions); the aggregate error in the legend.
    """
    table = lift_table(y_true, y_pred)
    y, pred = _as_pair(y_true, y_pred, "y_pred")
    aggregate_error = float(pred.sum() / y.sum() - 1.0)
    fig = _new_figure(_FIGSIZE, title)
    ax = fig.subplots()
    width = 0.4
    ax.bar(
        table["decile"] - width / 2,
        table["mean_score"],
        width,
        color=_BLUE,
        label=f"mean predicted (total {aggregate_error:+.1%} vs actual)",
    )
    ax.bar(table["decile"] + width / 2, table["rate"], width, color=_ORANGE, label="mean actual")
    ax.set_xticks(table["decile"])
    ax.set_xlabel("Decile of prediction (1 = highest)")
    ax.set_ylabel(f"Mean value per row ({unit})")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper right")
    return fig


def plot_importance(table: pd.DataFrame, title: str = "What drives the score", *, top: int = 20) -> Figure:
    """The ``top`` features of an importance table (``ModelBundle.importance``: ``feature``,
    ``mean_abs_contribution``, ``share``) as horizontal bars, the largest at the top."""
    shown = table.head(top).iloc[::-1]
    fig = _new_figure((8.0, max(3.0, 0.32 * len(shown) + 1.5)), title)
    ax = fig.subplots()
    ax.barh(shown["feature"], shown["mean_abs_contribution"], color=_BLUE)
    for y, (value, share) in enumerate(zip(shown["mean_abs_contribution"], shown["share"], strict=True)):
        ax.text(value, y, f" {share:.0%}", va="center", fontsize=9)
    ax.set_xlabel("Mean |contribution| to the raw score (TreeSHAP)")
    ax.grid(alpha=0.3, axis="x")
    return fig


def explained(bundle: Any, X: NDArray[np.float64], model: str, rows: str) -> tuple[pd.DataFrame, Figure]:
    """A model's importance table (``bundle.importance(X)``: mean |TreeSHAP| on up to 1,000 of
    the rows) and its plot, titled "<model>: what drives the score (<rows>)"."""
    table = bundle.importance(X)
    return table, plot_importance(table, f"{model}: what drives the score ({rows})")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at 100 dpi, then release it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        A figure from one of the ``plot_*`` functions (or any figure).
    path : str or pathlib.Path
        Destination; must end in ``.png``. Missing parent folders are created.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png; got {str(path)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=_DPI)
    # A figure made with pyplot is also held by pyplot's registry; drop it there too, but
    # only if pyplot is already loaded (importing it here would choose a backend).
    pyplot: Any = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
    return out
