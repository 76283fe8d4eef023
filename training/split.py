"""Which rows train, which validate, which test: out of time, and never the same customer twice.

* **test**: the latest as-of date whose horizon is observed; held out in time;
* **train**: ``train_snapshots`` monthly as-of dates before it, each with its whole horizon
  ending on or before the test as-of date (no label window overlaps the test period);
* **validation**: a stable 20% of *customers* (hash of the id) taken out of the training
  snapshots, halved again by the trainer into early stopping and calibration. Splitting by
  customer keeps one customer's adjacent months from sitting on both sides.

On large bases the snapshots are built for samples of customers, drawn before any feature is
computed (:func:`training_sample`, :func:`evaluation_sample`): the fits see at most
``max_train_rows`` training rows anyway, so building every customer's 12 snapshots would be
wasted work and memory. Samples are seeded and by customer (a customer is in every snapshot
or in none); small bases are not sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

VALIDATION_SHARE = 0.2


def choose_as_of_dates(
    available: list[date], horizon_days: int, train_snapshots: int, test_as_of: date | None = None
) -> tuple[list[date], date]:
    """Pick the training as-of dates and the test as-of date from the observable ones.

    Raises a ValueError naming the dates when there are not enough.
    """
    if not available:
        raise ValueError(f"the base has no as-of date with an observed {horizon_days}-day horizon")
    test = test_as_of or available[-1]
    if test not in available and test_as_of is not None:
        if test > available[-1]:
            raise ValueError(
                f"as-of {test} has no observed {horizon_days}-day horizon; the latest usable as-of is {available[-1]}"
            )
    latest_train = test - timedelta(days=horizon_days)
    candidates = [d for d in available if d <= latest_train]
    if not candidates:
        raise ValueError(
            f"no training as-of date ends its {horizon_days}-day horizon by the test as-of {test}: "
            f"the base starts too late (first usable as-of {available[0]})"
        )
    return candidates[-train_snapshots:], test


def validation_mask(customer_ids: pd.Series, share: float = VALIDATION_SHARE) -> np.ndarray:
    """True for the stable ``share`` of customers used for validation (same id, same side)."""
    hashed = pd.util.hash_array(customer_ids.astype(str).to_numpy(dtype=object))
    return (hashed % np.uint64(10_000)) < np.uint64(int(share * 10_000))


# --- customer samples -----------------------------------------------------------------------

#: the out-of-time test is measured on at most this many customers (a seeded sample beyond):
#: AUC's standard error stays ~0.001 there, and evaluating, logging and promoting on a
#: million rows (six million for propensity) cost minutes
TEST_MAX_CUSTOMERS = 200_000
#: the synthetic truth (oracle ratios) is computed for at most this many of the test customers:
#: ``synthetic.compute_truth`` costs ~2 ms per customer (200 Monte Carlo paths per category)
TRUTH_MAX_CUSTOMERS = 20_000


@dataclass(frozen=True)
class CustomerSample:
    """A seeded sample of customers, and what it was drawn from.

    ``customer_ids`` are sorted; ``of`` is the number of customers it was drawn from; ``rows``
    and ``rows_of`` the rows the sample and the whole population give (training: training
    rows, customer x as-of, validation customers left out; test: customers).
    """

    customer_ids: pd.Series
    of: int
    rows: int
    rows_of: int
    seed: int
    purpose: str

    def __len__(self) -> int:
        return len(self.customer_ids)

    def describe(self) -> str:
        """One line for the log and the run's tags."""
        what = f"{len(self):,} of {self.of:,} customers"
        if self.purpose == "train":
            what += f" ({self.rows:,} of {self.rows_of:,} training rows, validation customers not counted)"
        else:
            what += " known at the test as-of"
        return f"{what}, seeded by customer ('{self.purpose}' sample, seed {self.seed})"


def sample_rank(customer_ids: pd.Series, seed: int, purpose: str) -> np.ndarray:
    """A pseudo-random uint64 of each customer id, fixed by ``seed`` and ``purpose``.

    A sample of n customers is the n smallest ranks: a customer's place depends on its own id
    and the seed only (not on the other customers), so the same customers are drawn in every
    snapshot and every run, and a larger sample contains the smaller one. Independent of
    :func:`validation_mask` (a different hash key), so the sample keeps its 20% of validation
    customers.
    """
    key = f"{purpose[:4]:_<4}{seed % 10**12:012d}"
    return pd.util.hash_array(customer_ids.astype(str).to_numpy(dtype=object), hash_key=key, categorize=False)


def _known_counts(signup_date: pd.Series, as_of_dates: list[date]) -> np.ndarray:
    """Snapshots (of ``as_of_dates``) each customer is in: those with ``signup_date < as_of``.

    Nanoseconds as the feature engine compares them (a missing sign-up date is known at every
    as-of, as there).
    """
    signup = signup_date.to_numpy(dtype="datetime64[ns]").view(np.int64)
    cuts = np.sort(np.array([pd.Timestamp(d).value for d in as_of_dates], dtype=np.int64))
    return len(cuts) - np.searchsorted(cuts, signup, side="right")


def training_sample(
    customers: pd.DataFrame, train_dates: list[date], max_train_rows: int, seed: int
) -> CustomerSample | None:
    """The seeded customers whose training rows fill ``max_train_rows``; None when all fit.

    Training rows are (customer, as-of) rows of the non-validation customers. The sample takes
    customers in :func:`sample_rank` order while their training rows add up to at most
    ``max_train_rows``; the validation customers among them come along (about 20%, as in the
    whole base). Every sampled customer is in every snapshot it is known at; customers known
    at none of the training as-of dates are not drawn.

    Parameters
    ----------
    customers : DataFrame
        ``customer_id`` and ``signup_date`` of the base.
    train_dates : list of date
        The training as-of dates.
    max_train_rows : int
        The cap on training rows (``TrainConfig.max_train_rows``).
    seed : int
        ``TrainConfig.random_state``.
    """
    known = _known_counts(customers["signup_date"], train_dates)
    ids = customers["customer_id"].iloc[np.flatnonzero(known > 0)]  # in at least one snapshot
    rows = np.where(validation_mask(ids), 0, known[known > 0])
    total = int(rows.sum())
    if total <= max_train_rows:
        return None
    order = np.argsort(sample_rank(ids, seed, "train"), kind="stable")
    taken = int(np.searchsorted(np.cumsum(rows[order]), max_train_rows, side="right"))
    chosen = np.sort(order[:taken])
    return CustomerSample(_sorted_ids(ids, chosen), len(ids), int(rows[chosen].sum()), total, seed, "train")


def evaluation_sample(
    customers: pd.DataFrame, test_date: date, max_customers: int, seed: int, purpose: str = "test"
) -> CustomerSample | None:
    """The seeded ``max_customers`` of the customers known at ``test_date``; None when all fit.

    With the same ``seed`` a smaller ``max_customers`` gives a subset of a larger one (the truth
    sample is nested in the test sample).
    """
    known = np.flatnonzero(_known_counts(customers["signup_date"], [test_date]) > 0)
    if len(known) <= max_customers:
        return None
    ids = customers["customer_id"].iloc[known]
    order = np.argsort(sample_rank(ids, seed, "test"), kind="stable")
    chosen = np.sort(order[:max_customers])
    return CustomerSample(_sorted_ids(ids, chosen), len(known), max_customers, len(known), seed, purpose)


def _sorted_ids(ids: pd.Series, rows: np.ndarray) -> pd.Series:
    return ids.iloc[rows].astype(str).sort_values().reset_index(drop=True)
