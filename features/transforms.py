"""Point-in-time features of customers at an as-of date: one pure function, both engines.

:func:`compute_features` takes the tables of a set of customers (a chunk on the local
engine, a bucket on Spark) and returns one row per customer known at the as-of date T
(``signup_date < T``), computed from events strictly before T only; labels, when asked
for, come from the horizon ``[T, T+H)`` (``labels.py``). The time convention is that of
``schema.py``.

Conventions, the same in every family:

* counts and sums over an empty set are 0 (a customer with no purchases has zero activity);
* statistics that an empty set does not define (a recency, a mean, a share of nothing)
  are NaN, which tree models treat as "missing"; ``current_days_past_due`` is 0 without an
  open invoice, the convention of credit bureaus (nothing is past due);
* day differences from timestamps are fractional days; from calendar dates, whole days;
* an *order* is an ``order_id`` of the customer at one time (the lines of an order share its
  time; an id recorded at two times counts as two purchases);
* a *return* (a line with a negative revenue or cost, ``schema.py``) nets against revenue and
  margin, in every sum, share and the margin label; it is not a purchase: orders, recencies,
  line counts, category breadth and the churn and purchase labels read the other lines only;
* a *credit note* (an invoice with a negative amount) lowers the outstanding balance while it
  is open; every other payment feature and the default label read the invoices only.

The fast path works on numpy arrays in *customer position space* (each event carries the
row of its customer): sums and counts are ``np.bincount``, extremes ``np.maximum.at``,
inter-purchase gaps a stable sort per chunk. ``tests/features/test_transforms*.py`` holds a
slow, per-customer reference implementation the fast one is checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crmscore.features import labels as L
from crmscore.features.catalogue import FeatureSpec, category_slugs
from crmscore.features.schema import CUSTOMERS, INTERACTION_KINDS

NS_PER_DAY = L.NS_PER_DAY
NAT_NS = L.NAT_NS
#: trailing windows of the RFM family: name -> days (None = the whole past)
WINDOWS: tuple[tuple[str, int | None], ...] = (
    ("30d", 30),
    ("90d", 90),
    ("365d", 365),
    ("lifetime", None),
)
PROFILE_CATEGORICALS: tuple[str, ...] = ("segment", "region", "acquisition_channel")
#: days of recent payment history the days-late trend compares with the earlier history
PAYMENT_TREND_DAYS = 180
#: arrears buckets of open invoices, days past due (inclusive bounds; None = and above)
DPD_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 30), (31, 60), (61, 89), (90, None))
#: the columns of each event table that :func:`compute_features` reads
EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "transactions": ("customer_id", "ts", "order_id", "product_category", "revenue", "cost"),
    "invoices": ("customer_id", "issue_date", "due_date", "amount", "paid_date"),
    "interactions": ("customer_id", "ts", "kind", "cost_to_serve"),
}


# --- the catalogue ----------------------------------------------------------------------------


def _window_text(days: int | None) -> str:
    return "before T" if days is None else f"[T-{days}d, T)"


def _profile_specs() -> list[FeatureSpec]:
    names = {"segment": "Customer segment", "region": "Sales region",
             "acquisition_channel": "Channel the customer was acquired through"}
    specs = [FeatureSpec(c, "profile", names[c], "category", "at sign-up", "category")
             for c in PROFILE_CATEGORICALS]
    specs.append(FeatureSpec("tenure_days", "profile", "Days from sign-up to T",
                             "days", "before T", "int64"))
    # The season the horizon starts in: buying is seasonal, so the same record means a
    # different future in October than in March.
    specs.append(FeatureSpec("as_of_month", "profile", "Calendar month of T (1-12)",
                             "month", "at T", "int64"))
    return specs


def _rfm_specs() -> list[FeatureSpec]:
    specs = []
    for w, days in WINDOWS:
        win = _window_text(days)
        specs += [
            FeatureSpec(f"order_count_{w}", "rfm", "Number of distinct orders; returns are not orders",
                        "count", win, "int64"),
            FeatureSpec(f"revenue_{w}", "rfm", "Revenue of order lines; net of returns",
                        "currency", win, "float64"),
            FeatureSpec(f"margin_{w}", "rfm", "Margin (revenue - cost) of order lines; net of returns",
                        "currency", win, "float64"),
        ]
    specs += [
        FeatureSpec("days_since_last_purchase", "rfm",
                    "Recency: days from the last order to T; NaN without orders",
                    "days", "before T", "float64"),
        FeatureSpec("days_since_first_purchase", "rfm",
                    "Days from the first order to T; NaN without orders",
                    "days", "before T", "float64"),
        FeatureSpec("margin_per_order_365d", "rfm",
                    "Average margin of an order: margin_365d / order_count_365d; NaN without orders",
                    "currency", "[T-365d, T)", "float64"),
        FeatureSpec("margin_per_order_lifetime", "rfm",
                    "Average margin of an order: margin_lifetime / order_count_lifetime; NaN without orders",
                    "currency", "before T", "float64"),
    ]
    return specs


def _trend_specs() -> list[FeatureSpec]:
    return [
        FeatureSpec("revenue_prev_90d", "trend", "Revenue in the 90 days before the last 90",
                    "currency", "[T-180d, T-90d)", "float64"),
        FeatureSpec("revenue_trend_90d_ratio", "trend",
                    "(revenue_90d - revenue_prev_90d) / (revenue_90d + revenue_prev_90d): "
                    "+1 all recent, -1 all earlier; NaN when both are 0 (a window whose returns "
                    "outweigh its sales counts as 0)",
                    "ratio", "[T-180d, T)", "float64"),
        FeatureSpec("inter_purchase_mean_days", "trend",
                    "Mean days between consecutive orders; NaN with fewer than 2 orders",
                    "days", "before T", "float64"),
        FeatureSpec("inter_purchase_cv_ratio", "trend",
                    "Coefficient of variation (population std / mean) of the days between "
                    "orders, regularity of buying; NaN with fewer than 3 orders or a 0 mean",
                    "ratio", "before T", "float64"),
    ]


def _mix_specs(categories: Sequence[str]) -> list[FeatureSpec]:
    specs = [
        FeatureSpec(f"revenue_share_365d_{slug}", "product_mix",
                    f"Share of 365-day revenue in category '{cat}'; net of returns, within [0, 1]; "
                    "NaN without positive 365-day revenue",
                    "share", "[T-365d, T)", "float64")
        for cat, slug in zip(categories, category_slugs(categories), strict=True)
    ]
    for cat, slug in zip(categories, category_slugs(categories), strict=True):
        specs += [
            FeatureSpec(f"days_since_last_purchase_{slug}", "product_mix",
                        f"Days from the last order line in category '{cat}' to T; NaN without one",
                        "days", "before T", "float64"),
            FeatureSpec(f"line_count_365d_{slug}", "product_mix",
                        f"Order lines in category '{cat}'; returns not counted", "count", "[T-365d, T)", "int64"),
            # The whole history too: a customer's rate for a category (Fader-Hardie's
            # per-customer purchase rate, here per category) is read from every purchase of it,
            # and a year's window says little of a category bought every eighteen months.
            FeatureSpec(f"line_count_lifetime_{slug}", "product_mix",
                        f"Order lines in category '{cat}'; returns not counted", "count", "before T", "int64"),
        ]
    specs += [
        FeatureSpec("category_breadth_365d_count", "product_mix",
                    "Number of distinct product categories bought", "count", "[T-365d, T)", "int64"),
        FeatureSpec("category_breadth_lifetime_count", "product_mix",
                    "Number of distinct product categories bought", "count", "before T", "int64"),
    ]
    return specs


def _value_specs() -> list[FeatureSpec]:
    return [
        FeatureSpec("margin_rate_365d_share", "value",
                    "margin_365d / revenue_365d; NaN without positive 365-day revenue",
                    "share", "[T-365d, T)", "float64"),
        FeatureSpec("cost_to_serve_90d", "value",
                    "Activity-based cost to serve: sum of interaction costs",
                    "currency", "[T-90d, T)", "float64", requires="interactions"),
        FeatureSpec("cost_to_serve_365d", "value",
                    "Activity-based cost to serve: sum of interaction costs",
                    "currency", "[T-365d, T)", "float64", requires="interactions"),
        FeatureSpec("current_value_365d", "value",
                    "Current value (Buttle): margin_365d - cost_to_serve_365d",
                    "currency", "[T-365d, T)", "float64", requires="interactions"),
    ]


def _payment_specs() -> list[FeatureSpec]:
    inv = "invoices"
    paid = "invoices paid before T"
    return [
        FeatureSpec("invoice_count_365d", "payment", "Invoices issued; credit notes not counted", "count",
                    "[T-365d, T)", "int64", inv),
        FeatureSpec("invoice_count_lifetime", "payment", "Invoices issued; credit notes not counted", "count",
                    "before T", "int64", inv),
        FeatureSpec("open_invoice_count", "payment",
                    "Invoices issued before T and not paid before T", "count", "at T", "int64", inv),
        FeatureSpec("outstanding_balance", "payment",
                    "Amount of the open invoices; less the credit notes not yet applied",
                    "currency", "at T", "float64", inv),
        FeatureSpec("overdue_balance", "payment", "Amount of the open invoices past their due date",
                    "currency", "at T", "float64", inv),
        FeatureSpec("current_days_past_due", "payment",
                    "Largest days past due among open invoices; 0 without one",
                    "days", "at T", "int64", inv),
        *(FeatureSpec(f"open_dpd_{lo}_{hi}_count" if hi else f"open_dpd_{lo}_plus_count", "payment",
                      f"Open invoices {lo}" + (f"-{hi}" if hi else "+") + " days past due (arrears bucket)",
                      "count", "at T", "int64", inv)
          for lo, hi in DPD_BUCKETS),
        FeatureSpec("mean_days_late", "payment",
                    f"Mean days paid after the due date (0 if on time) over {paid}; NaN without one",
                    "days", "before T", "float64", inv),
        FeatureSpec("max_days_late", "payment",
                    f"Largest days paid after the due date over {paid}; NaN without one",
                    "days", "before T", "float64", inv),
        FeatureSpec("paid_late_share", "payment",
                    f"Share of {paid} that were paid after the due date; NaN without one",
                    "share", "before T", "float64", inv),
        FeatureSpec("days_late_trend", "payment",
                    f"Mean days late of invoices paid in the last {PAYMENT_TREND_DAYS} days minus "
                    "that of invoices paid earlier; NaN unless both exist",
                    "days", "before T", "float64", inv),
    ]


def _service_specs() -> list[FeatureSpec]:
    specs = []
    for kind in INTERACTION_KINDS:
        for w in ("90d", "365d"):
            specs.append(
                FeatureSpec(f"{kind}_count_{w}", "service", f"Interactions of kind '{kind}'",
                            "count", _window_text(int(w[:-1])), "int64", "interactions")
            )
    specs.append(
        FeatureSpec("days_since_last_complaint", "service",
                    "Days from the last complaint to T; NaN without complaints",
                    "days", "before T", "float64", "interactions")
    )
    return specs


def _attribute_specs(extras: Mapping[str, str]) -> list[FeatureSpec]:
    specs = []
    for column, kind in extras.items():
        if kind == "category":
            specs.append(FeatureSpec(column, "attributes", "Customer attribute, as given",
                                     "category", "at T", "category"))
        elif kind == "number":
            specs.append(FeatureSpec(column, "attributes", "Customer attribute, as given",
                                     "as given", "at T", "float64"))
        else:  # a date attribute becomes its distance to T
            specs.append(FeatureSpec(f"days_since_{column}", "attributes",
                                     f"Days from the customer attribute '{column}' to T "
                                     "(negative when after T)", "days", "at T", "float64"))
    return specs


def feature_specs(
    categories: Sequence[str],
    *,
    has_invoices: bool,
    has_interactions: bool,
    extras: Mapping[str, str] | None = None,
) -> list[FeatureSpec]:
    """The feature columns of a snapshot, in order (``customer_id`` and labels excluded).

    Parameters
    ----------
    categories : sequence of str
        The base's product categories, sorted.
    has_invoices, has_interactions : bool
        Whether the base has the optional tables; their families are absent otherwise.
    extras : mapping of str to str, optional
        Extra customer columns and their kind (:func:`extra_attributes`).

    Returns
    -------
    list of FeatureSpec
    """
    specs = _profile_specs() + _rfm_specs() + _trend_specs() + _mix_specs(categories)
    specs += _value_specs()
    specs += _payment_specs() + _service_specs()
    specs += _attribute_specs(extras or {})
    present = {"invoices": has_invoices, "interactions": has_interactions}
    specs = [s for s in specs if s.requires is None or present[s.requires]]
    names = [s.name for s in specs] + ["customer_id"]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(
            f"customer attribute(s) {', '.join(clashes)} have the name of a computed feature; "
            "rename them in the base"
        )
    return specs


def extra_attributes(customers: pd.DataFrame) -> dict[str, str]:
    """Kinds of the customer columns beyond the contract, passed through as features.

    Text and categorical columns are ``category``; numbers and booleans ``number`` (float64);
    dates and timestamps ``date`` (turned into ``days_since_<column>``).

    Raises
    ------
    ValueError
        For a column of another type (it cannot be a model feature as it is).
    """
    contract = set(CUSTOMERS.column_names)
    kinds: dict[str, str] = {}
    for column in customers.columns:
        if column in contract:
            continue
        dtype = customers[column].dtype
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
            kinds[column] = "number"
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            kinds[column] = "date"
        elif (pd.api.types.is_string_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype)):
            kinds[column] = "category"
        else:
            raise ValueError(
                f"customer attribute {column!r} has type {dtype}, which is not a feature: "
                "expected text, a number, a boolean or a date"
            )
    return kinds


def vocabulary(values: pd.Series) -> tuple[str, ...]:
    """Sorted distinct non-missing text values of a column: the levels of its categorical."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = pd.Series(values.cat.categories[np.unique(values.cat.codes[values.cat.codes >= 0])])
    distinct = pc.unique(_to_arrow(values)).drop_null()
    return tuple(sorted(str(v) for v in distinct.to_pylist()))


