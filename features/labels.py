"""Labels of the four models at an as-of date T over a horizon of H days: pure functions.

Definitions (../shared/ARCHITECTURE.md, in the time convention of ``schema.py``: the past is
``ts < T``, the horizon is ``T <= ts < T + H``). The synthetic base's ground truth
(``synthetic.compute_truth``) is written to match them exactly, so change neither alone.

* ``label_churn``: for a customer with at least one purchase before T, 1 when they have
  no purchase in the horizon, else 0; NaN for a customer with no purchase before T
  (nobody can stop buying who never bought). A purchase is a transaction line that is not a
  return (``schema.py``): sending goods back is not buying.
* ``label_purchase_<category>``: 1 when the customer has a purchase of that product
  category in the horizon, else 0; every known customer.
* ``label_default`` (bases with invoices): for a customer with at least one invoice (not a
  credit note, ``schema.py``) issued before T, 1 when some invoice of theirs (issued at any
  time) reaches 90 days past due inside the horizon, i.e. ``due_date + 90 days`` lies in ``[T, T + H)`` and the invoice was
  not paid before that day (``paid_date`` empty or ``>= due_date + 90 days``); else 0.
  NaN for a customer without an invoice before T. 90+ days past due is the usual default
  event of behavioural credit scoring (Basel II, para. 452: "obligor is past due more than
  90 days"); Buttle rates customers from their payment history the same way.
* ``label_margin``: the sum of ``revenue - cost`` of the customer's transactions in the
  horizon, returns included (they take back margin), 0 when there are none; currency.

Every function works on arrays in *customer position space*: ``pos`` holds, per event, the
row of its customer in the snapshot (0 .. n_customers-1); times are int64 nanoseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import numpy as np

from crmscore.features.catalogue import FeatureSpec, category_slugs

#: days past due at which an unpaid invoice counts as a default
DEFAULT_DAYS_PAST_DUE = 90
NS_PER_DAY = 86_400 * 10**9
#: int64 value of NaT: how an unpaid invoice's paid_date reads as int64 nanoseconds
NAT_NS = np.iinfo(np.int64).min

HORIZON_WINDOW = "[T, T+H)"


def label_specs(categories: Sequence[str], *, has_invoices: bool) -> list[FeatureSpec]:
    """The label columns of a snapshot, in order.

    Parameters
    ----------
    categories : sequence of str
        The base's product categories (sorted); one purchase label each.
    has_invoices : bool
        Whether the base has an invoices table (else no ``label_default``).
    """
    specs = [
        FeatureSpec(
            "label_churn", "label",
            "1 = bought before T but nothing in the horizon; 0 = bought again; "
            "NaN = never bought before T",
            "0/1", HORIZON_WINDOW, "float64",
        )
    ]
    for category, slug in zip(categories, category_slugs(categories), strict=True):
        specs.append(
            FeatureSpec(
                f"label_purchase_{slug}", "label",
                f"1 = bought product category '{category}' in the horizon, else 0",
                "0/1", HORIZON_WINDOW, "int64",
            )
        )
    if has_invoices:
        specs.append(
            FeatureSpec(
                "label_default", "label",
                "1 = an invoice reaches 90 days past due unpaid in the horizon; 0 = none does; "
                "NaN = no invoice before T",
                "0/1", HORIZON_WINDOW, "float64", requires="invoices",
            )
        )
    specs.append(
        FeatureSpec(
            "label_margin", "label", "Margin (revenue - cost) of purchases in the horizon",
            "currency", HORIZON_WINDOW, "float64",
        )
    )
    return specs


def check_labels_observable(as_of: date, horizon_days: int, data_end: date) -> None:
    """Raise when the horizon ``[as_of, as_of + horizon_days)`` is not inside the data.

    Parameters
    ----------
    as_of : date
        The as-of date T.
    horizon_days : int
        H, days.
    data_end : date
        The end of the observed period (exclusive: the day after the last observed day).

    Raises
    ------
    ValueError
        Naming the end of the horizon and the end of the data.
    """
    horizon_end = as_of + timedelta(days=horizon_days)
    if horizon_end > data_end:
        raise ValueError(
            f"labels need the whole horizon observed: as_of {as_of.isoformat()} + "
            f"horizon_days {horizon_days} ends on {horizon_end.isoformat()}, after the end "
            f"of the data {data_end.isoformat()}; use an as_of on or before "
            f"{(data_end - timedelta(days=horizon_days)).isoformat()} or with_labels=False"
        )


def churn_label(past_pos: np.ndarray, horizon_pos: np.ndarray, n_customers: int) -> np.ndarray:
    """``label_churn`` per customer.

    Parameters
    ----------
    past_pos : ndarray of int, shape (n_past_lines,)
        Customer position of each purchase line before T (returns are not purchases).
    horizon_pos : ndarray of int, shape (n_horizon_lines,)
        Customer position of each purchase line in the horizon.
    n_customers : int

    Returns
    -------
    ndarray of float64, shape (n_customers,)
        1.0, 0.0 or NaN (no purchase before T).
    """
    active = np.bincount(past_pos, minlength=n_customers) > 0
    bought = np.bincount(horizon_pos, minlength=n_customers) > 0
    return np.where(active, (~bought).astype(np.float64), np.nan)


def purchase_labels(
    horizon_pos: np.ndarray, horizon_category: np.ndarray, n_customers: int, n_categories: int
) -> np.ndarray:
    """``label_purchase_<category>`` per customer and category.

    Parameters
    ----------
    horizon_pos, horizon_category : ndarray of int, shape (n_horizon_lines,)
        Customer position and category code (index into the category list, -1 for a
        category not in the list, ignored) of each purchase line in the horizon.

    Returns
    -------
    ndarray of int64, shape (n_customers, n_categories)
    """
    keep = horizon_category >= 0
    key = horizon_pos[keep] * n_categories + horizon_category[keep]
    counts = np.bincount(key, minlength=n_customers * n_categories)
    return (counts > 0).astype(np.int64).reshape(n_customers, n_categories)


def margin_label(horizon_pos: np.ndarray, horizon_margin: np.ndarray, n_customers: int) -> np.ndarray:
    """``label_margin``: sum of line margins in the horizon per customer, currency (float64)."""
    return np.bincount(horizon_pos, weights=horizon_margin, minlength=n_customers).astype(np.float64)


def default_label(
    pos: np.ndarray,
    issue_ns: np.ndarray,
    due_ns: np.ndarray,
    paid_ns: np.ndarray,
    n_customers: int,
    as_of_ns: int,
    horizon_days: int,
) -> np.ndarray:
    """``label_default`` per customer.

    Parameters
    ----------
    pos : ndarray of int, shape (n_invoices,)
        Customer position of every invoice of the known customers (issued at any time).
    issue_ns, due_ns : ndarray of int64, shape (n_invoices,)
        Issue and due dates, nanoseconds since the epoch.
    paid_ns : ndarray of int64, shape (n_invoices,)
        Payment date, or :data:`NAT_NS` for an invoice never paid.
    n_customers : int
    as_of_ns : int
        T, nanoseconds since the epoch.
    horizon_days : int
        H, days.

    Returns
    -------
    ndarray of float64, shape (n_customers,)
        1.0, 0.0 or NaN (no invoice issued before T).
    """
    invoiced = np.bincount(pos[issue_ns < as_of_ns], minlength=n_customers) > 0
    default_day = due_ns + DEFAULT_DAYS_PAST_DUE * NS_PER_DAY
    in_horizon = (default_day >= as_of_ns) & (default_day < as_of_ns + horizon_days * NS_PER_DAY)
    unpaid_then = (paid_ns == NAT_NS) | (paid_ns >= default_day)
    defaulted = np.bincount(pos[in_horizon & unpaid_then], minlength=n_customers) > 0
    return np.where(invoiced, defaulted.astype(np.float64), np.nan)
