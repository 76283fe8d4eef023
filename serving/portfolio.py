"""Customer portfolio analysis: value, Buttle's quadrants, strategic flags and actions.

Pure functions on frames and arrays, shared by batch scoring (a whole base) and the HTTP API
(one customer). The rules, their cut-offs and their sources are in ``docs/portfolio.md``;
every number comes from a :class:`~crmscore.serving.policy.Policy`.

Value (Buttle 2009, ch. 5: customer value has a current and a potential part; cost to serve
traced by activity-based costing)::

    current_value        = margin_365d - cost_to_serve_365d            (given by scoring)
    expected_credit_loss = default_prob x max(outstanding_balance, 0) x loss_given_default
    future_potential     = clv - expected_credit_loss                  (risk-adjusted CLV)

Quadrant (Buttle's customer portfolio matrix, as in ARCHITECTURE.md)::

                          future_potential > cut-off   future_potential <= cut-off
    current_value > cut-off         invest                    nurture
    current_value <= cut-off        re-engineer               sack

A missing value (NaN) never satisfies ">": a customer whose current value is unknown is not
shown to be profitable, one without a CLV is not shown to have high potential; the column
``missing_components`` says which components were missing.

Actions, in this order: the quadrant's primary action; a strategic-account review for
flagged customers in re-engineer or sack; prepayment or credit review (credit risk);
retention offer (churn risk, value worth keeping); cross-sell of the top category
(Kalakota & Robinson's enhancement phase).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from itertools import repeat
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crmscore.serving.policy import CompanyFlag, Cutoffs, Policy, Quadrant

__all__ = [
    "COMPONENTS",
    "OPTIONAL_COLUMNS",
    "PROPENSITY_PREFIX",
    "QUADRANTS",
    "REQUIRED_COLUMNS",
    "ActionCode",
    "assess_customer",
    "assign_portfolio",
    "assign_quadrant",
    "compute_expected_credit_loss",
    "compute_value",
    "make_demo_scores",
    "output_columns",
    "resolve_cutoffs",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ObjectArray = npt.NDArray[np.object_]

QUADRANTS: tuple[str, ...] = tuple(q.value for q in Quadrant)
PROPENSITY_PREFIX = "propensity_"
#: Columns a scores frame must have (``current_value`` may instead be derived from
#: ``margin_365d`` and ``cost_to_serve_365d``).
REQUIRED_COLUMNS: tuple[str, ...] = ("customer_id", "current_value", "clv")
#: Columns used when present; absent means missing for every customer.
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "default_prob",
    "outstanding_balance",
    "churn_prob",
    "credit_grade",
    "margin_365d",
    "cost_to_serve_365d",
    "as_of",
)
#: Components that can be missing for a customer, in the order ``missing_components`` lists them.
COMPONENTS: tuple[str, ...] = ("current_value", "clv", "credit", "churn", "propensity")


class ActionCode(StrEnum):
    """Stable action codes; a CRM front end may key on them."""

    DEVELOP_AND_RETAIN = "develop_and_retain"
    KEEP_COST_LOW = "keep_cost_low"
    REDUCE_COST_TO_SERVE = "reduce_cost_to_serve"
    STOP_INVESTING = "stop_investing"
    REVIEW_STRATEGIC_ACCOUNT = "review_strategic_account"
    REQUIRE_PREPAYMENT = "require_prepayment"
    CREDIT_REVIEW = "credit_review"
    RETENTION_OFFER = "retention_offer"
    CROSS_SELL = "cross_sell"


# Quadrant -> primary action and what it means (Buttle 2009, ch. 5: unprofitable customers are
# rarely dropped outright; service is reduced, channels cheapened or prices raised).
PRIMARY: dict[Quadrant, tuple[ActionCode, str]] = {
    Quadrant.INVEST: (
        ActionCode.DEVELOP_AND_RETAIN,
        "develop the relationship (account management, cross-sell, up-sell) and retain it",
    ),
    Quadrant.NURTURE: (
        ActionCode.KEEP_COST_LOW,
        "keep the cost to serve low and protect the margin",
    ),
    Quadrant.RE_ENGINEER: (
        ActionCode.REDUCE_COST_TO_SERVE,
        "lower the cost to serve, e.g. move to cheaper channels (web, self-service) "
        "and cut costly service, to make the potential pay",
    ),
    Quadrant.SACK: (
        ActionCode.STOP_INVESTING,
        "stop investing: reprice or reduce the service level; end the relationship only "
        "after review",
    ),
}
_QUADRANT_TITLE = {
    Quadrant.INVEST: "Invest",
    Quadrant.NURTURE: "Nurture",
    Quadrant.RE_ENGINEER: "Re-engineer",
    Quadrant.SACK: "Sack",
}


def output_columns(policy: Policy) -> list[str]:
    """Columns :func:`assign_portfolio` adds to a scores frame, in order."""
    return [
        "credit_exposure",
        "expected_credit_loss",
        "future_potential",
        "currently_profitable",
        "high_potential",
        "quadrant",
        "flag_high_value",
        *[f.output_column for f in policy.flags],
        "strategically_significant",
        "top_category",
        "top_propensity",
        "primary_action",
        "action_codes",
        "actions",
        "missing_components",
        "policy_version",
        "current_value_cutoff",
        "future_potential_cutoff",
        "high_value_cutoff",
    ]


# --- value ---------------------------------------------------------------------------------


def compute_expected_credit_loss(
    default_prob: npt.ArrayLike, outstanding_balance: npt.ArrayLike, loss_given_default: float
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Expected credit loss EL = PD x EAD x LGD, the Basel decomposition.

    Parameters
    ----------
    default_prob : array of shape (n,)
        Probability of default over the horizon; NaN when the customer has no credit score.
    outstanding_balance : array of shape (n,)
        Open invoice amount at as-of, currency; NaN when the customer has no invoices.
        A negative balance (credit notes) is no exposure: EAD = max(balance, 0).
    loss_given_default : float
        Share of the exposure lost in default, 0 to 1.

    Returns
    -------
    exposure, expected_credit_loss : arrays of shape (n,), currency
        Both 0 where the credit component is missing.
    credit_missing : bool array of shape (n,)
        True where ``default_prob`` or ``outstanding_balance`` is NaN.
    """
    pd_ = np.asarray(default_prob, dtype=np.float64)
    balance = np.asarray(outstanding_balance, dtype=np.float64)
    missing = np.isnan(pd_) | np.isnan(balance)
    exposure = np.where(missing, 0.0, np.maximum(np.nan_to_num(balance), 0.0))
    loss = np.where(missing, 0.0, np.nan_to_num(pd_) * exposure * loss_given_default)
    return exposure, loss, missing