# --- encoding: from frames to arrays in customer position space -------------------------------


def _to_arrow(values: pd.Series) -> pa.Array | pa.ChunkedArray:
    array = values.array
    if hasattr(array, "__arrow_array__"):  # Arrow-backed (string[pyarrow]): no copy
        return array.__arrow_array__()
    return pa.array(values.to_numpy(), from_pandas=True)


#: run-length lookups pay off when at most this share of rows starts a new run
RUN_SHARE = 0.5


def _index_in(values: pd.Series, universe: pd.Series) -> np.ndarray:
    """Position of each value in ``universe`` (unique), -1 when absent or missing.

    Event logs are often grouped by customer (exported per account): runs of equal values
    are then looked up once each, after one cheap comparison of neighbours.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        # One lookup per category, then a gather by code.
        cat_pos = _index_in(pd.Series(values.cat.categories), universe)
        codes = values.cat.codes.to_numpy()
        return np.where(codes >= 0, cat_pos[np.maximum(codes, 0)] if cat_pos.size else -1, -1)
    n = len(values)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if pd.api.types.is_integer_dtype(values.dtype) and pd.api.types.is_integer_dtype(universe.dtype):
        dense = _dense_index_in(values.to_numpy(), universe.to_numpy())
        if dense is not None:
            return dense
    arr = _to_arrow(values)
    if pa.types.is_null(arr.type):
        return np.full(n, -1, dtype=np.int64)
    target = _to_arrow(universe)
    if target.type != arr.type:
        target = target.cast(arr.type)
    if isinstance(target, pa.ChunkedArray):
        target = target.combine_chunks()

    def lookup(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
        merged = _merge_index_in(a, target)
        if merged is not None:
            return merged
        found = pc.index_in(a, value_set=target).fill_null(-1)
        return found.to_numpy(zero_copy_only=False).astype(np.int64)

    starts = run_starts(arr) if n > 1024 else None
    if starts is not None and starts.size <= RUN_SHARE * n:
        return np.repeat(lookup(run_heads(arr, starts)), np.diff(np.append(starts, n)))
    return lookup(arr)


#: text ids of at most this many bytes can be compared as one 64-bit integer each
SHORT_KEY_BYTES = 8
#: values checked for order before a whole column is turned into integer keys
ORDER_PROBE = 1024


def short_keys(arr: pa.Array) -> np.ndarray | None:
    """Order-preserving integer keys of short text: uint64, or None when they do not exist.

    A value of at most :data:`SHORT_KEY_BYTES` bytes, zero-padded on the right and read as a
    big-endian word, compares as its bytes do (UTF-8 byte order is code-point order); a NUL
    byte inside a value would collide with the padding, so text with one has no keys, nor
    has a null, a longer value or a type other than (large) string.
    """
    large = pa.types.is_large_string(arr.type)
    if arr.null_count or not (large or pa.types.is_string(arr.type)):
        return None
    n = len(arr)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if large else np.int32)[arr.offset:arr.offset + n + 1]
    lengths = np.diff(offsets)
    width = int(lengths.max(initial=0))
    if width > SHORT_KEY_BYTES:
        return None
    data = (np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]] if n and data_buf is not None
            else np.empty(0, dtype=np.uint8))
    if not data.all():  # a NUL byte
        return None
    words = np.zeros((n, SHORT_KEY_BYTES), dtype=np.uint8)
    if n and bool((lengths == width).all()):  # fixed width, as zero-padded ids are: a reshape
        words[:, :width] = data.reshape(n, width)
    else:
        row = np.repeat(np.arange(n), lengths)
        words[row, np.arange(data.size) - (offsets[:-1] - offsets[0])[row]] = data
    return words.view(">u8").ravel().astype(np.uint64)


def _merge_index_in(values: pa.Array | pa.ChunkedArray, universe: pa.Array) -> np.ndarray | None:
    """:func:`_index_in`'s lookup as a merge, for short ids in order; None when it does not apply.

    A log grouped by customer lists its customers in order more often than not (exports
    sorted by account), and so does a customer table. For short ids in nondecreasing order,
    a binary search of each in the sorted universe walks memory forwards, where a hash table
    (Arrow's ``index_in``) waits on a cache miss per id: ~6x faster for 1M ids. A repeated
    id in ``universe`` gives its first position, as ``index_in`` does.
    """
    if len(values) == 0:
        return None
    head = values.chunk(0) if isinstance(values, pa.ChunkedArray) else values
    head_keys = short_keys(head.slice(0, ORDER_PROBE))
    if head_keys is None or bool(np.any(head_keys[1:] < head_keys[:-1])):
        return None  # not short, or out of order: told by the first values alone
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    keys = short_keys(values)
    if keys is None or bool(np.any(keys[1:] < keys[:-1])):
        return None
    target = short_keys(universe)
    if target is None:
        return None
    if target.size == 0:
        return np.full(keys.size, -1, dtype=np.int64)
    order = None
    if bool(np.any(target[1:] <= target[:-1])):  # not strictly increasing: sort it once
        order = np.argsort(target, kind="stable")
        target = target[order]
    at = np.minimum(np.searchsorted(target, keys), target.size - 1)
    found = target[at] == keys
    positions = at if order is None else order[at]
    return np.where(found, positions, -1).astype(np.int64, copy=False)


def run_starts(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Positions where a run of equal values starts (a null starts a run of its own)."""
    n = len(arr)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    same = pc.equal(arr.slice(1), arr.slice(0, n - 1)).fill_null(False)
    return np.flatnonzero(~np.concatenate(([False], same.to_numpy(zero_copy_only=False))))


def run_heads(arr: pa.Array | pa.ChunkedArray, starts: np.ndarray) -> pa.Array:
    """The first value of each run."""
    if isinstance(arr, pa.ChunkedArray):  # a take across many chunks is slow
        arr = arr.combine_chunks()
    return arr.take(pa.array(starts))


def _dense_index_in(values: np.ndarray, universe: np.ndarray) -> np.ndarray | None:
    """:func:`_index_in` for integer ids in a compact range (the local engine's codes): a
    lookup table, no hashing. None when the range is too sparse for a table."""
    if universe.size == 0:
        return np.full(values.size, -1, dtype=np.int64)
    lo, hi = int(universe.min()), int(universe.max())
    if hi - lo == universe.size - 1 and universe[0] == lo and bool(np.all(np.diff(universe) == 1)):
        # Consecutive codes lo, lo+1, ...: a position is the code minus lo.
        if lo == 0 and (values.size == 0 or (values.min() >= -1 and values.max() <= hi)):
            return values.astype(np.int64, copy=False)
        return np.where((values >= lo) & (values <= hi), values - lo, -1)
    if hi - lo > 8 * (values.size + universe.size) + 1024:
        return None
    table = np.full(hi - lo + 1, -1, dtype=np.int64)
    table[universe - lo] = np.arange(universe.size)
    inside = (values >= lo) & (values <= hi)
    return np.where(inside, table[np.where(inside, values - lo, 0)], -1)


def customer_positions(ids: pd.Series, customer_ids: pd.Series) -> np.ndarray:
    """Row of each event's customer in ``customer_ids``; -1 for customers not in it.

    Ids may be text (as in a base) or integer codes (as the local engine passes them).
    """
    return _index_in(ids, customer_ids)


def category_codes(values: pd.Series, categories: Sequence[str]) -> np.ndarray:
    """Index of each value in ``categories``; -1 for a category not in the list."""
    return _index_in(values, pd.Series(list(categories), dtype=object))


def to_ns(values: pd.Series) -> np.ndarray:
    """Datetimes as int64 nanoseconds since the epoch; NaT becomes :data:`NAT_NS`."""
    return values.to_numpy(dtype="datetime64[ns]").view(np.int64)


def as_of_ns(as_of: date) -> int:
    """The as-of date T (start of the day) as int64 nanoseconds."""
    return int(np.datetime64(pd.Timestamp(as_of).normalize().to_datetime64(), "ns").view(np.int64))


def _factorize(values: np.ndarray | pd.Series) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64), len(uniques)


