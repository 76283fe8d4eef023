"""Which rows train, which validate, which test: out of time, and never the same customer twice.

* **test**: the latest as-of date whose horizon is observed; held out in time;
* **train**: ``train_snapshots`` monthly as-of dates before it, each with its whole horizon
  ending on or before the test as-of date (no label window overlaps the test period);
* **validation**: a stable 20% of *customers* (hash of the id) taken out of the training
  snapshots, halved again by the trainer into early stopping and calibration. Splitting by
  customer keeps one customer's adjacent months from sitting on both sides.
"""

from __future__ import annotations

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
