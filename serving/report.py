"""The portfolio view: quadrant shares, value bands, the Pareto curve, migration, the report.

Tables and the summary are pure functions of a frame placed by
:func:`crmscore.serving.portfolio.assign_portfolio` (a *scored* frame). :func:`write_report`
and :func:`run_portfolio` are the I/O edge: they write ``report.html`` (self-contained, images
as PNG files next to it), ``report.md``, ``summary.json`` and, for the run, the scored frame
and the resolved cut-offs.

Definitions (docs/portfolio.md):

* *profit* is ``current_value`` (trailing 12-month margin minus activity-based cost to serve);
  a quadrant's profit share is its summed current value over the portfolio's, so an
  unprofitable quadrant has a negative share and the others add up to more than 100%
  (Kaplan & Cooper's "whale curve");
* *margin* is ``margin_365d`` (trailing 12-month gross margin); when absent, current value;
* *value bands* are deciles by rank, band 1 the top 10% (ties broken by frame order);
* the *80/20 figure* is the share of total margin brought by the top 20% of customers ranked
  by margin (``ceil(0.2 n)`` customers), and the same for current value.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crmscore.serving.policy import Quadrant, load_policy
from crmscore.serving.portfolio import QUADRANTS, assign_portfolio, resolve_cutoffs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PortfolioRun",
    "action_table",
    "migration_matrix",
    "pareto_curve",
    "plot_actions",
    "plot_migration",
    "plot_pareto",
    "plot_quadrants",
    "plot_value_bands",
    "portfolio_summary",
    "quadrant_table",
    "margin_basis",
    "read_scores",
    "run_portfolio",
    "share_of_customers_for",
    "top_share",
    "value_bands",
    "write_report",
]

logger = logging.getLogger(__name__)

TOP_SHARE = 0.2  # the "20" of 80/20
N_BANDS = 10
MAX_SCATTER_POINTS = 20_000
NEW, GONE = "new", "gone"
COLOURS = {  # colour-blind safe (Okabe & Ito)
    Quadrant.INVEST.value: "#009E73",
    Quadrant.NURTURE.value: "#0072B2",
    Quadrant.RE_ENGINEER.value: "#E69F00",
    Quadrant.SACK.value: "#D55E00",
}
_SCORED_COLUMNS = ("customer_id", "quadrant", "current_value", "future_potential")


def _check_scored(scored: pd.DataFrame) -> None:
    missing = [c for c in _SCORED_COLUMNS if c not in scored.columns]
    if missing:
        raise ValueError(
            f"the frame lacks {', '.join(map(repr, missing))}: place the customers first with "
            "crmscore.serving.portfolio.assign_portfolio(scores, policy)"
        )


def _values(scored: pd.DataFrame, column: str) -> np.ndarray:
    return scored[column].to_numpy(dtype=np.float64, na_value=np.nan)


def margin_basis(scored: pd.DataFrame) -> str:
    """The column used as *margin*: ``margin_365d`` when present, else ``current_value``."""
    return "margin_365d" if "margin_365d" in scored.columns else "current_value"


def _share(part: float, total: float) -> float:
    return part / total if total else math.nan


# --- tables ----------------------------------------------------------------------------------


def quadrant_table(scored: pd.DataFrame) -> pd.DataFrame:
    """Customers, profit and potential per quadrant, and each as a share of the portfolio.

    Returns
    -------
    DataFrame indexed by quadrant (invest, nurture, re-engineer, sack, then ``total``):
    ``customers``, ``customer_share``, ``current_value`` (sum, currency), ``profit_share``
    (share of total current value; negative for a loss-making quadrant), ``margin``,
    ``margin_share``, ``future_potential``, ``future_potential_share``,
    ``strategically_significant`` (count). NaN values count as 0 in sums.
    """
    _check_scored(scored)
    margin = margin_basis(scored)
    frame = pd.DataFrame(
        {
            "quadrant": pd.Categorical(scored["quadrant"].astype(str), categories=list(QUADRANTS)),
            "current_value": np.nan_to_num(_values(scored, "current_value")),
            "margin": np.nan_to_num(_values(scored, margin)),
            "future_potential": np.nan_to_num(_values(scored, "future_potential")),
            "strategically_significant": (
                scored["strategically_significant"].to_numpy(dtype=bool)
                if "strategically_significant" in scored.columns
                else np.zeros(len(scored), dtype=bool)
            ),
        }
    )
    grouped = frame.groupby("quadrant", observed=False)
    table = pd.DataFrame(
        {
            "customers": grouped.size(),
            "current_value": grouped["current_value"].sum(),
            "margin": grouped["margin"].sum(),
            "future_potential": grouped["future_potential"].sum(),
            "strategically_significant": grouped["strategically_significant"].sum(),
        }
    ).reindex(list(QUADRANTS), fill_value=0)
    table.loc["total"] = table.sum()
    total = table.loc["total"]
    table.insert(1, "customer_share", table["customers"] / total["customers"])
    table.insert(3, "profit_share", table["current_value"] / total["current_value"])
    table.insert(5, "margin_share", table["margin"] / total["margin"])
    table["future_potential_share"] = table["future_potential"] / total["future_potential"]
    table = table[
        [
            "customers",
            "customer_share",
            "current_value",
            "profit_share",
            "margin",
            "margin_share",
            "future_potential",
            "future_potential_share",
            "strategically_significant",
        ]
    ]
    table["customers"] = table["customers"].astype(int)
    table["strategically_significant"] = table["strategically_significant"].astype(int)
    table.index.name = "quadrant"
    return table


def value_bands(scored: pd.DataFrame, column: str, n_bands: int = N_BANDS) -> pd.DataFrame:
    """Customers in equal-count bands of ``column`` (band 1 = the top), with their margin.

    Parameters
    ----------
    scored : DataFrame
    column : str
        What to band by, e.g. ``"current_value"`` or ``"future_potential"``.
    n_bands : int
        10 gives deciles. Customers whose value is unknown are left out (row ``unknown``
        is not added; see the summary's missing counts).

    Returns
    -------
    DataFrame indexed by band 1..n_bands: ``customers``, ``min``, ``max`` (of ``column``),
    ``value`` (its sum), ``value_share``, ``margin``, ``margin_share`` (of the banded
    customers' total margin) and, unless ``column`` is current value itself,
    ``current_value`` and ``profit_share``.
    """
    if n_bands < 1:
        raise ValueError(f"n_bands must be a positive number of bands; got {n_bands}")
    values = _values(scored, column)
    margin = np.nan_to_num(_values(scored, margin_basis(scored)))
    current = np.nan_to_num(_values(scored, "current_value"))
    known = np.flatnonzero(~np.isnan(values))
    order = known[np.argsort(-values[known], kind="stable")]
    band = np.empty(len(order), dtype=np.int64)
    band[:] = np.arange(len(order)) * n_bands // max(len(order), 1) + 1
    frame = pd.DataFrame(
        {
            "band": band,
            "v": values[order],
            "margin": margin[order],
            "current_value": current[order],
        }
    )
    g = frame.groupby("band")
    table = pd.DataFrame(
        {
            "customers": g.size(),
            "min": g["v"].min(),
            "max": g["v"].max(),
            "value": g["v"].sum(),
            "margin": g["margin"].sum(),
            "current_value": g["current_value"].sum(),
        }
    ).reindex(range(1, n_bands + 1))
    table["customers"] = table["customers"].fillna(0).astype(int)
    table.insert(4, "value_share", table["value"] / frame["v"].sum())
    table.insert(6, "margin_share", table["margin"] / frame["margin"].sum())
    table["profit_share"] = table["current_value"] / frame["current_value"].sum()
    if column == "current_value":  # value and profit are the same column then
        table = table.drop(columns=["current_value", "profit_share"])
    table.index.name = "band"
    return table


def pareto_curve(values: Any) -> pd.DataFrame:
    """Cumulative share of the total brought by the top customers (Lorenz/Pareto curve).

    Customers are ranked by ``values``, largest first (NaN left out). Returns a frame of
    ``customer_share`` (0 to 1) and ``value_share`` (cumulative share of the sum; can rise
    above 1 and fall back when some values are negative: the whale curve), starting at (0, 0).
    """
    x = np.asarray(values, dtype=np.float64)
    x = np.sort(x[~np.isnan(x)])[::-1]
    total = x.sum()
    n = len(x)
    return pd.DataFrame(
        {
            "customer_share": np.arange(n + 1) / max(n, 1),
            "value_share": np.concatenate([[0.0], np.cumsum(x)]) / total if total else np.nan,
        }
    )


def top_share(values: Any, top: float = TOP_SHARE) -> float:
    """Share of the total brought by the top ``top`` of customers (``ceil(top x n)`` of them).

    Customers are ranked by ``values``, largest first; NaN values are left out.
    With ``top=0.2`` this is the 80/20 figure.
    """
    if not 0 < top <= 1:
        raise ValueError(f"top must be a share of customers in (0, 1]; got {top}")
    x = np.asarray(values, dtype=np.float64)
    x = np.sort(x[~np.isnan(x)])[::-1]
    if x.size == 0 or x.sum() == 0:
        return math.nan
    k = math.ceil(top * x.size - 1e-9)
    return float(x[:k].sum() / x.sum())


def share_of_customers_for(values: Any, value_share: float = 0.8) -> float:
    """Smallest share of customers (ranked largest first) bringing ``value_share`` of the total."""
    x = np.asarray(values, dtype=np.float64)
    x = np.sort(x[~np.isnan(x)])[::-1]
    if x.size == 0 or x.sum() <= 0:
        return math.nan
    k = int(np.searchsorted(np.cumsum(x) / x.sum(), value_share - 1e-12)) + 1
    return min(k, x.size) / x.size


def migration_matrix(previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Customers moving between quadrants from one scoring to the next, matched by customer_id.

    Returns
    -------
    DataFrame of counts: rows are the previous quadrant plus ``new`` (not in the previous
    scoring), columns the current quadrant plus ``gone`` (not in the current one).
    """
    for name, frame in (("previous", previous), ("current", current)):
        for column in ("customer_id", "quadrant"):
            if column not in frame.columns:
                raise ValueError(f"the {name} scoring lacks the column {column!r}")
        dupes = frame["customer_id"].duplicated()
        if dupes.any():
            raise ValueError(
                f"the {name} scoring has {int(dupes.sum())} duplicated customer_id(s), e.g. "
                f"{frame.loc[dupes, 'customer_id'].iloc[0]!r}; one row per customer is expected"
            )
    merged = pd.merge(
        previous[["customer_id", "quadrant"]].astype({"quadrant": str}),
        current[["customer_id", "quadrant"]].astype({"quadrant": str}),
        on="customer_id",
        how="outer",
        suffixes=("_previous", "_current"),
    )
    rows = merged["quadrant_previous"].fillna(NEW)
    cols = merged["quadrant_current"].fillna(GONE)
    matrix = pd.crosstab(rows, cols).reindex(
        index=[*QUADRANTS, NEW], columns=[*QUADRANTS, GONE], fill_value=0
    )
    matrix.loc[NEW, GONE] = 0  # impossible cell, kept for a square layout
    matrix.index.name, matrix.columns.name = "previous", "current"
    return matrix.astype(int)


def action_table(scored: pd.DataFrame) -> pd.DataFrame:
    """Customers per action code (a customer counts once per action) and per quadrant."""
    codes = scored["action_codes"].astype(str).str.split(";").explode()
    quadrant = scored["quadrant"].astype(str).reindex(codes.index)
    table = pd.crosstab(codes, quadrant).reindex(columns=list(QUADRANTS), fill_value=0)
    table["customers"] = table.sum(axis=1)
    table = table.sort_values("customers", ascending=False)
    table.index.name = "action"
    return table


def _unprofitable_giants(scored: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The biggest customers by margin who are not currently profitable (volume is not value)."""
    if "margin_365d" not in scored.columns or "currently_profitable" not in scored.columns:
        return scored.iloc[:0]
    loss = scored[~scored["currently_profitable"].astype(bool)]
    wanted = (
        "customer_id",
        "segment",
        "margin_365d",
        "cost_to_serve_365d",
        "current_value",
        "future_potential",
        "quadrant",
        "primary_action",
    )
    return loss.nlargest(n, "margin_365d")[[c for c in wanted if c in scored.columns]]


# --- summary ---------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return None if not math.isfinite(obj) else float(obj)
    if isinstance(obj, pd.Timestamp):
        return obj.date().isoformat()
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [{table.index.name or "index": k, **row} for k, row in table.to_dict("index").items()]


def portfolio_summary(scored: pd.DataFrame, previous: pd.DataFrame | None = None) -> dict[str, Any]:
    """The portfolio at a glance, JSON-serialisable (served at GET /v1/portfolio/summary).

    Parameters
    ----------
    scored : DataFrame
        Output of :func:`~crmscore.serving.portfolio.assign_portfolio`.
    previous : DataFrame, optional
        An earlier scoring with ``customer_id`` and ``quadrant``: adds ``migration``.

    Returns
    -------
    dict with ``policy_version`` (a list if the frame mixes policies), ``as_of``,
    ``n_customers``, ``cutoffs``, ``quadrants``
    (per quadrant: customers, shares of customers / profit / margin / future potential),
    ``pareto`` (the 80/20 figures, named by what they measure), ``value_bands``,
    ``strategic`` (flag counts), ``actions`` (customers per action code),
    ``missing_components`` (customers missing each) and, with ``previous``, ``migration``.
    NaN becomes null.
    """
    _check_scored(scored)
    margin = margin_basis(scored)
    versions = (
        sorted(scored["policy_version"].astype(str).unique()) if "policy_version" in scored else []
    )
    as_of = None
    if "as_of" in scored.columns and scored["as_of"].notna().any():
        as_of = pd.Timestamp(scored["as_of"].max()).date().isoformat()
    cutoffs = {
        c: float(scored[c].iloc[0])
        for c in ("current_value_cutoff", "future_potential_cutoff", "high_value_cutoff")
        if c in scored.columns and len(scored)
    }
    flags = [c for c in scored.columns if str(c).startswith("flag_")]
    missing = scored["missing_components"].astype(str).str.split(";").explode()
    quadrants = quadrant_table(scored)
    summary: dict[str, Any] = {
        "policy_version": versions[0] if len(versions) == 1 else versions,
        "as_of": as_of,
        "n_customers": len(scored),
        "cutoffs": cutoffs,
        "margin_basis": margin,
        "totals": {
            "current_value": float(np.nansum(_values(scored, "current_value"))),
            "margin": float(np.nansum(_values(scored, margin))),
            "future_potential": float(np.nansum(_values(scored, "future_potential"))),
        },
        "quadrants": {q: {c: quadrants.at[q, c] for c in quadrants.columns} for q in QUADRANTS},
        "pareto": {
            "top_customer_share": TOP_SHARE,
            "margin_share_of_top": top_share(_values(scored, margin)),
            "current_value_share_of_top": top_share(_values(scored, "current_value")),
            "customer_share_for_80pct_of_margin": share_of_customers_for(_values(scored, margin)),
            "definition": f"customers ranked by each measure, largest first; the top "
            f"ceil({TOP_SHARE:g} x n) customers' share of the portfolio total of {margin} "
            "(margin) and of current_value (margin - cost to serve)",
        },
        "value_bands": {
            column: _records(value_bands(scored, column))
            for column in ("current_value", "future_potential")
        },
        "strategic": {
            "strategically_significant": int(scored["strategically_significant"].sum())
            if "strategically_significant" in scored
            else 0,
            **{c.removeprefix("flag_"): int(scored[c].astype(bool).sum()) for c in flags},
        },
        "actions": action_table(scored)["customers"].to_dict() if "action_codes" in scored else {},
        "missing_components": missing[missing != ""].value_counts().to_dict()
        if "missing_components" in scored
        else {},
    }
    if previous is not None:
        matrix = migration_matrix(previous, scored)
        summary["migration"] = {
            "rows": "previous quadrant (plus new)",
            "columns": "current quadrant (plus gone)",
            "counts": {r: matrix.loc[r].to_dict() for r in matrix.index},
        }
    return _jsonable(summary)


# --- plots (Agg canvas per figure: no pyplot, no global backend switch) -----------------------


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _money(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    for size, unit in ((1e9, "bn"), (1e6, "m"), (1e3, "k")):
        if abs(x) >= size:
            return f"{x / size:,.1f}{unit}"
    return f"{x:,.0f}"


def _symlog_threshold(values: np.ndarray) -> float:
    """Linear range of a symlog axis: a round number near the median magnitude."""
    mag = np.abs(values[np.isfinite(values) & (values != 0)])
    if mag.size == 0:
        return 1.0
    return float(10 ** math.floor(math.log10(max(np.median(mag), 1e-9))))


def plot_quadrants(scored: pd.DataFrame, random_state: int = 0) -> Figure:
    """Current value vs future potential, coloured by quadrant, with the cut-off lines.

    Symlog axes (linear near 0, logarithmic beyond) because both values are heavy-tailed and
    can be negative. At most 20,000 customers are drawn (a seeded random sample).
    """
    _check_scored(scored)
    cv, fp = _values(scored, "current_value"), _values(scored, "future_potential")
    quadrant = scored["quadrant"].astype(str).to_numpy()
    shown = np.flatnonzero(np.isfinite(cv) & np.isfinite(fp))
    unknown = len(scored) - len(shown)
    if len(shown) > MAX_SCATTER_POINTS:
        shown = np.sort(
            np.random.default_rng(random_state).choice(shown, MAX_SCATTER_POINTS, replace=False)
        )
    table = quadrant_table(scored)
    fig = _figure(8.5, 6.5)
    ax = fig.add_subplot()
    for q in QUADRANTS:
        idx = shown[quadrant[shown] == q]
        row = table.loc[q]
        ax.scatter(
            cv[idx],
            fp[idx],
            s=9,
            alpha=0.55,
            color=COLOURS[q],
            edgecolors="none",
            rasterized=True,
            label=f"{q}: {int(row['customers']):,} customers, {row['profit_share']:.0%} of profit",
        )
    xt, yt = _symlog_threshold(cv), _symlog_threshold(fp)
    ax.set_xscale("symlog", linthresh=xt)
    ax.set_yscale("symlog", linthresh=yt)
    cut_cv = (
        float(scored["current_value_cutoff"].iloc[0]) if "current_value_cutoff" in scored else 0.0
    )
    cut_fp = (
        float(scored["future_potential_cutoff"].iloc[0])
        if "future_potential_cutoff" in scored
        else math.nan
    )
    ax.axvline(cut_cv, color="0.25", lw=1.2, ls="--")
    if math.isfinite(cut_fp):
        ax.axhline(cut_fp, color="0.25", lw=1.2, ls="--")
    ax.text(
        cut_cv,
        1.0,
        f" current value cut-off {_money(cut_cv)}",
        transform=ax.get_xaxis_transform(),
        va="top",
        ha="left",
        fontsize=8,
        color="0.25",
    )
    if math.isfinite(cut_fp):
        ax.text(
            0.0,
            cut_fp,
            f" future potential cut-off {_money(cut_fp)}",
            transform=ax.get_yaxis_transform(),
            va="bottom",
            ha="left",
            fontsize=8,
            color="0.25",
        )
    for q, (x, y, ha, va) in {
        Quadrant.INVEST.value: (0.98, 0.98, "right", "top"),
        Quadrant.NURTURE.value: (0.98, 0.02, "right", "bottom"),
        Quadrant.RE_ENGINEER.value: (0.02, 0.98, "left", "top"),
        Quadrant.SACK.value: (0.02, 0.02, "left", "bottom"),
    }.items():
        ax.text(
            x,
            y,
            q.upper(),
            transform=ax.transAxes,
            ha=ha,
            va=va,
            fontsize=13,
            fontweight="bold",
            color=COLOURS[q],
            alpha=0.8,
        )
    ax.set_xlabel("current value: trailing 12-month margin - cost to serve (symlog)")
    ax.set_ylabel("future potential: CLV - expected credit loss (symlog)")
    title = "Customer portfolio: where each customer stands (Buttle)"
    note = f"{len(shown):,} of {len(scored):,} customers shown"
    if unknown:
        note += f"; {unknown:,} with an unknown value not drawn"
    ax.set_title(f"{title}\n{note}", fontsize=11)
    ax.legend(
        loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, markerscale=2
    )
    ax.grid(True, which="major", alpha=0.25)
    return fig


def plot_pareto(scored: pd.DataFrame) -> Figure:
    """Pareto curve of margin and whale curve of current value, with the 80/20 point."""
    margin = margin_basis(scored)
    fig = _figure(8, 5.5)
    ax = fig.add_subplot()
    m_share = top_share(_values(scored, margin))
    c_share = top_share(_values(scored, "current_value"))
    curves = [("current_value", "current value (margin - cost to serve)", "#D55E00")]
    if margin != "current_value":
        curves.insert(0, (margin, f"margin ({margin})", "#0072B2"))
    for column, label, colour in curves:
        curve = pareto_curve(_values(scored, column))
        ax.plot(curve["customer_share"], curve["value_share"], color=colour, lw=2, label=label)
    ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1, label="every customer equal")
    ax.axvline(TOP_SHARE, color="0.3", ls="--", lw=1)
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.scatter([TOP_SHARE, TOP_SHARE], [m_share, c_share], color=["#0072B2", "#D55E00"], zorder=3)
    ax.annotate(
        f"top 20% bring {m_share:.0%} of margin",
        (TOP_SHARE, m_share),
        xytext=(12, -14),
        textcoords="offset points",
        fontsize=9,
        color="#0072B2",
    )
    ax.annotate(
        f"top 20% bring {c_share:.0%} of current value",
        (TOP_SHARE, c_share),
        xytext=(12, 6),
        textcoords="offset points",
        fontsize=9,
        color="#D55E00",
    )
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel("share of customers, most valuable first")
    ax.set_ylabel("cumulative share of the portfolio total")
    ax.set_title(f"80/20: the top 20% of customers bring {m_share:.0%} of margin", fontsize=11)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.grid(True, alpha=0.25)
    return fig


def plot_value_bands(scored: pd.DataFrame) -> Figure:
    """Share of margin and of profit per decile of current value and of future potential."""
    margin = margin_basis(scored)
    fig = _figure(10, 4.8)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, title in (
        (axes[0], "current_value", "deciles of current value"),
        (axes[1], "future_potential", "deciles of future potential"),
    ):
        bands = value_bands(scored, column)
        profit = bands["value_share"] if column == "current_value" else bands["profit_share"]
        x = np.arange(1, len(bands) + 1)
        ax.bar(x - 0.2, bands["margin_share"], width=0.4, color="#0072B2", label="share of margin")
        ax.bar(
            x + 0.2,
            profit,
            width=0.4,
            color="#E69F00",
            label="share of current value (profit)",
        )
        for xi, v in zip(x, bands["margin_share"], strict=True):
            if np.isfinite(v):
                ax.text(xi - 0.2, max(v, 0), f"{v:.0%}", ha="center", va="bottom", fontsize=7)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(x, [f"{i}" for i in x])
        ax.set_xlabel(f"band (1 = top 10%), {title}")
        ax.set_title(f"Value bands: {title}", fontsize=10)
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.grid(True, axis="y", alpha=0.25)
    axes[0].set_ylabel(f"share of portfolio total ({margin}; current value)")
    axes[0].legend(fontsize=8, frameon=False, loc="upper right")
    return fig


def plot_migration(matrix: pd.DataFrame) -> Figure:
    """Heat map of customers moving between quadrants (rows: before, columns: now)."""
    fig = _figure(7.5, 6)
    ax = fig.add_subplot()
    counts = matrix.to_numpy()
    row_share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(
                j,
                i,
                f"{counts[i, j]:,}\n{row_share[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if row_share[i, j] > 0.6 else "0.15",
            )
    ax.set_xticks(range(counts.shape[1]), list(matrix.columns), rotation=20)
    ax.set_yticks(range(counts.shape[0]), list(matrix.index))
    ax.set_xlabel("quadrant now")
    ax.set_ylabel("quadrant at the previous scoring")
    stayed = int(np.trace(counts[: len(QUADRANTS), : len(QUADRANTS)]))
    both = int(counts[: len(QUADRANTS), : len(QUADRANTS)].sum())
    ax.set_title(
        f"Quadrant migration: {stayed:,} of {both:,} customers scored both times stayed "
        f"({_share(stayed, both):.0%})\ncells: customers and share of the row",
        fontsize=10,
    )
    fig.colorbar(im, ax=ax, shrink=0.75, label="share of the previous quadrant")
    return fig


def plot_actions(scored: pd.DataFrame) -> Figure:
    """Customers per recommended action, stacked by quadrant."""
    table = action_table(scored).iloc[::-1]
    fig = _figure(8, 0.45 * len(table) + 1.8)
    ax = fig.add_subplot()
    left = np.zeros(len(table))
    for q in QUADRANTS:
        ax.barh(table.index, table[q], left=left, color=COLOURS[q], label=q)
        left += table[q].to_numpy()
    for y, total in enumerate(table["customers"]):
        ax.text(total, y, f" {total:,}", va="center", fontsize=8)
    ax.set_xlabel("customers")
    ax.set_title("Recommended actions (a customer can have several)", fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.set_xlim(0, left.max() * 1.15 if len(left) else 1)
    ax.grid(True, axis="x", alpha=0.25)
    return fig


# --- writing ---------------------------------------------------------------------------------


def _fmt(value: Any, kind: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        return str(value)
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "money":
        return f"{value:,.0f}"
    if kind == "int":
        return f"{int(value):,}"
    return str(value)


def _table_rows(table: pd.DataFrame, kinds: Mapping[str, str]) -> tuple[list[str], list[list[str]]]:
    header = [table.index.name or "", *[str(c).replace("_", " ") for c in table.columns]]
    rows = [
        [str(idx), *[_fmt(row[c], kinds.get(str(c), "money")) for c in table.columns]]
        for idx, row in table.iterrows()
    ]
    return header, rows


def _html_table(table: pd.DataFrame, kinds: Mapping[str, str]) -> str:
    header, rows = _table_rows(table, kinds)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(table: pd.DataFrame, kinds: Mapping[str, str]) -> str:
    header, rows = _table_rows(table, kinds)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


_QUADRANT_KINDS = {
    "customers": "int",
    "customer_share": "pct",
    "profit_share": "pct",
    "margin_share": "pct",
    "future_potential_share": "pct",
    "strategically_significant": "int",
}
_BAND_KINDS = {
    "customers": "int",
    "value_share": "pct",
    "margin_share": "pct",
    "profit_share": "pct",
}
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd}
.meta{color:#666}.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1.2rem 0}
.card{background:#f5f7fa;border-radius:8px;padding:.8rem 1.1rem;min-width:180px}
.card b{display:block;font-size:1.5rem}table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{padding:.3rem .7rem;border-bottom:1px solid #e3e3e3;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
""".strip()


@dataclass(frozen=True)
class _Section:
    title: str
    text: str = ""
    image: str | None = None
    table: pd.DataFrame | None = None
    kinds: Mapping[str, str] | None = None


def _sections(
    scored: pd.DataFrame,
    summary: Mapping[str, Any],
    images: Mapping[str, str],
    previous: pd.DataFrame | None,
) -> list[_Section]:
    p = summary["pareto"]
    q = summary["quadrants"]
    cut = summary["cutoffs"]
    margin = summary["margin_basis"]
    losses = [
        f"{name} customers lose {_fmt(-q[name]['current_value'], 'money')} a year net"
        for name in QUADRANTS
        if q[name]["current_value"] < 0
    ]
    quadrant_text = (
        f"Currently profitable means current value above "
        f"{_fmt(cut.get('current_value_cutoff'), 'money')}; high future potential means "
        f"risk-adjusted CLV above {_fmt(cut.get('future_potential_cutoff'), 'money')}. Profit "
        "share is each quadrant's share of total current value"
        + (": " + "; ".join(losses) + "." if losses else ".")
    )
    sections = [
        _Section(
            "Quadrants",
            quadrant_text,
            images.get("quadrants"),
            quadrant_table(scored),
            _QUADRANT_KINDS,
        ),
        _Section(
            "Recommended actions",
            "Each customer gets the primary action of the quadrant, then any triggered actions "
            "(credit, retention, cross-sell) with a reason and the scores behind it.",
            images.get("actions"),
            action_table(scored),
            {c: "int" for c in [*QUADRANTS, "customers"]},
        ),
        _Section(
            "80/20",
            f"The top 20% of customers by margin bring {_fmt(p['margin_share_of_top'], 'pct')} of margin "
            f"({margin}); the top 20% by current value bring "
            f"{_fmt(p['current_value_share_of_top'], 'pct')} of total current value (above 100% when "
            f"the rest lose money). {_fmt(p['customer_share_for_80pct_of_margin'], 'pct')} of "
            "customers bring 80% of margin.",
            images.get("pareto"),
        ),
        _Section(
            "Value bands: deciles of current value",
            "Band 1 is the top 10% of customers by current value.",
            images.get("value_bands"),
            value_bands(scored, "current_value"),
            _BAND_KINDS,
        ),
        _Section(
            "Value bands: deciles of future potential",
            "Band 1 is the top 10% of customers by risk-adjusted CLV.",
            None,
            value_bands(scored, "future_potential"),
            _BAND_KINDS,
        ),
    ]
    giants = _unprofitable_giants(scored)
    if len(giants):
        sections.append(
            _Section(
                "Big but not profitable",
                "The largest customers by margin whose cost to serve eats the margin: volume is "
                "not value.",
                None,
                giants.set_index("customer_id"),
                {},
            )
        )
    sections.append(
        _Section(
            "Strategically significant customers",
            "high_value: future potential in the top decile; other flags are set by the company "
            "(policy `flags`).",
            None,
            pd.DataFrame({"customers": summary["strategic"]}).rename_axis("flag"),
            {"customers": "int"},
        )
    )
    if previous is not None:
        sections.append(
            _Section(
                "Migration since the previous scoring",
                "Rows: quadrant at the previous scoring (new: not scored then); columns: "
                "quadrant now (gone: not scored now).",
                images.get("migration"),
                migration_matrix(previous, scored),
                {c: "int" for c in [*QUADRANTS, GONE]},
            )
        )
    missing = summary["missing_components"]
    if missing:
        sections.append(
            _Section(
                "Missing components",
                "Customers placed from what is known: a missing current value counts as not "
                "profitable, a missing CLV as low potential, missing credit as no expected loss.",
                None,
                pd.DataFrame({"customers": missing}).rename_axis("component"),
                {"customers": "int"},
            )
        )
    return sections


def write_report(
    scored: pd.DataFrame, out_dir: str | Path, previous: pd.DataFrame | None = None
) -> Path:
    """Write the portfolio report: ``report.html``, ``report.md``, ``summary.json`` and PNGs.

    Parameters
    ----------
    scored : DataFrame
        Output of :func:`~crmscore.serving.portfolio.assign_portfolio`.
    out_dir : path
        Folder to write into (created if missing).
    previous : DataFrame, optional
        An earlier scoring (``customer_id``, ``quadrant``): adds the migration matrix.

    Returns
    -------
    Path of ``report.html``; the images are PNG files next to it (``quadrants.png``,
    ``pareto.png``, ``value_bands.png``, ``actions.png``, ``migration.png`` with ``previous``).
    """
    _check_scored(scored)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = portfolio_summary(scored, previous)
    figures = {
        "quadrants": plot_quadrants(scored),
        "actions": plot_actions(scored),
        "pareto": plot_pareto(scored),
        "value_bands": plot_value_bands(scored),
    }
    if previous is not None:
        figures["migration"] = plot_migration(migration_matrix(previous, scored))
    images = {}
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png")
        images[name] = f"{name}.png"
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    sections = _sections(scored, summary, images, previous)
    title = "Customer portfolio report"
    version = summary["policy_version"]
    meta = (
        f"{summary['n_customers']:,} customers · as of {summary['as_of'] or 'n/a'} · "
        f"policy {version}"
    )
    p, totals = summary["pareto"], summary["totals"]
    cards = [
        ("customers", f"{summary['n_customers']:,}"),
        ("current value (profit)", _fmt(totals["current_value"], "money")),
        ("margin, 12 months", _fmt(totals["margin"], "money")),
        ("top 20% bring", f"{_fmt(p['margin_share_of_top'], 'pct')} of margin"),
        (
            "invest / sack",
            f"{summary['quadrants']['invest']['customers']:,} / "
            f"{summary['quadrants']['sack']['customers']:,}",
        ),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>",
        "<div class='cards'>"
        + "".join(
            f"<div class='card'>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in cards
        )
        + "</div>",
    ]
    md = [f"# {title}", "", meta, ""]
    md += [f"- **{k}**: {v}" for k, v in cards] + [""]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        md += [f"## {s.title}", ""]
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
            md += [s.text, ""]
        if s.image:
            parts.append(f'<img src="{html.escape(s.image)}" alt="{html.escape(s.title)}">')
            md += [f"![{s.title}]({s.image})", ""]
        if s.table is not None:
            parts.append(_html_table(s.table, s.kinds or {}))
            md += [_md_table(s.table, s.kinds or {}), ""]
    footer = (
        "Rules and sources: docs/portfolio.md (Buttle, Customer Relationship Management, ch. 5; "
        "Kalakota & Robinson, e-Business 2.0; Basel II for loss given default)."
    )
    parts.append(f"<p class='meta'>{html.escape(footer)}</p></body></html>")
    md += [f"_{footer}_", ""]
    report = out / "report.html"
    report.write_text("\n".join(parts) + "\n", encoding="utf-8")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    logger.info("wrote the portfolio report of %d customers to %s", len(scored), report)
    return report


def read_scores(path: str | Path) -> pd.DataFrame:
    """Read a scores (or scored) frame from Parquet or CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scores file not found: {path}")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, dtype={"customer_id": str})
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"scores file must be .parquet or .csv; got {path.name!r}")


@dataclass(frozen=True)
class PortfolioRun:
    """What :func:`run_portfolio` wrote."""

    report_path: Path
    scored_path: Path
    cutoffs_path: Path
    summary_path: Path
    quadrant_counts: dict[str, int]


def run_portfolio(
    scores_path: str | Path,
    out_dir: str | Path,
    *,
    previous_path: str | Path | None = None,
    policy_path: str | Path | None = None,
) -> PortfolioRun:
    """Place a scored base in the portfolio and write everything (``crmscore portfolio``).

    Reads the policy (default: the packaged one) and the scores, resolves the cut-offs on this
    portfolio, assigns quadrants and actions, and writes into ``out_dir``:
    ``portfolio.parquet`` (the scored frame), ``cutoffs.json`` (for the API to place single
    customers the same way), ``summary.json`` and the report (``report.html``, ``report.md``,
    PNGs). A previous file that already has a ``quadrant`` column is used as it was scored;
    otherwise it is placed with the same policy, its cut-offs resolved on itself.

    Raises
    ------
    FileNotFoundError
        A file does not exist.
    PolicyError, ValueError
        The policy is invalid, or a scores frame lacks a required column.
    """
    policy = load_policy(policy_path)
    scores = read_scores(scores_path)
    cutoffs = resolve_cutoffs(policy, scores)
    scored = assign_portfolio(scores, policy, cutoffs)
    previous = None
    if previous_path is not None:
        previous = read_scores(previous_path)
        if "quadrant" not in previous.columns:
            previous = assign_portfolio(previous, policy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scored_path = out / "portfolio.parquet"
    scored.to_parquet(scored_path, index=False)
    cutoffs_path = out / "cutoffs.json"
    cutoffs_path.write_text(cutoffs.model_dump_json(indent=2) + "\n", encoding="utf-8")
    report = write_report(scored, out, previous)
    counts = scored["quadrant"].value_counts().reindex(list(QUADRANTS), fill_value=0)
    return PortfolioRun(
        report_path=report,
        scored_path=scored_path,
        cutoffs_path=cutoffs_path,
        summary_path=out / "summary.json",
        quadrant_counts={str(k): int(v) for k, v in counts.items()},
    )
