"""Point-in-time snapshots of a base, on the local engine or on Spark, and training frames.

:func:`build_snapshot` checks its inputs, decides everything that must be the same in every
chunk (the :class:`~crmscore.features.transforms.SnapshotPlan`), hands the work to an
engine and returns one sorted frame. Both engines run the same pure function,
:func:`crmscore.features.transforms.compute_features`, on groups of customers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crmscore.features.catalogue import FeatureSpec, render_markdown
from crmscore.features.io import Base
from crmscore.features.labels import check_labels_observable, label_specs
from crmscore.features.transforms import (
    PROFILE_CATEGORICALS,
    SnapshotPlan,
    extra_attributes,
    feature_specs,
    vocabulary,
)

logger = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("local", "spark")
_STRING = pd.StringDtype("pyarrow")


# --- checking the inputs ------------------------------------------------------------------


def _check_count(name: str, value: object, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive number of {unit}; got {value!r}")
    return int(value)


def parse_as_of(as_of: object) -> date:
    """An as-of date from a ``date``, a midnight ``datetime``/``Timestamp`` or ``YYYY-MM-DD``.

    Raises
    ------
    ValueError
        For anything else, e.g. a time of day other than midnight.
    """
    if isinstance(as_of, str):
        try:
            return date.fromisoformat(as_of)
        except ValueError:
            pass
    elif isinstance(as_of, datetime | pd.Timestamp):
        if pd.Timestamp(as_of) == pd.Timestamp(as_of).normalize():
            return pd.Timestamp(as_of).date()
    elif isinstance(as_of, date):
        return as_of
    raise ValueError(f"as_of must be a date such as 2024-07-01 (the start of that day); got {as_of!r}")


def observed_period(base: Base, data_end: date | None = None) -> tuple[date, date]:
    """First observed day and the end of the base's observed period (exclusive).

    The period starts on the earliest sign-up or transaction day and ends, by default, the
    day after the last transaction: an as-of date T is valid when ``start < T <= end``, and
    labels are observed when ``T + H <= end``.

    Parameters
    ----------
    base : Base
    data_end : date, optional
        The end of the period when known (e.g. the extraction date); overrides the default.

    Raises
    ------
    ValueError
        If the base has no transactions and no ``data_end`` is given.
    """
    ts = base.transactions["ts"]
    if len(ts) == 0 and data_end is None:
        raise ValueError(
            "the base has no transactions, so the end of its observed period is unknown; "
            "pass data_end"
        )
    starts = [pd.Timestamp(base.customers["signup_date"].min()), pd.Timestamp(ts.min())]
    starts = [s for s in starts if not pd.isna(s)]
    end = data_end if data_end is not None else (pd.Timestamp(ts.max()).normalize() + pd.Timedelta(days=1)).date()
    start = min(starts).normalize().date() if starts else end - timedelta(days=1)
    return start, end


def base_categories(base: Base) -> tuple[str, ...]:
    """Sorted distinct product categories of the base's transactions."""
    return vocabulary(base.transactions["product_category"])


def plan_snapshot(
    base: Base,
    as_of: object,
    horizon_days: int = 90,
    *,
    with_labels: bool | None = None,
    categories: Sequence[str] | None = None,
    data_end: date | None = None,
) -> SnapshotPlan:
    """Check the inputs and decide what every chunk of the snapshot shares.

    See :func:`build_snapshot` for the parameters and the errors raised.
    """
    horizon_days = _check_count("horizon_days", horizon_days, "days")
    t = parse_as_of(as_of)
    start, end = observed_period(base, data_end)
    if not start < t <= end:
        raise ValueError(
            f"as_of {t.isoformat()} is outside the observed period of the base: expected a date "
            f"from {(start + timedelta(days=1)).isoformat()} to {end.isoformat()}"
        )
    observable = t + timedelta(days=horizon_days) <= end
    if with_labels is None:
        with_labels = observable
    elif with_labels:
        check_labels_observable(t, horizon_days, end)
    cats = base_categories(base) if categories is None else tuple(str(c) for c in categories)
    extras = extra_attributes(base.customers)
    levels = [c for c in PROFILE_CATEGORICALS] + [c for c, k in extras.items() if k == "category"]
    vocabularies = tuple((c, vocabulary(base.customers[c])) for c in levels)
    plan = SnapshotPlan(
        as_of=t,
        horizon_days=horizon_days,
        with_labels=bool(with_labels),
        categories=cats,
        vocabularies=vocabularies,
        extras=tuple(extras.items()),
        has_invoices=base.invoices is not None,
        has_interactions=base.interactions is not None,
    )
    plan.columns()  # raises on a name clash between attributes and features
    return plan