@dataclass
class _Lines:
    """Some transaction lines: customer position, time and category code of each."""

    pos: np.ndarray
    ts: np.ndarray
    category: np.ndarray

    def take(self, mask: np.ndarray) -> _Lines:
        return _Lines(self.pos[mask], self.ts[mask], self.category[mask])


@dataclass
class _Transactions:
    """Transaction lines of the known customers, split into past and horizon.

    ``pos``, ``ts``, ``category``, ``revenue`` and ``margin`` are every past line, returns
    included: the money sums read them. ``bought`` is the past purchase lines (returns left
    out) and ``h_bought`` the horizon's: they are the same arrays as the lines when a base has
    no returns, not copies.
    """

    pos: np.ndarray  # past lines (ts < T)
    ts: np.ndarray
    category: np.ndarray
    revenue: np.ndarray
    margin: np.ndarray
    bought: _Lines  # past purchase lines
    order_pos: np.ndarray  # past orders, in (customer, time) order
    order_ts: np.ndarray
    h_pos: np.ndarray  # horizon lines (T <= ts < T + H), returns included
    h_margin: np.ndarray
    h_bought: _Lines  # horizon purchase lines


@dataclass
class _Invoices:
    pos: np.ndarray  # every invoice of the known customers (credit notes apart)
    issue: np.ndarray
    due: np.ndarray
    paid: np.ndarray  # NAT_NS when unpaid
    amount: np.ndarray
    #: credit notes (a negative amount): customer position, issue and application day, amount
    credit_pos: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    credit_issue: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    credit_paid: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    credit_amount: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))