@dataclass(frozen=True)
class _Scores:
    """The columns the rules read, as arrays of length n (NaN where missing)."""

    current_value: FloatArray
    clv: FloatArray
    default_prob: FloatArray
    outstanding_balance: FloatArray
    churn_prob: FloatArray
    propensity: FloatArray  # (n, k)
    categories: tuple[str, ...]
    credit_grade: ObjectArray | None
    attributes: Mapping[str, npt.NDArray[Any]]

    @property
    def n(self) -> int:
        return int(self.clv.shape[0])


def _float_column(scores: pd.DataFrame, column: str) -> FloatArray:
    if column not in scores.columns:
        return np.full(len(scores), np.nan)
    try:
        return scores[column].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise ValueError(
            f"scores column {column!r} must be numeric; got dtype {scores[column].dtype}"
        ) from None


def _check_columns(scores: pd.DataFrame) -> None:
    derivable = {"margin_365d", "cost_to_serve_365d"} <= set(scores.columns)
    missing = [
        c
        for c in REQUIRED_COLUMNS
        if c not in scores.columns and not (c == "current_value" and derivable)
    ]
    if missing:
        raise ValueError(
            f"scores frame lacks required column(s) {', '.join(map(repr, missing))}; a scores "
            f"frame needs {', '.join(REQUIRED_COLUMNS)} (current_value may instead come from "
            "margin_365d and cost_to_serve_365d)"
        )


def _scores_from_frame(scores: pd.DataFrame, flags: Sequence[CompanyFlag]) -> _Scores:
    _check_columns(scores)
    if "current_value" in scores.columns:
        current_value = _float_column(scores, "current_value")
    else:
        current_value = _float_column(scores, "margin_365d") - _float_column(
            scores, "cost_to_serve_365d"
        )
    categories = tuple(
        c[len(PROPENSITY_PREFIX) :] for c in scores.columns if str(c).startswith(PROPENSITY_PREFIX)
    )
    propensity = (
        np.column_stack([_float_column(scores, PROPENSITY_PREFIX + c) for c in categories])
        if categories
        else np.empty((len(scores), 0))
    )
    attributes = {}
    for flag in flags:
        if flag.column in scores.columns:
            attributes[flag.column] = scores[flag.column].to_numpy()
        else:
            logger.warning(
                "flag %r: column %r is not in the scores; the flag is False for every customer",
                flag.name,
                flag.column,
            )
    grade = scores["credit_grade"].to_numpy(dtype=object) if "credit_grade" in scores else None
    return _Scores(
        current_value=current_value,
        clv=_float_column(scores, "clv"),
        default_prob=_float_column(scores, "default_prob"),
        outstanding_balance=_float_column(scores, "outstanding_balance"),
        churn_prob=_float_column(scores, "churn_prob"),
        propensity=propensity,
        categories=categories,
        credit_grade=grade,
        attributes=attributes,
    )


