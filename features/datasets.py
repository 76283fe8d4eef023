"""Real CRM bases built from data that ships inside installed packages (nothing is downloaded).

CDNOW
-----
The CDNOW master file records every purchase, January 1997 to June 1998, of the 23,570
customers who made their first purchase at the online music retailer CDNOW in the first
quarter of 1997: 69,659 rows of customer id, date (YYYYMMDD), number of CDs and dollars.
Fader, Hardie & Lee (2005) fitted BG/NBD to a 1/10th sample of this cohort; the master file
holds all of it. It ships inside the ``lifetimes`` package (``lifetimes/datasets/
CDNOW_master.txt``), which belongs to the optional ``bench`` extra, so it is located, never
imported (``lifetimes`` is old and slow to import).

How the file maps onto the contract (``schema.py``):

* ``customers``: one row per customer; ``customer_id`` is the id exactly as the file writes it
  (zero-padded text, ``"00001"``); ``signup_date`` is the day of the first purchase; CDNOW
  records no attributes, so ``segment`` is ``"B2C"`` and ``region`` and
  ``acquisition_channel`` are ``"unknown"``.
* ``transactions``: one row per file row, all 69,659 kept (a customer with several rows on one
  day keeps them all); ``ts`` is the day at midnight; ``order_id`` is
  ``"{customer_id}-{n}"``, n numbering each customer's rows 1, 2, ... in file order;
  ``product_category`` is ``"music"``; ``revenue`` is the dollars. The number of CDs has no
  column in the contract and is dropped.
* **Cost is an assumption.** CDNOW records revenue only, so every line is given
  ``cost = revenue * (1 - margin_rate)``, a flat gross margin of ``margin_rate`` (30% by
  default, a parameter). Margin-based figures on this base therefore scale revenue by one
  constant and carry no information of their own.
* no ``invoices``, no ``interactions``.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005). "Counting Your Customers" the
   Easy Way: An Alternative to the Pareto/NBD Model. *Marketing Science* 24(2), 275-284.
.. [2] Fader, P. S. and Hardie, B. G. S. (2001). Forecasting Repeat Sales at CDNOW: A Case
   Study. *Interfaces* 31(3), S94-S107.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from importlib.util import find_spec
from pathlib import Path

import pandas as pd

from crmscore.features.io import Base, write_base

logger = logging.getLogger(__name__)

_STRING = pd.StringDtype("pyarrow")

#: the columns of the master file, in order
_MASTER_COLUMNS: tuple[str, ...] = ("customer_id", "date", "number_of_cds", "dollars")

DEFAULT_MARGIN_RATE = 0.30

# The benchmark protocol of BENCHMARKS.md ("Score quality on real data: CDNOW"): fit on
# purchases up to and including 1997-09-30, score the 39 weeks 1997-10-01 .. 1998-06-30.
# In the project's as-of convention (as-of T is the start of day T; events with ts < T are
# the past) that is as-of 1997-10-01 with a horizon of 273 days: the window
# 1997-10-01 <= ts < 1998-07-01, i.e. 1997-10-01 .. 1998-06-30 inclusive.
CDNOW_CALIBRATION_END = date(1997, 9, 30)
CDNOW_HOLDOUT_START = date(1997, 10, 1)
CDNOW_HOLDOUT_END = date(1998, 6, 30)


class DatasetUnavailableError(RuntimeError):
    """A dataset's source is not installed (or not where its package should hold it)."""


@dataclass(frozen=True)
class CdnowProtocol:
    """Calibration / holdout split of the CDNOW benchmark, as calendar days (both inclusive).

    Attributes
    ----------
    calibration_end : date
        Last day of the calibration period (the period starts with the data, 1997-01-01).
    holdout_start : date
        First day of the holdout period.
    holdout_end : date
        Last day of the holdout period, the last day of the data.

    Notes
    -----
    ``as_of`` and ``horizon_days`` give the same split in the project's convention: the
    holdout is ``as_of <= ts < as_of + horizon_days``.
    """

    calibration_end: date = CDNOW_CALIBRATION_END
    holdout_start: date = CDNOW_HOLDOUT_START
    holdout_end: date = CDNOW_HOLDOUT_END

    @property
    def as_of(self) -> date:
        """The as-of date: the start of the first holdout day (1997-10-01)."""
        return self.holdout_start

    @property
    def horizon_days(self) -> int:
        """Length of the holdout in days, both ends included (273 = 39 weeks)."""
        return (self.holdout_end - self.holdout_start + timedelta(days=1)).days


CDNOW_PROTOCOL = CdnowProtocol()


def cdnow_master_path() -> Path:
    """Locate the CDNOW master file inside the installed ``lifetimes`` package.

    The package is found with :func:`importlib.util.find_spec`, not imported.

    Returns
    -------
    Path
        ``.../site-packages/lifetimes/datasets/CDNOW_master.txt``.

    Raises
    ------
    DatasetUnavailableError
        If ``lifetimes`` is not installed, or its copy lacks the file.

    References
    ----------
    Fader, Hardie & Lee (2005), "Counting your customers the easy way", *Marketing Science*
    24(2), the source of the CDNOW cohort used in the BG/NBD literature.
    """
    spec = find_spec("lifetimes")
    if spec is None:
        raise DatasetUnavailableError(
            "the CDNOW dataset ships inside the 'lifetimes' package, which is not installed; "
            "install the bench extra: pip install 'crmscore[bench]'"
        )
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin is not None:
        locations = [str(Path(spec.origin).parent)]
    for location in locations:
        path = Path(location) / "datasets" / "CDNOW_master.txt"
        if path.is_file():
            return path
    raise DatasetUnavailableError(
        f"the 'lifetimes' package at {', '.join(locations) or '?'} has no "
        "datasets/CDNOW_master.txt; reinstall it: pip install --force-reinstall 'lifetimes>=0.11.3'"
    )