@dataclass
class _Interactions:
    pos: np.ndarray  # past interactions only
    ts: np.ndarray
    kind: np.ndarray  # index into INTERACTION_KINDS
    cost: np.ndarray


@dataclass
class _Chunk:
    """Everything a family needs: the known customers and their events as arrays."""

    n: int
    t: int  # T, ns
    horizon_days: int
    customers: pd.DataFrame
    categories: tuple[str, ...]
    vocabularies: Mapping[str, Sequence[str]]
    extras: Mapping[str, str]
    tx: _Transactions
    inv: _Invoices | None
    inter: _Interactions | None
    out: dict[str, np.ndarray | pd.Categorical] = field(default_factory=dict)


def _rows(values: pd.Series, keep: np.ndarray | None) -> pd.Series:
    """``values`` at positions ``keep`` (None = all), column by column: no frame copies."""
    if keep is None:
        return values
    return pd.Series(values.array.take(keep), copy=False)


def _numbers(values: pd.Series, keep: np.ndarray | None) -> np.ndarray:
    out = values.to_numpy(dtype=np.float64)
    return out if keep is None else out[keep]


def _select(mask: np.ndarray) -> np.ndarray | None:
    """Row positions where ``mask`` holds, or None when it holds everywhere."""
    return None if mask.all() else np.flatnonzero(mask)