def _number(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    if value is None or value is pd.NA:
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number; got {value!r}") from None


def _scores_from_record(record: Mapping[str, Any], flags: Sequence[CompanyFlag]) -> _Scores:
    if "current_value" in record:
        current_value = _number(record, "current_value")
    elif "margin_365d" in record and "cost_to_serve_365d" in record:
        current_value = _number(record, "margin_365d") - _number(record, "cost_to_serve_365d")
    else:
        raise ValueError(
            "customer record lacks 'current_value' (or margin_365d and cost_to_serve_365d)"
        )
    if "clv" not in record:
        raise ValueError("customer record lacks 'clv'")
    categories = tuple(
        k[len(PROPENSITY_PREFIX) :] for k in record if k.startswith(PROPENSITY_PREFIX)
    )
    grade = record.get("credit_grade")
    return _Scores(
        current_value=np.array([current_value]),
        clv=np.array([_number(record, "clv")]),
        default_prob=np.array([_number(record, "default_prob")]),
        outstanding_balance=np.array([_number(record, "outstanding_balance")]),
        churn_prob=np.array([_number(record, "churn_prob")]),
        propensity=np.array([[_number(record, PROPENSITY_PREFIX + c) for c in categories]]),
        categories=categories,
        credit_grade=np.array([grade], dtype=object) if "credit_grade" in record else None,
        attributes={f.column: np.array([record[f.column]]) for f in flags if f.column in record},
    )


def compute_value(scores: pd.DataFrame, loss_given_default: float) -> pd.DataFrame:
    """Every component of current value and future potential, one row per customer.

    Parameters
    ----------
    scores : DataFrame
        A scores frame (see ``REQUIRED_COLUMNS``; ``default_prob`` and
        ``outstanding_balance`` are used when present).
    loss_given_default : float
        Share of the exposure lost in default, 0 to 1 (``Policy.loss_given_default``).

    Returns
    -------
    DataFrame, same index
        ``current_value``, ``clv``, ``default_prob``, ``outstanding_balance``,
        ``credit_exposure``, ``expected_credit_loss``, ``future_potential`` (currency and
        probabilities) and ``credit_missing`` (bool).
    """
    s = _scores_from_frame(scores, flags=())
    exposure, loss, credit_missing = compute_expected_credit_loss(
        s.default_prob, s.outstanding_balance, loss_given_default
    )
    return pd.DataFrame(
        {
            "current_value": s.current_value,
            "clv": s.clv,
            "default_prob": s.default_prob,
            "outstanding_balance": s.outstanding_balance,
            "credit_exposure": exposure,
            "expected_credit_loss": loss,
            "future_potential": s.clv - loss,
            "credit_missing": credit_missing,
        },
        index=scores.index,
    )


# --- cut-offs and quadrants -----------------------------------------------------------------


def resolve_cutoffs(policy: Policy, scores: pd.DataFrame) -> Cutoffs:
    """Turn the policy's portfolio-relative cut-offs into numbers computed on ``scores``.

    ``"median"`` is the median of future potential over the customers whose future potential
    is known; the high-value cut-off is its ``high_value_quantile`` (numpy's linear
    interpolation). Numeric cut-offs are kept as they are.

    Raises
    ------
    ValueError
        A cut-off needs the portfolio but no customer has a known future potential.
    """
    value = compute_value(scores, policy.loss_given_default)
    potential = value["future_potential"].to_numpy()
    known = potential[~np.isnan(potential)]
    if known.size == 0:
        raise ValueError(
            f"cannot resolve the portfolio cut-offs of policy {policy.label}: no customer has a "
            f"known future potential (clv is missing for all {len(scores)} customers)"
        )
    median = float(np.median(known))

    def resolve(x: float | str) -> float:
        return median if isinstance(x, str) else float(x)

    as_of: date | None = None
    if "as_of" in scores.columns and scores["as_of"].notna().any():
        as_of = pd.Timestamp(scores["as_of"].max()).date()
    return Cutoffs(
        policy_name=policy.name,
        policy_version=policy.version,
        current_value=policy.current_value_cutoff,
        future_potential=resolve(policy.future_potential_cutoff),
        high_value=float(np.quantile(known, policy.high_value_quantile)),
        retention_min_future_potential=resolve(policy.retention_min_future_potential),
        n_customers=len(scores),
        as_of=as_of,
    )


def assign_quadrant(
    current_value: npt.ArrayLike,
    future_potential: npt.ArrayLike,
    current_value_cutoff: float,
    future_potential_cutoff: float,
) -> ObjectArray:
    """Buttle's quadrant per customer: exactly one of invest, nurture, re-engineer, sack.

    Currently profitable means ``current_value > current_value_cutoff``; high potential means
    ``future_potential > future_potential_cutoff``. A value exactly at its cut-off, and a
    missing value (NaN), counts as not profitable / low potential.

    Parameters
    ----------
    current_value, future_potential : arrays of shape (n,), currency
    current_value_cutoff, future_potential_cutoff : float, currency

    Returns
    -------
    object array of shape (n,) holding the quadrant names.
    """
    index = _quadrant_index(
        current_value, future_potential, current_value_cutoff, future_potential_cutoff
    )
    return np.asarray(QUADRANTS, dtype=object)[index]


def _quadrant_index(
    current_value: npt.ArrayLike,
    future_potential: npt.ArrayLike,
    current_value_cutoff: float,
    future_potential_cutoff: float,
) -> npt.NDArray[np.intp]:
    """Index into QUADRANTS: 2 x (not profitable) + (not high potential)."""
    cv = np.asarray(current_value, dtype=np.float64)
    fp = np.asarray(future_potential, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low_now = ~(cv > current_value_cutoff)
        low_later = ~(fp > future_potential_cutoff)
    return (2 * low_now + low_later).astype(np.intp)


# --- formatting helpers ----------------------------------------------------------------------
# Reasons and the JSON of actions are built column-wise: one str.join per action and customer
# over pre-formatted columns, instead of a json.dumps of nested dicts per customer (3x faster).
# A reason is given in pieces and written into its JSON string as it is joined, instead of
# built as a string first and escaped again (a third of the placement's time at 100k rows).
# The per-row pieces are JSON-safe as made: numbers (_money, _pct) and fixed English text,
# or text from the data escaped once per distinct value (_escaped).

#: a reason's text: constants (escaped when written) and per-row columns already JSON-safe
Text = Sequence["str | ObjectArray"]


def _money(x: FloatArray) -> ObjectArray:
    """Currency for reasons: ``1,234`` (whole units), ``unknown`` for NaN."""
    return _objects(["unknown" if v != v else f"{v:,.0f}" for v in x.tolist()])


def _pct(x: FloatArray) -> ObjectArray:
    return _objects([f"{v:.1%}" for v in x.tolist()])


def _esc(text: str) -> str:
    """``text`` escaped for the inside of a JSON string."""
    return str(encode_basestring(text)[1:-1])


def _escaped(values: npt.NDArray[Any]) -> ObjectArray:
    """Text from the data (category names) escaped for the inside of a JSON string, each
    distinct value once."""
    texts = values.astype(str).tolist()
    escaped = {t: _esc(t) for t in set(texts)}
    return _objects([escaped[t] for t in texts])


def _objects(values: list[Any]) -> ObjectArray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _json_numbers(x: FloatArray) -> list[str]:
    """JSON numbers in the shortest form that reads back as the same float; NaN and inf -> null.

    Arrow's cast writes them (``100``, ``1.5e-7``) four times faster than ``repr`` (``100.0``,
    ``1.5e-07``), which was a quarter of the placement's time; both are valid JSON numbers of
    the same value.
    """
    finite = np.isfinite(x)
    text: list[str] = pc.cast(pa.array(x, mask=~finite), pa.string()).to_pylist()
    if not finite.all():
        text = [t if t is not None else "null" for t in text]
    return text


def _json_strings(values: npt.NDArray[Any]) -> list[str]:
    """JSON strings; None and NA -> null."""
    return [
        "null" if v is None or v is pd.NA or v != v else encode_basestring(str(v))
        for v in values.tolist()
    ]


@dataclass(frozen=True)
class _Encoded:
    values: ObjectArray  # JSON text per row


def _action_json(code: str, reason: Text, evidence: Mapping[str, Any]) -> list[str]:
    """JSON objects ``{"code", "reason", "evidence"}``, one per row of the ``reason`` pieces.

    An evidence value is a float array (numbers), another array (text), an array already
    encoded (:class:`_Encoded`) or a scalar shared by every row.
    """
    columns: list[list[str] | str] = ['{"code":' + encode_basestring(code) + ',"reason":"']
    columns += [_esc(piece) if isinstance(piece, str) else piece.tolist() for piece in reason]
    columns.append('","evidence":{')
    for i, (key, value) in enumerate(evidence.items()):
        columns.append(("," if i else "") + encode_basestring(key) + ":")
        if isinstance(value, _Encoded):
            columns.append(value.values.tolist())
        elif isinstance(value, np.ndarray):
            columns.append(
                _json_numbers(value) if value.dtype.kind == "f" else _json_strings(value)
            )
        else:
            columns.append(json.dumps(value))
    columns.append("}}")
    merged: list[list[str] | str] = []  # adjacent constants glued: fewer pieces per row
    for c in columns:
        if isinstance(c, str) and merged and isinstance(merged[-1], str):
            merged[-1] += c
        else:
            merged.append(c)
    pieces = (repeat(c) if isinstance(c, str) else c for c in merged)
    return ["".join(t) for t in zip(*pieces, strict=False)]  # constants repeat endlessly


def _join(
    parts: Sequence[tuple[BoolArray, Sequence[str]]], n: int, sep: str, *, prefix: str = "", suffix: str = ""
) -> ObjectArray:
    """Per row, join the pieces whose mask is True, in the order of ``parts``, between
    ``prefix`` and ``suffix`` (added here, not by another pass over n long strings)."""
    rows = np.concatenate([np.flatnonzero(m) for m, _ in parts] + [np.empty(0, np.intp)])
    texts = [t for _, pieces in parts for t in pieces]
    order = np.argsort(rows, kind="stable")  # stable: within a row, keep the order of parts
    texts = [texts[i] for i in order.tolist()]
    bounds = np.searchsorted(rows[order], np.arange(n + 1)).tolist()
    if prefix or suffix:
        return _objects([prefix + sep.join(texts[a:b]) + suffix for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    return _objects([sep.join(texts[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def _describe(
    unknown: BoolArray,
    above: BoolArray,
    if_unknown: str,
    if_above: Callable[[BoolArray], ObjectArray],
    if_not: Callable[[BoolArray], ObjectArray],
) -> ObjectArray:
    """Per row: ``if_unknown`` where ``unknown``, else ``if_above(rows)`` where ``above``, else
    ``if_not(rows)``; each text is built only for the rows it describes, not for all n."""
    out = np.empty(unknown.shape[0], dtype=object)
    out[unknown] = if_unknown
    up = above & ~unknown
    down = ~above & ~unknown
    out[up] = if_above(up)
    out[down] = if_not(down)
    return out


def _flag_names(
    flags: Mapping[str, BoolArray], rows: BoolArray, sep: str, *, quote: bool
) -> ObjectArray:
    """Per selected row, the names of the flags it has, joined by ``sep``: JSON strings when
    ``quote``, else escaped for the inside of one (a reason's piece)."""
    parts = []
    for name, mask in flags.items():
        m = mask[rows]
        parts.append((m, [encode_basestring(name) if quote else _esc(name)] * int(m.sum())))
    return _join(parts, int(rows.sum()), sep)


def _flag_mask(values: npt.NDArray[Any], equals: bool | int | float | str) -> BoolArray:
    if values.dtype.kind in "biufU":
        return np.asarray(values == equals, dtype=bool)
    return pd.Series(values, dtype=object).eq(equals).fillna(False).to_numpy(dtype=bool)


# --- the rules -------------------------------------------------------------------------------


def _evaluate(s: _Scores, policy: Policy, cutoffs: Cutoffs) -> dict[str, Any]:
    """All output columns as arrays of length n (the one implementation of the rules)."""
    n = s.n
    exposure, loss, credit_missing = compute_expected_credit_loss(
        s.default_prob, s.outstanding_balance, policy.loss_given_default
    )
    potential = s.clv - loss
    with np.errstate(invalid="ignore"):
        profitable = s.current_value > cutoffs.current_value
        high = potential > cutoffs.future_potential
        high_value = potential >= cutoffs.high_value
    q_index = _quadrant_index(
        s.current_value, potential, cutoffs.current_value, cutoffs.future_potential
    )
    quadrant = np.asarray(QUADRANTS, dtype=object)[q_index]

    # Strategically significant customers (Buttle): high lifetime value + company-set flags.
    flags: dict[str, BoolArray] = {"high_value": high_value}
    for flag in policy.flags:
        values = s.attributes.get(flag.column)
        flags[flag.name] = (
            np.zeros(n, dtype=bool) if values is None else _flag_mask(values, flag.equals)
        )
    significant = np.logical_or.reduce(list(flags.values()))

    # Top propensity category; ties go to the first category in column order.
    known_prop = ~np.isnan(s.propensity)
    has_prop: BoolArray = np.asarray(known_prop.any(axis=1), dtype=bool)  # all False if k = 0
    top_prop: FloatArray
    top_cat: ObjectArray
    if s.propensity.shape[1]:
        best = np.argmax(np.where(known_prop, s.propensity, -np.inf), axis=1)
        top_prop = np.where(has_prop, s.propensity[np.arange(n), best], np.nan)
        top_cat = np.asarray(s.categories, dtype=object)[best]
        top_cat[~has_prop] = None
    else:
        top_prop = np.full(n, np.nan)
        top_cat = np.full(n, None, dtype=object)

    missing = {
        "current_value": np.isnan(s.current_value),
        "clv": np.isnan(s.clv),
        "credit": credit_missing,
        "churn": np.isnan(s.churn_prob),
        "propensity": ~has_prop,
    }
    missing_text = _join([(m, [name] * int(m.sum())) for name, m in missing.items()], n, ";")

    actions: list[tuple[BoolArray, list[str]]] = []
    codes: list[tuple[BoolArray, list[str]]] = []

    def add(code: ActionCode, mask: BoolArray, reason: Text, evidence: dict) -> None:
        if not mask.any():
            return
        actions.append((mask, _action_json(code.value, reason, evidence)))
        codes.append((mask, [code.value] * int(mask.sum())))

    # 1. Primary action of the quadrant.
    cv_s, fp_s = _money(s.current_value), _money(potential)
    cut_cv, cut_fp = f"{cutoffs.current_value:,.0f}", f"{cutoffs.future_potential:,.0f}"
    now = _describe(
        np.isnan(s.current_value),
        profitable,
        "current value unknown, so not shown to be profitable",
        lambda m: "currently profitable (current value " + cv_s[m] + " > cut-off " + cut_cv + ")",
        lambda m: "not currently profitable (current value " + cv_s[m] + " <= cut-off " + cut_cv + ")",
    )
    later = _describe(
        np.isnan(potential),
        high,
        "future potential unknown (no CLV), so not shown to be high",
        lambda m: "high future potential (risk-adjusted CLV " + fp_s[m] + " > cut-off " + cut_fp + ")",
        lambda m: "low future potential (risk-adjusted CLV " + fp_s[m] + " <= cut-off " + cut_fp + ")",
    )
    primary = np.empty(n, dtype=object)
    for q, (code, advice) in PRIMARY.items():
        mask = q_index == QUADRANTS.index(q.value)
        primary[mask] = code.value
        add(
            code,
            mask,
            [_QUADRANT_TITLE[q] + ": ", now[mask], " and ", later[mask], "; " + advice + "."],
            {
                "quadrant": q.value,
                "current_value": s.current_value[mask],
                "current_value_cutoff": cutoffs.current_value,
                "future_potential": potential[mask],
                "future_potential_cutoff": cutoffs.future_potential,
                "clv": s.clv[mask],
                "expected_credit_loss": loss[mask],
            },
        )

    # 2. Strategically significant customers whose quadrant says cut back: look first.
    cut_back = q_index >= QUADRANTS.index(Quadrant.RE_ENGINEER.value)  # re-engineer or sack
    mask = significant & cut_back
    names = _flag_names(flags, mask, ", ", quote=False)
    add(
        ActionCode.REVIEW_STRATEGIC_ACCOUNT,
        mask,
        [
            "Strategically significant (",
            names,
            "): review the account before reducing service or investment.",
        ],
        {
            "quadrant": quadrant[mask],
            "flags": _Encoded("[" + _flag_names(flags, mask, ",", quote=True) + "]"),
        },
    )

    # 3. Credit risk: prepayment above the higher threshold, else a credit review.
    with np.errstate(invalid="ignore"):
        prepay = s.default_prob >= policy.prepayment_default_prob
        review = (s.default_prob >= policy.credit_review_default_prob) & ~prepay
    for code, mask, threshold, advice in (
        (
            ActionCode.REQUIRE_PREPAYMENT,
            prepay,
            policy.prepayment_default_prob,
            "require prepayment (or cash on delivery) for new orders and chase the open balance",
        ),
        (
            ActionCode.CREDIT_REVIEW,
            review,
            policy.credit_review_default_prob,
            "review the credit limit and payment terms",
        ),
    ):
        add(
            code,
            mask,
            [
                "Default risk ",
                _pct(s.default_prob[mask]),
                f" >= {threshold:.1%}; open balance ",
                _money(s.outstanding_balance[mask]),
                ", expected credit loss ",
                _money(loss[mask]),
                ": " + advice + ".",
            ],
            {
                "default_prob": s.default_prob[mask],
                "threshold": threshold,
                "outstanding_balance": s.outstanding_balance[mask],
                "expected_credit_loss": loss[mask],
                "credit_grade": None if s.credit_grade is None else s.credit_grade[mask],
            },
        )

    # 4. Retention offer: churn risk high and the customer worth keeping.
    with np.errstate(invalid="ignore"):
        mask = (s.churn_prob >= policy.retention_churn_prob) & (
            potential >= cutoffs.retention_min_future_potential
        )
    floor = cutoffs.retention_min_future_potential
    add(
        ActionCode.RETENTION_OFFER,
        mask,
        [
            "Churn risk ",
            _pct(s.churn_prob[mask]),
            f" >= {policy.retention_churn_prob:.1%} and future potential ",
            _money(potential[mask]),
            f" >= {floor:,.0f} is worth keeping: make a retention offer.",
        ],
        {
            "churn_prob": s.churn_prob[mask],
            "threshold": policy.retention_churn_prob,
            "future_potential": potential[mask],
            "min_future_potential": floor,
        },
    )

    # 5. Cross-sell the top category (enhancement, Kalakota & Robinson).
    allowed = np.isin(q_index, [QUADRANTS.index(q.value) for q in policy.cross_sell_quadrants])
    with np.errstate(invalid="ignore"):
        mask = allowed & (top_prop >= policy.cross_sell_min_propensity)
    cats = top_cat[mask]
    cat_text = _escaped(cats)
    add(
        ActionCode.CROSS_SELL,
        mask,
        [
            "Propensity to buy ",
            cat_text,
            " ",
            _pct(top_prop[mask]),
            f" >= {policy.cross_sell_min_propensity:.1%}: offer ",
            cat_text,
            ".",
        ],
        {
            "category": cats,
            "propensity": top_prop[mask],
            "threshold": policy.cross_sell_min_propensity,
        },
    )

    out: dict[str, Any] = {
        "credit_exposure": exposure,
        "expected_credit_loss": loss,
        "future_potential": potential,
        "currently_profitable": profitable,
        "high_potential": high,
        "quadrant": quadrant,
        "flag_high_value": high_value,
    }
    for flag in policy.flags:
        out[flag.output_column] = flags[flag.name]
    out.update(
        {
            "strategically_significant": significant,
            "top_category": top_cat,
            "top_propensity": top_prop,
            "primary_action": primary,
            "action_codes": _join(codes, n, ";"),
            "actions": _join(actions, n, ",", prefix="[", suffix="]"),
            "missing_components": missing_text,
            "policy_version": np.full(n, cutoffs.label, dtype=object),
            "current_value_cutoff": np.full(n, cutoffs.current_value),
            "future_potential_cutoff": np.full(n, cutoffs.future_potential),
            "high_value_cutoff": np.full(n, cutoffs.high_value),
        }
    )
    return out


def _check_cutoffs(policy: Policy, cutoffs: Cutoffs) -> None:
    if cutoffs.label != policy.label:
        raise ValueError(
            f"the cut-offs were resolved for policy {cutoffs.label} but the policy is "
            f"{policy.label}; resolve them again with resolve_cutoffs(policy, scores)"
        )


def assign_portfolio(
    scores: pd.DataFrame, policy: Policy, cutoffs: Cutoffs | None = None
) -> pd.DataFrame:
    """Place every customer in the portfolio: value, quadrant, flags and ordered actions.

    Parameters
    ----------
    scores : DataFrame, one row per customer
        Needs ``customer_id``, ``current_value`` (or ``margin_365d`` and
        ``cost_to_serve_365d``) and ``clv``; uses ``default_prob``, ``outstanding_balance``,
        ``churn_prob``, ``propensity_<category>``, ``credit_grade`` and the policy's flag
        columns when present. NaN marks a missing component.
    policy : Policy
    cutoffs : Cutoffs, optional
        Resolved cut-offs, e.g. those stored by the last batch; default: resolved on
        ``scores`` with :func:`resolve_cutoffs`.

    Returns
    -------
    DataFrame
        ``scores`` (same index and columns; ``current_value`` added when derived) followed by
        :func:`output_columns`: ``quadrant`` (categorical), ``actions`` (a JSON list of
        ``{code, reason, evidence}``), ``primary_action``, ``action_codes`` (``;``-joined),
        ``missing_components`` (``;``-joined, empty when complete), ``policy_version`` and
        the resolved cut-offs.
    """
    if cutoffs is None:
        cutoffs = resolve_cutoffs(policy, scores)
    _check_cutoffs(policy, cutoffs)
    s = _scores_from_frame(scores, policy.flags)
    out = _evaluate(s, policy, cutoffs)
    out["quadrant"] = pd.Categorical(out["quadrant"], categories=list(QUADRANTS))
    added = pd.DataFrame(out, index=scores.index)
    kept = scores.drop(columns=[c for c in added.columns if c in scores.columns])
    if "current_value" not in kept.columns:
        kept = kept.assign(current_value=s.current_value)
    return pd.concat([kept, added], axis=1)


def assess_customer(record: Mapping[str, Any], policy: Policy, cutoffs: Cutoffs) -> dict[str, Any]:
    """One customer's portfolio placement, from a mapping of scores (the API's fast path).

    Same rules and output as :func:`assign_portfolio` (a parity test holds them equal), without
    building a frame: a scores record in, plain Python values out, ``actions`` as a list of
    ``{code, reason, evidence}`` dicts.

    Parameters
    ----------
    record : mapping
        Column name -> value for one customer, as in a row of the scores frame; None or NaN
        marks a missing component.
    policy : Policy
    cutoffs : Cutoffs
        Resolved on a portfolio, e.g. read from the last batch's ``cutoffs.json``.
    """
    _check_cutoffs(policy, cutoffs)
    s = _scores_from_record(record, policy.flags)
    out = _evaluate(s, policy, cutoffs)
    result: dict[str, Any] = {
        "customer_id": record.get("customer_id"),
        "current_value": _scalar(s.current_value[0]),
        "clv": _scalar(s.clv[0]),
    }
    for key, values in out.items():
        result[key] = _scalar(values[0])
    result["actions"] = json.loads(result["actions"])
    return result


def _scalar(value: Any) -> Any:
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.floating | float):
        return None if np.isnan(value) else float(value)
    return value


# --- demo data -------------------------------------------------------------------------------


def make_demo_scores(
    n_customers: int = 1_000,
    random_state: int = 0,
    *,
    as_of: date = date(2024, 10, 1),
    horizon_days: int = 90,
) -> pd.DataFrame:
    """A made-up scores frame with the batch-scoring columns, for the notebook and docs.

    Not model output: heavy-tailed margins (lognormal), activity-based cost to serve that
    makes some customers unprofitable, CLV as the present value of the expected margin per
    horizon with retention ``1 - churn_prob`` at 10% a year, credit scores only for customers
    buying on account (NaN otherwise), and a few reference accounts.
    """
    rng = np.random.default_rng(random_state)
    n = n_customers
    b2b = rng.random(n) < 0.2
    margin_365d = rng.lognormal(np.where(b2b, 6.5, 4.5), 1.1)
    cost_to_serve = margin_365d * rng.beta(2.0, 5.0, n) + rng.gamma(1.5, np.where(b2b, 300.0, 25.0))
    churn = rng.beta(1.2, 2.5, n)
    per_horizon = margin_365d * horizon_days / 365.25 * rng.lognormal(0.0, 0.4, n) * (1 - churn)
    discount = 1.10 ** (horizon_days / 365.25) - 1
    clv = per_horizon * (1 + discount) / (discount + churn)
    on_account = b2b | (rng.random(n) < 0.25)
    default_prob = np.where(on_account, rng.beta(0.6, 10.0, n), np.nan)
    balance = np.where(on_account, margin_365d * rng.gamma(1.0, 0.8, n), np.nan)
    odds = np.clip(default_prob, 0.002, 0.5) / (1 - np.clip(default_prob, 0.002, 0.5))
    points = np.round(600 - 40 * np.log2(odds / 0.05))  # 600 points at 1:20 odds, 40 per doubling
    grade = np.array(["D", "C", "B", "A"], dtype=object)[
        np.searchsorted([600, 660, 720], np.nan_to_num(points), side="right")
    ]
    frame = pd.DataFrame(
        {
            "customer_id": [f"D{i:06d}" for i in range(n)],
            "as_of": pd.Timestamp(as_of),
            "horizon_days": horizon_days,
            "segment": np.where(b2b, "B2B", "B2C"),
            "churn_prob": churn,
        }
    )
    categories = ("books", "electronics", "fashion", "grocery", "home", "sports")
    for j, c in enumerate(categories):
        frame[PROPENSITY_PREFIX + c] = rng.beta(0.4 + 0.1 * j, 5.0, n)
    frame = frame.assign(
        default_prob=default_prob,
        credit_points=np.where(on_account, points, np.nan),
        credit_grade=pd.array(np.where(on_account, grade, None), dtype="string"),
        expected_margin=per_horizon,
        clv=clv,
        margin_365d=margin_365d,
        cost_to_serve_365d=cost_to_serve,
        current_value=margin_365d - cost_to_serve,
        outstanding_balance=balance,
        is_reference_account=b2b & (rng.random(n) < 0.05),
    )
    return frame