def _has_header(master_path: Path) -> bool:
    """True when the first line is a header (lifetimes' copy), False for the original file."""
    with open(master_path, encoding="ascii") as fh:
        first = fh.readline().split()
    return bool(first) and not first[0].isdigit()


def _read_master(master_path: Path) -> pd.DataFrame:
    """Read the master file: customer_id and date as text, dollars as float, in file order."""
    raw = pd.read_csv(
        master_path,
        sep=r"\s+",  # runs of spaces; the trailing \r of CRLF lines is whitespace too
        header=0 if _has_header(master_path) else None,
        names=list(_MASTER_COLUMNS),
        dtype={"customer_id": str, "date": str, "number_of_cds": str, "dollars": str},
        keep_default_na=False,
    )
    try:
        ts = pd.to_datetime(raw["date"], format="%Y%m%d")
        dollars = pd.to_numeric(raw["dollars"]).astype("float64")
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{master_path} is not a CDNOW master file (columns: customer id, date YYYYMMDD, "
            f"number of CDs, dollars): {exc}"
        ) from exc
    return pd.DataFrame({"customer_id": raw["customer_id"], "ts": ts, "dollars": dollars})


def load_cdnow_base(
    *, margin_rate: float = DEFAULT_MARGIN_RATE, master_path: Path | None = None
) -> Base:
    """Build a CRM base from the CDNOW master file.

    Parameters
    ----------
    margin_rate : float, default 0.30
        Assumed gross margin as a share of revenue, in [0, 1]. CDNOW records revenue only,
        so each line's cost is ``revenue * (1 - margin_rate)``.
    master_path : Path, optional
        The master file to read (with or without lifetimes' header line); by default the
        copy inside the installed ``lifetimes`` package (:func:`cdnow_master_path`).

    Returns
    -------
    Base
        ``customers`` (23,570 rows, in order of first appearance in the file) and
        ``transactions`` (69,659 rows, in file order), typed as the contract's modules
        expect; ``invoices`` and ``interactions`` are None. The same input gives the same
        base on every call.

    Raises
    ------
    ValueError
        If ``margin_rate`` is not in [0, 1], or the file does not parse as a master file.
    DatasetUnavailableError
        If no ``master_path`` is given and ``lifetimes`` is not installed.

    References
    ----------
    Fader, Hardie & Lee (2005), "Counting your customers the easy way: an alternative to the
    Pareto/NBD model", *Marketing Science* 24(2), 275-284 (the CDNOW data set).
    """
    if not 0.0 <= margin_rate <= 1.0:  # also rejects NaN
        raise ValueError(f"margin_rate must be a share between 0 and 1; got {margin_rate}")
    path = Path(master_path) if master_path is not None else cdnow_master_path()
    master = _read_master(path)

    customer_id = master["customer_id"].astype(_STRING)
    # n = 1, 2, ... over each customer's rows in file order: unique, and stable across calls
    n = master.groupby("customer_id", sort=False).cumcount() + 1
    revenue = master["dollars"]
    transactions = pd.DataFrame(
        {
            "customer_id": customer_id,
            "ts": master["ts"].astype("datetime64[ns]"),
            "order_id": (master["customer_id"] + "-" + n.astype(str)).astype(_STRING),
            "product_category": pd.Series("music", index=master.index, dtype=_STRING),
            "revenue": revenue,
            "cost": revenue * (1.0 - margin_rate),
        }
    )

    first = master.groupby("customer_id", sort=False)["ts"].min()
    customers = pd.DataFrame(
        {
            "customer_id": first.index.astype(_STRING),
            "signup_date": first.to_numpy().astype("datetime64[ns]"),
            "segment": "B2C",
            "region": "unknown",
            "acquisition_channel": "unknown",
        }
    )
    for column in ("segment", "region", "acquisition_channel"):
        customers[column] = customers[column].astype(_STRING)
    customers = customers.reset_index(drop=True)
    return Base(customers=customers, transactions=transactions)


def write_cdnow_base(out_path: Path, *, margin_rate: float = DEFAULT_MARGIN_RATE) -> Base:
    """Build the CDNOW base (:func:`load_cdnow_base`) and write it to ``out_path`` as Parquet.

    Parameters
    ----------
    out_path : Path
        Folder to write ``customers.parquet`` and ``transactions.parquet`` into; created
        if missing, existing files of those names are replaced.
    margin_rate : float, default 0.30
        Assumed gross margin as a share of revenue, in [0, 1]; cost = revenue * (1 - margin_rate).

    Returns
    -------
    Base
        The base as written.

    References
    ----------
    Fader, Hardie & Lee (2005), "Counting your customers the easy way", *Marketing Science*
    24(2), 275-284.
    """
    base = load_cdnow_base(margin_rate=margin_rate)
    write_base(base, out_path)
    logger.info(
        "wrote the CDNOW base (%d customers, %d transactions, margin_rate=%s) to %s",
        len(base.customers),
        len(base.transactions),
        margin_rate,
        out_path,
    )
    return base