def _encode_transactions(
    tx: pd.DataFrame, customer_ids: pd.Series, t: int, end: int, categories: Sequence[str]
) -> _Transactions:
    pos = customer_positions(tx["customer_id"], customer_ids)
    ts = to_ns(tx["ts"])
    keep = _select((pos >= 0) & (ts < end))
    if keep is not None:
        pos, ts = pos[keep], ts[keep]
    cat = category_codes(_rows(tx["product_category"], keep), categories)
    revenue = _numbers(tx["revenue"], keep)
    cost = _numbers(tx["cost"], keep)
    margin = revenue - cost
    past = ts < t
    lines = _Lines(pos[past], ts[past], cat[past])
    h_lines = _Lines(pos[~past], ts[~past], cat[~past])
    # A return (a negative revenue or cost) is not a purchase; most bases have none, and
    # then the purchase lines are the lines themselves.
    sale = (revenue >= 0) & (cost >= 0)
    has_returns = not sale.all()
    bought = lines.take(sale[past]) if has_returns else lines
    h_bought = h_lines.take(sale[~past]) if has_returns else h_lines

    order_ids = _rows(tx["order_id"], keep)
    order_pos, order_ts = _orders(
        bought.pos, bought.ts, _rows(order_ids, _select(past & sale if has_returns else past))
    )
    return _Transactions(
        pos=lines.pos, ts=lines.ts, category=lines.category, revenue=revenue[past],
        margin=margin[past], bought=bought, order_pos=order_pos, order_ts=order_ts,
        h_pos=h_lines.pos, h_margin=margin[~past], h_bought=h_bought,
    )