# --- building -----------------------------------------------------------------------------


def build_snapshot(
    base: Base,
    as_of: object,
    horizon_days: int = 90,
    *,
    engine: str = "local",
    master: str | None = None,
    with_labels: bool | None = None,
    chunk_customers: int = 100_000,
    n_jobs: int = 2,
    categories: Sequence[str] | None = None,
    data_end: date | None = None,
    plan_base: Base | None = None,
) -> pd.DataFrame:
    """Point-in-time features (and labels) of every customer known at ``as_of``.

    Parameters
    ----------
    base : Base
        A validated base (``validate.load_base``).
    as_of : date or str
        T, the start of that day: features read events with time < T only. Must lie in
        ``(first observed day, data end]`` (:func:`observed_period`).
    horizon_days : int, default 90
        H, days: labels describe ``[T, T + H)``.
    engine : {"local", "spark"}, default "local"
        Where to compute: in this process (chunks of customers on ``n_jobs`` threads) or on
        Spark (``groupBy(bucket).applyInPandas``).
    master : str, optional
        Spark master URL (default ``local[*]``); only with ``engine="spark"``.
    with_labels : bool, optional
        Add the labels; by default when the horizon is observed (``T + H <= data end``).
        True with an unobserved horizon raises.
    chunk_customers : int, default 100,000
        Customers per chunk (local) or per bucket (Spark): bounds the working memory.
    n_jobs : int, default 2
        Chunks computed at once on the local engine.
    categories : sequence of str, optional
        Product categories to make columns for; by default those of the base. Pass the
        training base's list to score a later base with the same columns.
    data_end : date, optional
        End of the observed period (exclusive); by default the day after the last transaction.
    plan_base : Base, optional
        When ``base`` is a sample of a larger base (:func:`restrict_base`), that base: the
        observed period and the categorical levels are taken from it, so the sample's rows
        equal the whole base's snapshot rows of the same customers, column types included.

    Returns
    -------
    DataFrame
        One row per customer with ``signup_date < T``, sorted by ``customer_id``;
        columns ``customer_id`` then :meth:`SnapshotPlan.columns`.

    Raises
    ------
    ValueError
        For an as-of outside the observed period, a horizon that is not a positive number
        of days, labels asked for an unobserved horizon, an unknown engine or bad sizes.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}; got {engine!r}")
    if master is not None and engine != "spark":
        raise ValueError(f"master is only used by the spark engine; got master={master!r} with engine={engine!r}")
    chunk_customers = _check_count("chunk_customers", chunk_customers, "customers")
    n_jobs = _check_count("n_jobs", n_jobs, "jobs")
    plan = plan_snapshot(base if plan_base is None else plan_base, as_of, horizon_days,
                         with_labels=with_labels, categories=categories, data_end=data_end)
    logger.info("snapshot at %s (horizon %d days, labels %s) on the %s engine",
                plan.as_of, plan.horizon_days, plan.with_labels, engine)
    if engine == "spark":
        from crmscore.features.engines.spark import run_spark

        frame = run_spark(base, plan, master=master, chunk_customers=chunk_customers)
    else:
        from crmscore.features.engines.local import run_local

        frame = run_local(base, plan, chunk_customers=chunk_customers, n_jobs=n_jobs)
    return finalise_snapshot(frame, plan)


def finalise_snapshot(frame: pd.DataFrame, plan: SnapshotPlan) -> pd.DataFrame:
    """Sort by ``customer_id`` and set every column's dtype from the catalogue.

    Both engines end here, so their snapshots are identical frame for frame. Built column
    by column, once: a frame of a million customers is not copied more than needed.
    """
    ids = frame["customer_id"]
    if ids.dtype != _STRING:
        ids = ids.astype(object).astype(_STRING)
    order = None if ids.is_monotonic_increasing else np.argsort(ids.to_numpy(dtype=object), kind="stable")

    def arrange(values: object) -> object:
        if order is None:
            return values
        return values[order] if isinstance(values, np.ndarray) else values.take(order)

    levels = dict(plan.vocabularies)
    columns: dict[str, object] = {"customer_id": arrange(ids.array)}
    for spec in plan.columns():
        values = frame[spec.name]
        if spec.dtype == "category":
            dtype = pd.CategoricalDtype(list(levels[spec.name]))
            if values.dtype != dtype:
                values = values.astype(object).astype(dtype)
            columns[spec.name] = arrange(values.array)
        else:
            columns[spec.name] = arrange(values.to_numpy().astype(spec.dtype, copy=False))
    return pd.DataFrame(columns, copy=False)  # one block per column: no consolidation copy


# --- training frames ------------------------------------------------------------------------


def monthly_as_of_dates(
    base: Base,
    horizon_days: int = 90,
    *,
    start: date | None = None,
    end: date | None = None,
    data_end: date | None = None,
) -> list[date]:
    """First days of months usable as as-of dates for training: labels observed.

    Parameters
    ----------
    base : Base
    horizon_days : int, default 90
    start, end : date, optional
        Bounds, both inclusive; by default the whole observed period.
    data_end : date, optional
        End of the observed period (:func:`observed_period`).

    Returns
    -------
    list of date
        Every month start d with ``first observed day < d``, ``start <= d <= end`` and
        ``d + horizon_days <= data end``, in order.
    """
    horizon_days = _check_count("horizon_days", horizon_days, "days")
    first, last = observed_period(base, data_end)
    lo = max(first + timedelta(days=1), start or first)
    hi = min(last - timedelta(days=horizon_days), end or last)
    months = pd.date_range(pd.Timestamp(lo), pd.Timestamp(hi), freq="MS")
    return [d.date() for d in months]


def build_training_frame(
    base: Base,
    as_of_dates: Sequence[object],
    horizon_days: int = 90,
    *,
    engine: str = "local",
    master: str | None = None,
    chunk_customers: int = 100_000,
    n_jobs: int = 2,
    categories: Sequence[str] | None = None,
    data_end: date | None = None,
    customers: Sequence[str] | pd.Series | None = None,
) -> pd.DataFrame:
    """Labelled snapshots at several as-of dates, stacked: one row per (customer, as-of).

    Models learn across time and are validated out of time by splitting on ``as_of``.

    Parameters
    ----------
    as_of_dates : sequence of date
        As-of dates, each with an observed horizon (e.g. :func:`monthly_as_of_dates`).
    customers : sequence of str, optional
        Only these customers (ids), in every snapshot they are known at: the base is
        restricted to them once (:func:`restrict_base`), and the snapshots keep the whole
        base's period and levels. By default every customer.
    Other parameters
        As in :func:`build_snapshot`; labels are always computed.

    Returns
    -------
    DataFrame
        ``customer_id``, ``as_of`` (datetime64[ns], the start of T), then features and
        labels; sorted by ``as_of`` then ``customer_id``. Every snapshot has the same
        columns and categorical levels (taken from the whole base).
    """
    if len(as_of_dates) == 0:
        raise ValueError("as_of_dates must hold at least one date; got none")
    cats = base_categories(base) if categories is None else tuple(categories)
    source, plan_base = base, None
    if customers is not None:
        source, plan_base = restrict_base(base, customers), base
        logger.info("training frame for %d of %d customers", len(source.customers), len(base.customers))
    frames = []
    for as_of in sorted(parse_as_of(d) for d in as_of_dates):
        snap = build_snapshot(source, as_of, horizon_days, engine=engine, master=master,
                              with_labels=True, chunk_customers=chunk_customers,
                              n_jobs=n_jobs, categories=cats, data_end=data_end, plan_base=plan_base)
        snap.insert(1, "as_of", pd.Series(pd.Timestamp(as_of), index=snap.index, dtype="datetime64[ns]"))
        frames.append(snap)
    return pd.concat(frames, ignore_index=True)


def restrict_base(base: Base, customer_ids: Sequence[str] | pd.Series) -> Base:
    """The base limited to ``customer_ids``: their customer rows and their events, in order.

    Every feature and label of a customer reads that customer's rows only, so a snapshot of
    the restricted base (with ``plan_base=base``) has exactly the whole base's rows of these
    customers. Ids not in the base are ignored.
    """
    wanted = pa.array(pd.Series(customer_ids, dtype=object).astype(str).to_numpy(dtype=object), pa.string())

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        ids = frame["customer_id"]
        array = ids.array
        values = (pa.chunked_array(array.__arrow_array__()) if hasattr(array, "__arrow_array__")
                  else pa.array(ids.astype(str).to_numpy(dtype=object), pa.string()))
        rows = np.flatnonzero(pc.is_in(values, value_set=wanted).to_numpy(zero_copy_only=False))
        return frame.take(rows).reset_index(drop=True)

    return Base(**{name: keep(frame) for name, frame in base.tables().items()})


# --- the catalogue --------------------------------------------------------------------------


def catalogue_specs(
    categories: Sequence[str] = ("<category>",),
    *,
    has_invoices: bool = True,
    has_interactions: bool = True,
    with_labels: bool = True,
) -> list[FeatureSpec]:
    """Every snapshot column a base could get, with placeholder category names by default."""
    specs = feature_specs(categories, has_invoices=has_invoices, has_interactions=has_interactions)
    if with_labels:
        specs += label_specs(categories, has_invoices=has_invoices)
    return specs


def render_catalogue() -> str:
    """The Markdown of ``docs/features.md``, generated from the code's specs."""
    intro = """# Features and labels

Generated by `crmscore.features.pipeline.render_catalogue()` from the specs the code computes
(`features/transforms.py`, `features/labels.py`); do not edit by hand (a test checks it).

## What a snapshot is

A snapshot at as-of date **T** (the start of that day) has one row per customer with
`signup_date < T`, sorted by `customer_id`: `customer_id`, the features, then the labels when
the horizon **[T, T+H)** is observed (`T + H <=` the end of the data: by default the day after
the last transaction). Features read events with time `< T` only; an invoice paid on or after T
is open at T. Tests prove it: every event on or after T is deleted or rewritten and no feature
moves; a slow per-customer reference implementation matches the fast one on every column.

Conventions: counts and sums over nothing are 0 (a customer without purchases has zero
activity); statistics nothing defines (a recency, a mean, a share of no positive revenue) are
NaN; day differences of timestamps are fractional days, of dates whole days; an order is an
`order_id` of a customer at one time (the lines of an order share its time; an id recorded at
two times counts as two purchases). Returns (negative revenue or cost) net against revenue and
margin but are no purchases; credit notes (negative invoice amounts) lower the outstanding
balance only. Columns marked *needs* are absent from snapshots of bases
without that optional table. `<category>` stands for each product category of the base, in
column-name form (lower case, other characters `_`). Extra customer columns are passed
through: text as categoricals, numbers and booleans as float64, dates as `days_since_<column>`.
Text whose every value is a number, `true`/`false` or a date (ISO, or one written format)
counts as one (every CSV column is text), so a base gives the same snapshot in CSV as in Parquet.

## How to build one

```python
from crmscore.features.pipeline import build_snapshot, build_training_frame, monthly_as_of_dates
from crmscore.features.validate import load_base

base = load_base("runs/demo/base")                       # validated, typed frames
snap = build_snapshot(base, "2024-10-01", horizon_days=90)  # local engine, both cores
snap = build_snapshot(base, "2024-10-01", engine="spark", master="spark://host:7077")
train = build_training_frame(base, monthly_as_of_dates(base, 90), 90)  # + an `as_of` column
```

or `crmscore features --base DIR --as-of YYYY-MM-DD [--horizon-days 90] --out snapshot.parquet
[--engine local|spark] [--master URL]`.

* **local** (default): customers are split into chunks of `chunk_customers` (100,000) by a
  stable hash of their id; each chunk's events go through the pure function
  `transforms.compute_features` on `n_jobs` threads. Working memory is bounded by the chunk.
* **spark**: the same function per bucket of customers (`pmod(xxhash64(customer_id), n)`) with
  `groupBy(bucket).applyInPandas`; the four tables travel packed in one frame. Needs the
  `spark` extra and `crmscore` installed on the executors. The result equals the local one
  exactly (a test compares them with `assert_frame_equal(check_exact=True)`).

Bad input raises `ValueError` with the value and what would be right: an as-of outside
`(first observed day, data end]`, a horizon that is not a positive number of days, labels
asked for an unobserved horizon, an unknown engine.

## Labels

Exactly the architecture's definitions (see `features/labels.py`): `label_churn` (bought
before T, nothing in the horizon; NaN for customers who never bought), `label_purchase_<category>`,
`label_default` (an invoice reaches 90 days past due unpaid inside the horizon; NaN for
customers never invoiced before T), `label_margin` (margin in the horizon).

For CDNOW the benchmark protocol (calibration to 1997-09-30, holdout 1997-10-01 .. 1998-06-30)
is as-of **1997-10-01** with a horizon of **273** days in this convention.
"""
    specs = [
        replace(s, name=s.name.removesuffix("_category") + "_<category>")
        if "'<category>'" in s.meaning else s
        for s in catalogue_specs(("<category>",))
    ]
    return intro + "\n" + render_markdown(specs, title="Columns") + "\n"