def _orders(pos: np.ndarray, ts: np.ndarray, order_ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Customer and time of each order, in (customer, time) order.

    An order is an ``order_id`` of a customer at one time: the lines of an order share its
    time. Lines are grouped by (customer, time) first, with integers only; order ids are
    hashed just for lines that share their (customer, time) with another line, to tell
    apart several orders placed at the same moment.
    """
    if not _is_sorted(pos, ts):
        by_time = np.argsort(ts, kind="stable")
        order = by_time[np.argsort(pos[by_time], kind="stable")]
        pos, ts, order_ids = pos[order], ts[order], _rows(order_ids, order)
    starts = np.ones(pos.size, dtype=bool)
    starts[1:] = (pos[1:] != pos[:-1]) | (ts[1:] != ts[:-1])
    moment = np.cumsum(starts) - 1  # (customer, time) group of each line
    shared = np.flatnonzero(np.bincount(moment)[moment] > 1) if pos.size else moment
    if shared.size:
        codes, n_ids = _factorize(_rows(order_ids, shared))  # -1 for a missing id
        key, _ = _factorize(moment[shared] * (n_ids + 1) + (codes + 1))
        # factorize numbers keys by first appearance: a line starts an order when its key
        # is larger than every key before it
        seen = np.maximum.accumulate(key)
        starts[shared] = key > np.concatenate(([-1], seen[:-1]))
    return pos[starts], ts[starts]


def _encode_invoices(inv: pd.DataFrame, customer_ids: pd.Series) -> _Invoices:
    pos = customer_positions(inv["customer_id"], customer_ids)
    keep = _select(pos >= 0)

    def ns(column: str) -> np.ndarray:
        values = to_ns(inv[column])
        return values if keep is None else values[keep]

    pos = pos if keep is None else pos[keep]
    issue, due, paid, amount = ns("issue_date"), ns("due_date"), ns("paid_date"), _numbers(inv["amount"], keep)
    credit = amount < 0
    if not credit.any():
        return _Invoices(pos=pos, issue=issue, due=due, paid=paid, amount=amount)
    owed = ~credit
    return _Invoices(
        pos=pos[owed], issue=issue[owed], due=due[owed], paid=paid[owed], amount=amount[owed],
        credit_pos=pos[credit], credit_issue=issue[credit], credit_paid=paid[credit],
        credit_amount=amount[credit],
    )


def _encode_interactions(inter: pd.DataFrame, customer_ids: pd.Series, t: int) -> _Interactions:
    pos = customer_positions(inter["customer_id"], customer_ids)
    ts = to_ns(inter["ts"])
    keep = _select((pos >= 0) & (ts < t))
    if keep is not None:
        pos, ts = pos[keep], ts[keep]
    return _Interactions(
        pos=pos, ts=ts,
        kind=category_codes(_rows(inter["kind"], keep), INTERACTION_KINDS),
        cost=_numbers(inter["cost_to_serve"], keep),
    )


# --- numpy reductions by customer ---------------------------------------------------------


def _sum(pos: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    out = np.bincount(pos, weights=weights, minlength=n)
    return out.astype(np.float64 if weights is not None else np.int64, copy=False)


def _max(pos: np.ndarray, n: int, values: np.ndarray, empty: float = np.nan) -> np.ndarray:
    """Largest value per customer (float64), ``empty`` for a customer without values."""
    out = np.full(n, -np.inf)
    np.maximum.at(out, pos, values.astype(np.float64))
    out[np.bincount(pos, minlength=n) == 0] = empty
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1), np.nan)


def _share(part: np.ndarray, total: np.ndarray) -> np.ndarray:
    """part / total in [0, 1], NaN where total is not positive. Without returns the parts
    lie in [0, total] already; a window whose returns outweigh its sales has no share."""
    return np.clip(np.where(total > 0, part / np.where(total > 0, total, 1), np.nan), 0.0, 1.0)


def _is_sorted(pos: np.ndarray, ts: np.ndarray) -> bool:
    """Whether events are in (customer, time) order already."""
    dp = np.diff(pos)
    return bool(np.all((dp > 0) | ((dp == 0) & (np.diff(ts) >= 0))))


def _days(delta_ns: np.ndarray) -> np.ndarray:
    return delta_ns / NS_PER_DAY


# --- the families -------------------------------------------------------------------------


def _profile(c: _Chunk) -> None:
    for column in PROFILE_CATEGORICALS:
        c.out[column] = _categorical(c.customers[column], c.vocabularies.get(column))
    signup = to_ns(c.customers["signup_date"])
    c.out["tenure_days"] = (c.t - signup) // NS_PER_DAY
    c.out["as_of_month"] = np.full(c.n, pd.Timestamp(c.t).month, dtype=np.int64)


def _rfm(c: _Chunk) -> None:
    tx, n = c.tx, c.n
    for w, days in WINDOWS:
        lines = slice(None) if days is None else tx.ts >= c.t - days * NS_PER_DAY
        orders = slice(None) if days is None else tx.order_ts >= c.t - days * NS_PER_DAY
        c.out[f"order_count_{w}"] = _sum(tx.order_pos[orders], n)
        c.out[f"revenue_{w}"] = _sum(tx.pos[lines], n, tx.revenue[lines])
        c.out[f"margin_{w}"] = _sum(tx.pos[lines], n, tx.margin[lines])
    last = _max(tx.order_pos, n, tx.order_ts)
    first = -_max(tx.order_pos, n, -tx.order_ts)
    c.out["days_since_last_purchase"] = _days(c.t - last)
    c.out["days_since_first_purchase"] = _days(c.t - first)
    for w in ("365d", "lifetime"):
        c.out[f"margin_per_order_{w}"] = _ratio(c.out[f"margin_{w}"], c.out[f"order_count_{w}"].astype(np.float64))


def _trend(c: _Chunk) -> None:
    tx, n = c.tx, c.n
    prev = (tx.ts >= c.t - 180 * NS_PER_DAY) & (tx.ts < c.t - 90 * NS_PER_DAY)
    revenue_prev = _sum(tx.pos[prev], n, tx.revenue[prev])
    recent = c.out["revenue_90d"]
    c.out["revenue_prev_90d"] = revenue_prev
    # A window whose returns outweigh its sales counts as no revenue: the ratio stays in [-1, 1].
    now, before = np.maximum(recent, 0.0), np.maximum(revenue_prev, 0.0)
    c.out["revenue_trend_90d_ratio"] = _ratio(now - before, now + before)

    # Gaps between consecutive orders of a customer (orders come in (customer, time) order).
    pos, ts = tx.order_pos, tx.order_ts
    same = pos[1:] == pos[:-1]
    gap_pos = pos[1:][same]
    gaps = _days(np.diff(ts)[same])
    n_gaps = _sum(gap_pos, n)
    mean = _ratio(_sum(gap_pos, n, gaps), n_gaps.astype(np.float64))
    deviation = gaps - mean[gap_pos] if gaps.size else gaps
    std = np.sqrt(_ratio(_sum(gap_pos, n, deviation * deviation), n_gaps.astype(np.float64)))
    c.out["inter_purchase_mean_days"] = mean
    cv = _ratio(std, mean)
    cv[n_gaps < 2] = np.nan
    c.out["inter_purchase_cv_ratio"] = cv


def _product_mix(c: _Chunk) -> None:
    tx, n, k = c.tx, c.n, len(c.categories)
    since = c.t - 365 * NS_PER_DAY
    year = (tx.ts >= since) & (tx.category >= 0)
    key = tx.pos[year] * k + tx.category[year]
    revenue = np.bincount(key, weights=tx.revenue[year], minlength=n * k).reshape(n, k)
    total = c.out["revenue_365d"]
    for j, slug in enumerate(category_slugs(c.categories)):
        c.out[f"revenue_share_365d_{slug}"] = _share(revenue[:, j], total)
    # Counts and recencies are of purchases: returns left out.
    bought = tx.bought
    if bought.pos is not tx.pos:  # the base has returns
        year = (bought.ts >= since) & (bought.category >= 0)
        key = bought.pos[year] * k + bought.category[year]
    lines_year = np.bincount(key, minlength=n * k).reshape(n, k)
    known_lines = bought.category >= 0
    c.out["category_breadth_365d_count"] = (lines_year > 0).sum(axis=1).astype(np.int64)
    key_known = bought.pos[known_lines] * k + bought.category[known_lines]
    last = np.full(n * k, np.iinfo(np.int64).min)
    np.maximum.at(last, key_known, bought.ts[known_lines])
    last = last.reshape(n, k)
    for j, slug in enumerate(category_slugs(c.categories)):
        seen = last[:, j] != np.iinfo(np.int64).min
        c.out[f"days_since_last_purchase_{slug}"] = np.where(seen, _days(c.t - last[:, j]), np.nan)
        c.out[f"line_count_365d_{slug}"] = lines_year[:, j].astype(np.int64)
    lines_all = np.bincount(key_known, minlength=n * k).reshape(n, k)
    for j, slug in enumerate(category_slugs(c.categories)):
        c.out[f"line_count_lifetime_{slug}"] = lines_all[:, j].astype(np.int64)
    c.out["category_breadth_lifetime_count"] = (lines_all > 0).sum(axis=1).astype(np.int64)


def _value(c: _Chunk) -> None:
    revenue = c.out["revenue_365d"]
    # NaN without positive revenue: a margin over net returns is no margin rate.
    c.out["margin_rate_365d_share"] = np.where(revenue > 0, _ratio(c.out["margin_365d"], revenue), np.nan)
    if c.inter is None:
        return
    it, n = c.inter, c.n
    for w in (90, 365):
        recent = it.ts >= c.t - w * NS_PER_DAY
        c.out[f"cost_to_serve_{w}d"] = _sum(it.pos[recent], n, it.cost[recent])
    c.out["current_value_365d"] = c.out["margin_365d"] - c.out["cost_to_serve_365d"]


def _payment(c: _Chunk) -> None:
    if c.inv is None:
        return
    iv, n, t = c.inv, c.n, c.t
    issued = iv.issue < t
    c.out["invoice_count_365d"] = _sum(iv.pos[issued & (iv.issue >= t - 365 * NS_PER_DAY)], n)
    c.out["invoice_count_lifetime"] = _sum(iv.pos[issued], n)
    # Paid as known at T: a payment dated T or later had not happened yet.
    paid = issued & (iv.paid != NAT_NS) & (iv.paid < t)
    open_ = issued & ~paid
    c.out["open_invoice_count"] = _sum(iv.pos[open_], n)
    # credit notes not yet applied at T lower what the customer owes
    credit_open = (iv.credit_issue < t) & ((iv.credit_paid == NAT_NS) | (iv.credit_paid >= t))
    c.out["outstanding_balance"] = (_sum(iv.pos[open_], n, iv.amount[open_])
                                    + _sum(iv.credit_pos[credit_open], n, iv.credit_amount[credit_open]))
    past_due_days = np.maximum((t - iv.due) // NS_PER_DAY, 0)
    overdue = open_ & (past_due_days > 0)
    c.out["overdue_balance"] = _sum(iv.pos[overdue], n, iv.amount[overdue])
    c.out["current_days_past_due"] = _max(iv.pos[open_], n, past_due_days[open_], 0).astype(np.int64)
    for lo, hi in DPD_BUCKETS:
        sel = open_ & (past_due_days >= lo) & ((past_due_days <= hi) if hi else True)
        name = f"open_dpd_{lo}_{hi}_count" if hi else f"open_dpd_{lo}_plus_count"
        c.out[name] = _sum(iv.pos[sel], n)

    p_pos = iv.pos[paid]
    p_late = np.maximum((iv.paid[paid] - iv.due[paid]) // NS_PER_DAY, 0).astype(np.float64)
    n_paid = _sum(p_pos, n).astype(np.float64)
    c.out["mean_days_late"] = _ratio(_sum(p_pos, n, p_late), n_paid)
    c.out["max_days_late"] = _max(p_pos, n, p_late)
    c.out["paid_late_share"] = _ratio(_sum(p_pos[p_late > 0], n).astype(np.float64), n_paid)
    recent = iv.paid[paid] >= t - PAYMENT_TREND_DAYS * NS_PER_DAY
    mean_recent = _ratio(_sum(p_pos[recent], n, p_late[recent]), _sum(p_pos[recent], n) * 1.0)
    mean_early = _ratio(_sum(p_pos[~recent], n, p_late[~recent]), _sum(p_pos[~recent], n) * 1.0)
    c.out["days_late_trend"] = mean_recent - mean_early


def _service(c: _Chunk) -> None:
    if c.inter is None:
        return
    it, n = c.inter, c.n
    for j, kind in enumerate(INTERACTION_KINDS):
        of_kind = it.kind == j
        for w in (90, 365):
            sel = of_kind & (it.ts >= c.t - w * NS_PER_DAY)
            c.out[f"{kind}_count_{w}d"] = _sum(it.pos[sel], n)
    complaint = it.kind == INTERACTION_KINDS.index("complaint")
    c.out["days_since_last_complaint"] = _days(c.t - _max(it.pos[complaint], n, it.ts[complaint]))


def _attributes(c: _Chunk) -> None:
    for column, kind in c.extras.items():
        values = c.customers[column]
        if kind == "category":
            c.out[column] = _categorical(values, c.vocabularies.get(column))
        elif kind == "number":
            c.out[column] = values.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            ns = to_ns(values)
            c.out[f"days_since_{column}"] = np.where(ns == NAT_NS, np.nan, _days(c.t - ns))


def _labels(c: _Chunk) -> None:
    tx, n = c.tx, c.n
    c.out["label_churn"] = L.churn_label(tx.bought.pos, tx.h_bought.pos, n)
    purchases = L.purchase_labels(tx.h_bought.pos, tx.h_bought.category, n, len(c.categories))
    for j, slug in enumerate(category_slugs(c.categories)):
        c.out[f"label_purchase_{slug}"] = purchases[:, j]
    if c.inv is not None:
        iv = c.inv
        c.out["label_default"] = L.default_label(
            iv.pos, iv.issue, iv.due, iv.paid, n, c.t, c.horizon_days
        )
    c.out["label_margin"] = L.margin_label(tx.h_pos, tx.h_margin, n)


FAMILIES: tuple[Callable[[_Chunk], None], ...] = (
    _profile, _rfm, _trend, _product_mix, _value, _payment, _service, _attributes,
)


def _categorical(values: pd.Series, levels: Sequence[str] | None) -> pd.Categorical:
    if levels is None:
        levels = vocabulary(values)
    return pd.Categorical(values.astype(object), categories=list(levels))


# --- the public entry point ---------------------------------------------------------------


def compute_features(
    tables: Mapping[str, pd.DataFrame],
    as_of: date,
    horizon_days: int,
    categories: Sequence[str],
    *,
    with_labels: bool,
    vocabularies: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Features (and labels) of the customers in ``tables`` at ``as_of``.

    Parameters
    ----------
    tables : mapping of str to DataFrame
        ``customers`` and ``transactions`` (required), ``invoices`` and ``interactions``
        (optional; their feature families are absent without them), typed as ``io.Base``
        holds them, restricted to any set of customers (events of other customers are
        ignored). Events after the horizon may be left in; they are never read.
    as_of : date
        T: features use events with time < T only.
    horizon_days : int
        H, days: the label window is ``[T, T + H)``. The caller checks it is observed.
    categories : sequence of str
        The product categories of the whole base, sorted, so every chunk gets the same
        columns. Lines of other categories count in totals but get no share column.
    with_labels : bool
        Whether to add the label columns.
    vocabularies : mapping of str to sequence of str, optional
        Levels of each categorical column (profile and text attributes), so every chunk
        gets the same categories; by default the values present in ``customers``.

    Returns
    -------
    DataFrame
        One row per customer with ``signup_date < T``, in the order of ``customers``:
        ``customer_id``, then the features of :func:`feature_specs`, then the labels of
        :func:`crmscore.features.labels.label_specs` when asked for.
    """
    t = as_of_ns(as_of)
    customers = tables["customers"]
    known = customers.iloc[np.flatnonzero(to_ns(customers["signup_date"]) < t)]
    customer_ids = known["customer_id"]
    invoices = tables.get("invoices")
    interactions = tables.get("interactions")
    extras = extra_attributes(known)
    end = t + horizon_days * NS_PER_DAY if with_labels else t
    chunk = _Chunk(
        n=len(known),
        t=t,
        horizon_days=horizon_days,
        customers=known,
        categories=tuple(categories),
        vocabularies=vocabularies or {},
        extras=extras,
        tx=_encode_transactions(tables["transactions"], customer_ids, t, end, categories),
        inv=None if invoices is None else _encode_invoices(invoices, customer_ids),
        inter=None if interactions is None else _encode_interactions(interactions, customer_ids, t),
    )
    for family in FAMILIES:
        family(chunk)
    specs = feature_specs(categories, has_invoices=invoices is not None,
                          has_interactions=interactions is not None, extras=extras)
    if with_labels:
        _labels(chunk)
        specs += L.label_specs(categories, has_invoices=invoices is not None)
    names = [s.name for s in specs]
    if sorted(names) != sorted(chunk.out):
        raise RuntimeError(  # a programming error: the catalogue and the code disagree
            f"computed columns {sorted(set(chunk.out) ^ set(names))} disagree with the catalogue"
        )
    columns: dict[str, object] = {"customer_id": customer_ids.array}
    for spec in specs:
        values = chunk.out[spec.name]
        columns[spec.name] = values if spec.dtype == "category" else np.asarray(values, dtype=spec.dtype)
    return pd.DataFrame(columns, copy=False)  # one block per column: no consolidation copy


@dataclass(frozen=True)
class SnapshotPlan:
    """Everything an engine needs to compute a snapshot chunk by chunk, decided once.

    Built by ``pipeline.plan_snapshot`` from the whole base, so every chunk (or Spark bucket)
    gets the same columns, category lists and categorical levels. Picklable: Spark ships it
    to the executors.

    Attributes
    ----------
    as_of : date
        T.
    horizon_days : int
        H, days.
    with_labels : bool
        Whether labels are computed.
    categories : tuple of str
        Product categories of the base, sorted.
    vocabularies : tuple of (str, tuple of str)
        Levels of each categorical column.
    extras : tuple of (str, str)
        Extra customer attributes and their kind (:func:`extra_attributes`).
    has_invoices, has_interactions : bool
        Which optional tables the base has.
    """

    as_of: date
    horizon_days: int
    with_labels: bool
    categories: tuple[str, ...]
    vocabularies: tuple[tuple[str, tuple[str, ...]], ...]
    extras: tuple[tuple[str, str], ...]
    has_invoices: bool
    has_interactions: bool

    @property
    def as_of_ns(self) -> int:
        return as_of_ns(self.as_of)

    @property
    def end_ns(self) -> int:
        """End of the events the snapshot reads: T + H with labels, else T."""
        return self.as_of_ns + (self.horizon_days * NS_PER_DAY if self.with_labels else 0)

    def columns(self) -> list[FeatureSpec]:
        """The snapshot's columns after ``customer_id``: features, then labels."""
        specs = feature_specs(self.categories, has_invoices=self.has_invoices,
                              has_interactions=self.has_interactions, extras=dict(self.extras))
        if self.with_labels:
            specs += L.label_specs(self.categories, has_invoices=self.has_invoices)
        return specs

    def compute(self, tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
        """:func:`compute_features` of one chunk of customers with this plan's parameters."""
        return compute_features(tables, self.as_of, self.horizon_days, self.categories,
                                with_labels=self.with_labels, vocabularies=dict(self.vocabularies))


#: columns of :func:`compute_core_rfm`, the aggregate set benchmarked against DuckDB
CORE_RFM_COLUMNS: tuple[str, ...] = (
    "line_count", "revenue", "margin", "first_ts", "last_ts", "revenue_90d",
)


def compute_core_rfm(tables: Mapping[str, pd.DataFrame], as_of: date) -> pd.DataFrame:
    """The core RFM aggregates of the transaction log before T, per known customer.

    The set ../shared/BENCHMARKS.md times against DuckDB: order-line count, revenue, margin,
    first and last purchase time, 90-day revenue. Same conventions as :func:`compute_features`
    (first/last are NaT without purchases).

    Parameters
    ----------
    tables : mapping of str to DataFrame
        ``customers`` and ``transactions`` (``customer_id``, ``ts``, ``revenue``, ``cost``).
    as_of : date
        T.

    Returns
    -------
    DataFrame
        ``customer_id`` and :data:`CORE_RFM_COLUMNS`, one row per customer with
        ``signup_date < T``.
    """
    t = as_of_ns(as_of)
    customers = tables["customers"]
    known_rows = _select(to_ns(customers["signup_date"]) < t)
    known = customers if known_rows is None else customers.iloc[known_rows]
    n = len(known)
    tx = tables["transactions"]
    ts = to_ns(tx["ts"])
    revenue = tx["revenue"].to_numpy(dtype=np.float64)
    # Rows before T of known customers go to bin 1 + their customer's position, the rest
    # to a spare bin 0: one array instead of filtered copies of every column. Multiplying by
    # the masks (0 or 1) is branch-free, several times faster than np.where on a mask that
    # mixes True and False (unknown customers and later rows are interleaved).
    pos = customer_positions(tx["customer_id"], known["customer_id"])
    past = (pos + 1) * (ts < t)  # an unknown customer (-1) lands in bin 0 too
    recent = past * (ts >= t - 90 * NS_PER_DAY)
    count = np.bincount(past, minlength=n + 1)[1:]
    last = np.full(n + 1, np.iinfo(np.int64).min)
    np.maximum.at(last, past, ts)
    first = np.full(n + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, past, ts)
    last, first = last[1:], first[1:]
    none = count == 0
    first[none], last[none] = NAT_NS, NAT_NS
    margin = revenue - tx["cost"].to_numpy(dtype=np.float64)
    return pd.DataFrame({
        "customer_id": known["customer_id"].array,
        "line_count": count.astype(np.int64, copy=False),
        "revenue": np.bincount(past, weights=revenue, minlength=n + 1)[1:],
        "margin": np.bincount(past, weights=margin, minlength=n + 1)[1:],
        "first_ts": first.view("datetime64[ns]"),
        "last_ts": last.view("datetime64[ns]"),
        "revenue_90d": np.bincount(recent, weights=revenue, minlength=n + 1)[1:],
    }, copy=False)

