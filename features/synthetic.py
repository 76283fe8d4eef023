"""A synthetic CRM base with a known truth, for judging models against an oracle.

The generator is a per-customer, per-category purchase process in the spirit of BG/NBD
(Fader, Hardie & Lee 2005): each customer buys each product category at a rate that is
high right after a purchase of it and fades as that category goes unbought,

    h_ic(r) = lambda_ic * (rho + (1 - rho) * exp(-r / kappa_i)),            (1)

r being the (seasonally warped) time since the customer's last purchase of category c,
or since sign-up. A customer who stops buying therefore *lapses* visibly: recency is in the
record. Unlike BG/NBD there is no secret drop-out date: the rate at any time depends only on
the record (last purchase per category, sign-up) and on per-customer traits that leave
traces in it (purchase rate, category affinities, complaint proneness, spend, payment habits).
This makes the truth *learnable* (../shared/BENCHMARKS.md): the probabilities written as
truth are exactly those the outcomes are drawn from, given the record up to the as-of date.

Other mechanisms:

* spend per order is Gamma distributed around a customer-level scale (Gamma-Gamma spirit,
  Fader, Hardie & Lee 2005b); categories differ in price and margin rate; B2B buys more,
  in larger orders, at a lower margin;
* cost to serve is activity-based (Buttle, ch. 4): complaints and support contacts follow
  orders with customer-level probabilities, B2B accounts get sales visits, everyone gets
  campaigns; complaint-prone customers also buy less;
* invoices (all B2B and a share of B2C customers buy on account): a credit trait drives the
  share of invoices paid late, how late, and the rare invoice never paid, so behavioural
  credit scoring from payment history works as utilities and banks do it;
* seasonality peaks in early December (time is warped by the integral of the seasonal curve).

Truth (:func:`compute_truth`) for an as-of date T and horizon H, matching
``crmscore.features.labels``: churn probability (no purchase in [T, T+H)) and purchase
probability per category are exact, from (1); the default probability is exact for invoices
issued before T and Monte Carlo (Rao-Blackwellised over simulated continuations) for invoices
issued inside the horizon, which only matters when H > payment terms + 90 days; expected
margin is Monte Carlo over ``mc_paths`` simulated continuations (its standard error is written).

The truth conditions on the latent traits, which the record shows only in part. The best
prediction a model of the record can make (:func:`record_posterior`) inverts the generator:
the posterior of the traits given the record, under the priors of :func:`draw_traits`.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crmscore.features.io import Base
from crmscore.features.io import write_parquet_atomic as write_parquet_atomic  # used by the CLI
from crmscore.features.schema import INTERACTION_KINDS

logger = logging.getLogger(__name__)

START = date(2022, 1, 1)
END = date(2025, 1, 1)  # exclusive: the base records events before this day
CATEGORIES: tuple[str, ...] = ("books", "electronics", "fashion", "grocery", "home", "sports")
PRICE = np.array([0.5, 3.0, 1.0, 0.4, 1.5, 1.2])  # relative order value per category
MARGIN_RATE = np.array([0.30, 0.12, 0.45, 0.20, 0.30, 0.35])  # gross margin share
POPULARITY = np.array([0.8, 0.9, 1.4, 1.6, 1.1, 0.8])  # Dirichlet base measure
REGIONS = ("central", "east", "north", "south", "west")
B2C_CHANNELS = ("web", "store", "referral", "partner", "campaign")
B2B_CHANNELS = ("sales", "partner", "web")
RHO = 0.04  # floor of the purchase rate once a category has faded, share of the peak rate
SEASON_AMPLITUDE = 0.3
SEASON_PEAK_DAY = 340.0  # day of year of the seasonal peak (early December)
YEAR = 365.25
LATE_DAYS_DEFAULT = 90  # an invoice this many days past due is a default (labels.py)
# Priors of the traits (:func:`draw_traits`); :func:`record_posterior` inverts them.
RATE_SHAPE, RATE_SCALE = 1.6, 11.0  # Gamma: orders a year when engaged
B2B_RATE = 2.5
COMPLAINT_BETA = (1.0, 24.0)  # Beta: probability of a complaint after an order
COMPLAINT_PRONE_SHARE, COMPLAINT_PRONE_FACTOR, COMPLAINT_P_MAX = 0.08, 5.0, 0.6
COMPLAINT_RATE_EFFECT = 4.0  # rate x exp(-4 complaint_p): complaint-prone customers buy less
KAPPA_MEDIAN, KAPPA_LOG_SD = 200.0, 0.6  # log-normal: warped days a category stays warm
AFFINITY_CONCENTRATION = 0.7  # Dirichlet(POPULARITY x 0.7)
SPEND_MEDIAN, SPEND_LOG_SD, B2B_SPEND = 30.0, 0.55, 4.0  # log-normal order value scale
MARGIN_LOG_SD, B2B_MARGIN = 0.15, 0.8  # margin rate: MARGIN_RATE x log-normal, B2B x 0.8
B2B_CREDIT = 0.2  # the credit trait is N(0, 1), shifted by this for B2B (credit_payment_law)
TERMS_DAYS = (14, 30)  # payment terms of B2C and B2B customers buying on account
GAMMA_ORDER_SHAPE = 4.0  # an order's revenue is Gamma(4, scale x price / 4)
ACQUISITION_LAG, ACQUISITION_WINDOW = 0.3, 0.4  # the acquisition order: sign-up day + 0.3 .. 0.7
COST = {  # activity-based cost per contact, currency: (B2C, B2B)
    "complaint": (35.0, 80.0),
    "support": (6.0, 15.0),
    "visit": (60.0, 60.0),
    "campaign": (0.8, 0.8),
}


def check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive whole number; got {value!r}")


# --- seasonal time warp -------------------------------------------------------------------


def warp(t: np.ndarray | float) -> np.ndarray:
    """Operational time tau(t) = integral of the seasonal intensity s(u) = 1 + A cos(...), days."""
    w = 2 * np.pi / YEAR
    phase = -(SEASON_PEAK_DAY)
    t = np.asarray(t, dtype=np.float64)
    return t + SEASON_AMPLITUDE / w * (np.sin(w * (t + phase)) - np.sin(w * phase))


def _unwarp_newton(tau: np.ndarray) -> np.ndarray:
    """Inverse of :func:`warp` by Newton's method (warp is strictly increasing)."""
    w = 2 * np.pi / YEAR
    t = np.array(tau, dtype=np.float64, copy=True)
    # t = tau is within A * YEAR / 2pi (17 days) of the root; Newton converges quadratically
    # from there, to round-off within five steps.
    for _ in range(6):
        t -= (warp(t) - tau) / (1 + SEASON_AMPLITUDE * np.cos(w * (t - SEASON_PEAK_DAY)))
    return t


#: points per year of the tabulated inverse warp; linear interpolation between them is off
#: by at most h^2 / 8 * max|d''| ~ 1e-8 days (1 ms) for h = YEAR / 2^17
UNWARP_GRID = 2**17


@functools.cache
def _unwarp_table() -> tuple[np.ndarray, np.ndarray]:
    """d(tau) = unwarp(tau) - tau at tau = j * YEAR / UNWARP_GRID, j = 0 .. UNWARP_GRID - 1,
    and its increments to the next grid point (d has period YEAR, as warp(t + YEAR) =
    warp(t) + YEAR)."""
    grid = np.arange(UNWARP_GRID + 1) * (YEAR / UNWARP_GRID)
    d = _unwarp_newton(grid) - grid
    return d[:-1].copy(), np.diff(d)


def unwarp(tau: np.ndarray) -> np.ndarray:
    """Inverse of :func:`warp` (strictly increasing), interpolated in a table of its periodic
    part solved by Newton's method; exact to about 1e-8 days (checked in the tests).

    A table look-up costs a fraction of the six Newton steps (a sine and a cosine each) that
    every one of ~20M purchase times would otherwise take.
    """
    tau = np.asarray(tau, dtype=np.float64)
    base, slope = _unwarp_table()
    x = tau * (UNWARP_GRID / YEAR)
    cell = np.floor(x)
    x -= cell  # position inside the cell, 0 <= x < 1
    j = cell.astype(np.intp) & (UNWARP_GRID - 1)  # the cell's place in its year (a power of 2)
    return tau + base[j] + x * slope[j]


# --- the purchase process (1) ---------------------------------------------------------------


def cumulative_hazard(r: np.ndarray, lam: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """H(r) = integral of (1) from 0 to r: expected purchases r (warped) days after a reset."""
    return lam * (RHO * r + (1 - RHO) * kappa * (-np.expm1(-r / kappa)))


def solve_waiting_time(target: np.ndarray, lam: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """Solve H(r) = target for r >= 0 (inverse-transform sampling of the next purchase).

    In units of kappa, x = r / kappa solves g(x) = RHO x + (1 - RHO)(1 - exp(-x)) = s with
    s = target / (lam kappa). g is increasing and concave, so it lies below both of its
    asymptotes, x and RHO x + 1 - RHO: the larger of their solutions is below the root, and
    Newton's method from there climbs monotonically to it (in 2 to 6 steps here).
    """
    s = target / (lam * kappa)
    x = np.maximum(s, (s - (1 - RHO)) / RHO)
    todo: np.ndarray | None = None  # None: every element
    for _ in range(60):
        xx, ss = (x, s) if todo is None else (x[todo], s[todo])
        e = np.exp(-xx)
        step = (RHO * xx + (1 - RHO) * (1 - e) - ss) / (RHO + (1 - RHO) * e)  # g / g'
        keep = np.abs(step) > 1e-10 * (1 + xx)
        xx -= step
        if todo is None:
            todo = np.flatnonzero(keep)
        else:
            x[todo] = xx
            todo = todo[keep]
        if todo.size == 0:
            break
    return x * kappa


@dataclass(frozen=True)
class Traits:
    """Latent per-customer traits (the part of the truth a model never sees directly)."""

    frame: pd.DataFrame  # one row per customer; columns listed in :func:`draw_traits`

    def matrix(self, prefix: str) -> np.ndarray:
        """Per-category trait as an (n_customers, n_categories) array."""
        return self.frame[[f"{prefix}_{c}" for c in CATEGORIES]].to_numpy(np.float64)


def credit_payment_law(credit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The payment habits a credit trait gives: P(an invoice is never paid), the share paid
    late, and the mean days late when late."""
    never_pay = 1 / (1 + np.exp(-(-6.5 + 1.3 * credit)))
    late_share = 1 / (1 + np.exp(-(-1.2 + 1.1 * credit)))
    late_mean = np.exp(2.0 + 0.65 * credit)  # days late when late
    return never_pay, late_share, late_mean


def draw_traits(n_customers: int, rng: np.random.Generator) -> Traits:
    """Draw the latent traits of ``n_customers`` customers."""
    n = n_customers
    horizon = (END - START).days
    b2b = rng.random(n) < 0.15
    # Acquisition over the whole period, more customers early (an established base).
    signup_t = np.floor(horizon * rng.beta(0.9, 1.3, n) * 0.97)
    base_rate = rng.gamma(RATE_SHAPE, RATE_SCALE, n) * np.where(b2b, B2B_RATE, 1.0)  # orders a year when engaged
    complaint_p = rng.beta(*COMPLAINT_BETA, n) * np.where(rng.random(n) < COMPLAINT_PRONE_SHARE, COMPLAINT_PRONE_FACTOR, 1.0)
    complaint_p = np.minimum(complaint_p, COMPLAINT_P_MAX)
    rate = base_rate * np.exp(-COMPLAINT_RATE_EFFECT * complaint_p)  # complaint-prone customers buy less
    kappa = np.exp(rng.normal(np.log(KAPPA_MEDIAN), KAPPA_LOG_SD, n))  # warped days a category stays warm
    affinity = rng.dirichlet(POPULARITY * AFFINITY_CONCENTRATION, n)
    spend = np.exp(rng.normal(np.log(SPEND_MEDIAN), SPEND_LOG_SD, n)) * np.where(b2b, B2B_SPEND, 1.0)
    margin = MARGIN_RATE[None, :] * np.exp(rng.normal(0.0, MARGIN_LOG_SD, (n, len(CATEGORIES))))
    margin *= np.where(b2b, B2B_MARGIN, 1.0)[:, None]
    support_p = rng.beta(2.0, 10.0, n) * np.where(b2b, 1.6, 1.0)
    visit_rate = np.where(b2b, rng.gamma(2.0, 2.5, n), 0.0)  # sales visits a year
    on_account = b2b | (rng.random(n) < 0.2)
    credit = rng.normal(0.0, 1.0, n) + np.where(b2b, B2B_CREDIT, 0.0)
    never_pay, late_share, late_mean = credit_payment_law(credit)
    acquisition = rng.random(n) < 0.97  # 3% register without buying yet
    region = rng.choice(len(REGIONS), n, p=[0.3, 0.2, 0.15, 0.2, 0.15])
    channel_b2c = rng.choice(len(B2C_CHANNELS), n, p=[0.45, 0.25, 0.1, 0.1, 0.1])
    channel_b2b = rng.choice(len(B2B_CHANNELS), n, p=[0.6, 0.25, 0.15])
    frame = pd.DataFrame(
        {
            "b2b": b2b,
            "signup_t": signup_t,
            "rate": rate,
            "kappa": kappa,
            "spend": spend,
            "complaint_p": complaint_p,
            "support_p": support_p,
            "visit_rate": visit_rate,
            "on_account": on_account,
            "terms_days": np.where(b2b, TERMS_DAYS[1], TERMS_DAYS[0]),
            "credit": credit,
            "never_pay": never_pay,
            "late_share": late_share,
            "late_mean_days": late_mean,
            "acquisition": acquisition,
            "region": region,
            "channel": np.where(b2b, channel_b2b + len(B2C_CHANNELS), channel_b2c),
        }
    )
    for j, c in enumerate(CATEGORIES):
        frame[f"affinity_{c}"] = affinity[:, j]
        frame[f"margin_{c}"] = margin[:, j]
    return Traits(frame)


def simulate_purchases(
    lam: np.ndarray,
    kappa: np.ndarray,
    start_tau: np.ndarray,
    end_tau: np.ndarray,
    rng: np.random.Generator,
    offset: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate process (1) for many independent (customer, category) pairs.

    Parameters
    ----------
    lam, kappa : ndarray of shape (n_pairs,)
        Peak rate (purchases per warped day) and memory (warped days) of each pair.
    start_tau, end_tau : ndarray of shape (n_pairs,)
        Warped time of the last reset and end of the window (exclusive).
    offset : ndarray of shape (n_pairs,), optional
        Cumulative hazard already spent without a purchase since the reset (conditions the
        first waiting time on no purchase so far).

    Returns
    -------
    pair, tau : ndarray of shape (n_events,)
        Index of the pair and warped time of every purchase, in simulation order.
    """
    pairs, times = [], []
    # Pairs with a zero rate never buy; the others are carried along compacted, so each
    # round reads only the pairs still inside their window.
    idx = np.flatnonzero(lam > 0)
    lam, kappa, end = lam[idx], kappa[idx], end_tau[idx]
    last = start_tau[idx].astype(np.float64)
    spent = None if offset is None else offset[idx].astype(np.float64)
    while idx.size:
        target = rng.exponential(1.0, idx.size)
        if spent is not None:
            target += spent
            spent = None
        # The next purchase falls past the window (H(end - last) <= target) for most lapsed
        # pairs: they stop here.
        tau = last + solve_waiting_time(target, lam, kappa)
        ok = tau < end
        idx, tau = idx[ok], tau[ok]
        lam, kappa, end = lam[ok], kappa[ok], end[ok]
        pairs.append(idx)
        times.append(tau)
        last = tau
    if not pairs:
        return np.empty(0, np.int64), np.empty(0)
    return np.concatenate(pairs), np.concatenate(times)


# --- the base ------------------------------------------------------------------------------

#: customers simulated together; each block draws from its own random stream, spawned from
#: the seed, so the base is the same however many threads run the blocks
BLOCK_CUSTOMERS = 65_536

#: the ASCII digits of 0000 .. 9999, one 32-bit word per number holding its four bytes
_DIGITS4 = (
    (np.arange(10_000)[:, None] // np.array([1000, 100, 10, 1]) % 10) + ord("0")
).astype(np.uint8).view(np.uint32).ravel()


def _byte_field(chars: np.ndarray, offset: int, dtype: type[np.integer]) -> np.ndarray:
    """Column ``offset`` of a C-ordered (n, size) byte matrix as a strided 1-D array of ``dtype``."""
    return np.ndarray((chars.shape[0],), dtype=dtype, buffer=chars, offset=offset,
                      strides=(chars.shape[1],))


def _id_chars(prefix: str, n: int, width: int) -> np.ndarray:
    """Keys ``prefix`` + zero-padded 0 .. n - 1 (C0000000, C0000001, ...) as an (n, size) byte matrix.

    Consecutive numbers need no arithmetic per key: the last four digits cycle through the
    table of 0000 .. 9999, and a digit further left is constant over runs of 10^p keys.
    ~50x faster than formatting Python strings, ~10x faster than digit-by-digit division.
    """
    if width < 4:
        raise ValueError(f"width must be at least 4 digits; got {width}")
    size = len(prefix) + width
    rows = -(-n // 10_000) * 10_000  # whole cycles of the last four digits
    chars = np.empty((rows, size), dtype=np.uint8)
    for i, byte in enumerate(prefix.encode()):
        _byte_field(chars, i, np.uint8)[:] = byte
    low = _byte_field(chars, size - 4, np.uint32).reshape(-1, 10_000)
    low[:] = _DIGITS4[None, :]
    for p in range(4, width):  # digit 10^p
        digit = _byte_field(chars, size - 1 - p, np.uint8)
        run = 10**p
        for q in range(-(-rows // run)):
            digit[q * run : (q + 1) * run] = ord("0") + q % 10
    return chars[:n]


def _text(chars: np.ndarray) -> pa.Array:
    """Rows of a C-ordered (n, size) byte matrix as an Arrow string array, without a copy."""
    n, size = chars.shape
    large = n * size >= 2**31  # beyond 32-bit offsets
    offsets = np.arange(0, (n + 1) * size, size, dtype=np.int64 if large else np.int32)
    kind = pa.LargeStringArray if large else pa.StringArray
    return kind.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def _ids(prefix: str, n: int, width: int) -> pa.Array:
    """Keys ``prefix`` + zero-padded 0 .. n - 1, as an Arrow string array."""
    return _text(_id_chars(prefix, n, width))


def _take_rows(chars: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``chars[rows]`` for a byte matrix, gathered as fixed-width records (one copy each)."""
    records = chars.view(np.dtype((np.void, chars.shape[1]))).ravel()
    return records[rows].view(np.uint8).reshape(rows.size, chars.shape[1])


def _timestamps(t_days: np.ndarray) -> pa.Array:
    """Days since START (float) -> timestamp[ns], rounded down to the second."""
    base = np.datetime64(START.isoformat(), "s").astype(np.int64)
    ns = (base + np.floor(t_days * 86_400.0).astype(np.int64)) * 1_000_000_000
    return pa.array(ns.view("datetime64[ns]"))


def _dates(day_numbers: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    """Whole days since START -> timestamp[ns] at midnight; null where ``missing``."""
    base = np.datetime64(START.isoformat(), "D").astype(np.int64)
    ns = (base + day_numbers.astype(np.int64)) * (86_400 * 1_000_000_000)
    return pa.array(ns.view("datetime64[ns]"), mask=missing)


def _strings(values: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    """Codes into ``values`` as a string array (a dictionary cast beats a take by 2x)."""
    codes = pa.array(codes.astype(np.int32, copy=False))
    return pa.DictionaryArray.from_arrays(codes, pa.array(values)).cast(pa.string())


@dataclass(frozen=True)
class SyntheticBase:
    """The generated tables as Arrow tables, plus the traits behind them."""

    tables: dict[str, pa.Table]
    traits: Traits

    def to_base(self) -> Base:
        """Typed pandas frames (ids and labels as Arrow-backed strings), per the contract."""
        frames = {
            name: t.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
            for name, t in self.tables.items()
        }
        return Base(**frames)

    def restrict(self, customer_ids: pd.Series) -> SyntheticBase:
        """The base limited to ``customer_ids``: their traits and their rows of every table
        (each customer's truth reads only its own rows, so it is unchanged)."""
        ids = customer_ids.astype(str)
        wanted = pa.array(ids.to_numpy(dtype=object), pa.string())
        tables = {name: t.filter(pc.is_in(t.column("customer_id"), value_set=wanted))
                  for name, t in self.tables.items()}
        frame = self.traits.frame
        traits = frame[frame["customer_id"].astype(str).isin(set(ids))].reset_index(drop=True)
        return SyntheticBase(tables=tables, traits=Traits(traits))


#: the traits a block of customers is simulated from
_BLOCK_TRAITS = (
    "b2b", "signup_t", "rate", "kappa", "spend", "complaint_p", "support_p", "visit_rate",
    "on_account", "terms_days", "never_pay", "late_share", "late_mean_days", "acquisition",
)


def generate_base(n_customers: int, seed: int, *, n_jobs: int = 2) -> SyntheticBase:
    """Generate a synthetic CRM base of ``n_customers`` from 2022-01-01 to 2024-12-31.

    Parameters
    ----------
    n_customers : int
        Number of customers, > 0. About 20 transactions per customer result.
    seed : int
        Seed of the random generator; the same seed gives the same tables, byte for byte.
    n_jobs : int
        Threads simulating blocks of :data:`BLOCK_CUSTOMERS` customers (numpy releases the
        GIL in its array loops); the tables do not depend on it, only on the seed.
    """
    check_positive_int("n_customers", n_customers)
    check_positive_int("n_jobs", n_jobs)
    rng = np.random.default_rng(seed)
    traits = draw_traits(n_customers, rng)
    tr = traits.frame
    n = n_customers
    width = max(7, len(str(n_customers)))
    columns = {name: tr[name].to_numpy() for name in _BLOCK_TRAITS}
    columns["affinity"] = traits.matrix("affinity")
    columns["margin"] = traits.matrix("margin")
    edges = list(range(0, n, BLOCK_CUSTOMERS)) + [n]
    streams = rng.spawn(len(edges) - 1)

    def block(b: int) -> dict[str, np.ndarray]:
        lo, hi = edges[b], edges[b + 1]
        return _simulate_block({k: v[lo:hi] for k, v in columns.items()}, lo, streams[b])

    if n_jobs == 1 or len(streams) == 1:
        parts = [block(b) for b in range(len(streams))]
    else:
        with ThreadPoolExecutor(min(n_jobs, len(streams))) as pool:
            parts = list(pool.map(block, range(len(streams))))
    events = {}
    for name in list(parts[0]):  # a column at a time: only one is ever held twice
        events[name] = np.concatenate([p.pop(name) for p in parts])
    del parts

    customer_chars = _id_chars("C", n, width)
    customer_ids = _text(customer_chars)

    def customer_column(cust: np.ndarray) -> pa.Array:
        return _text(_take_rows(customer_chars, cust))

    n_tx = events["tx_cust"].size
    transactions = pa.table(
        {
            "customer_id": customer_column(events.pop("tx_cust")),
            "ts": _timestamps(events.pop("tx_t")),
            "order_id": _ids("O", n_tx, max(9, len(str(n_tx)))),
            "product_category": _strings(CATEGORIES, events.pop("tx_cat")),
            "revenue": events.pop("revenue"),
            "cost": events.pop("cost"),
        }
    )
    customers = pa.table(
        {
            "customer_id": customer_ids,
            "signup_date": _dates(columns["signup_t"]),
            "segment": _strings(("B2C", "B2B"), columns["b2b"].astype(np.int32)),
            "region": _strings(REGIONS, tr["region"].to_numpy()),
            "acquisition_channel": _strings(B2C_CHANNELS + B2B_CHANNELS, tr["channel"].to_numpy()),
        }
    )
    n_inv = events["inv_cust"].size
    invoices = pa.table(
        {
            "customer_id": customer_column(events.pop("inv_cust")),
            "invoice_id": _ids("I", n_inv, max(9, len(str(n_inv)))),
            "issue_date": _dates(events.pop("inv_issue")),
            "due_date": _dates(events.pop("inv_due")),
            "amount": events.pop("inv_amount"),
            "paid_date": _dates(events.pop("inv_paid"), missing=events.pop("inv_unpaid")),
        }
    )
    interactions = pa.table(
        {
            "customer_id": customer_column(events.pop("it_cust")),
            "ts": _timestamps(events.pop("it_t")),
            "kind": _strings(INTERACTION_KINDS, events.pop("it_kind")),
            "cost_to_serve": events.pop("it_cost"),
        }
    )
    tables = {
        "customers": customers,
        "transactions": transactions,
        "invoices": invoices,
        "interactions": interactions,
    }
    logger.info(
        "generated %d customers, %d transactions, %d invoices, %d interactions",
        n, n_tx, n_inv, interactions.num_rows,
    )
    traits.frame.insert(0, "customer_id", pd.array(customer_ids, dtype=pd.StringDtype("pyarrow")))
    return SyntheticBase(tables=tables, traits=traits)


def _simulate_block(tr: dict[str, np.ndarray], lo: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The events of customers ``lo, lo + 1, ...`` with traits ``tr`` (arrays over the block).

    Returns numeric columns of the transactions (``tx_*``, ``revenue``, ``cost``), invoices
    (``inv_*``) and interactions (``it_*``), each table in (customer, time) order, customers
    numbered from 0 for the whole base.
    """
    m, k = tr["rate"].size, len(CATEGORIES)
    end_t = float((END - START).days)
    signup_t = tr["signup_t"]

    # The acquisition order, on the sign-up day, in a category drawn from the affinities.
    affinity = tr["affinity"]
    acq_cust = np.flatnonzero(tr["acquisition"])
    u = rng.random(acq_cust.size)
    acq_cat = (affinity[acq_cust].cumsum(axis=1) < u[:, None]).sum(axis=1).clip(0, k - 1)
    acq_t = signup_t[acq_cust] + ACQUISITION_LAG + ACQUISITION_WINDOW * rng.random(acq_cust.size)

    # Purchases: one independent process per (customer, category), all warm at sign-up; the
    # acquisition order resets its category's clock as any purchase does (r in (1) runs from
    # the last purchase, else sign-up), at the second the record keeps, as compute_truth reads it.
    lam = (tr["rate"][:, None] * affinity / YEAR).ravel()
    kappa = np.repeat(tr["kappa"], k)
    start = np.repeat(warp(signup_t + 0.5), k)
    acq_pair = acq_cust * k + acq_cat
    start[acq_pair] = np.maximum(start[acq_pair], warp(np.floor(acq_t * 86_400.0) / 86_400.0))
    pair, tau = simulate_purchases(lam, kappa, start, np.full(m * k, warp(end_t)), rng)
    cust = np.concatenate([acq_cust, pair // k])
    cat = np.concatenate([acq_cat, pair % k])
    t = np.concatenate([acq_t, unwarp(tau)])
    # By customer, then time; a key below 2^16 * 4096 keeps ~1e-7 day resolution in float64.
    order = np.argsort(cust * 4096.0 + t, kind="stable")
    cust, cat, t = cust[order], cat[order], t[order]

    spend = tr["spend"][cust] * PRICE[cat]
    revenue = np.round(rng.gamma(GAMMA_ORDER_SHAPE, spend / GAMMA_ORDER_SHAPE), 2)
    cost = np.round(revenue * (1 - tr["margin"][cust, cat]), 2)
    out = {"tx_cust": (cust + lo).astype(np.int32), "tx_t": t, "tx_cat": cat.astype(np.int8),
           "revenue": revenue, "cost": cost}
    out |= _invoices(tr, cust, t, revenue, rng, end_t, lo)
    out |= _interactions(tr, cust, t, rng, end_t, lo)
    return out


def payment_offset_survival(
    x: np.ndarray, terms: np.ndarray, never: np.ndarray, late: np.ndarray, mean: np.ndarray
) -> np.ndarray:
    """P(paid_date - due_date >= x days), the payment law of :func:`_invoices`.

    Never paid with probability ``never``; otherwise late with probability ``late`` by
    1 + floor(Exp(mean)) days, else on time, uniformly 0..floor(terms / 2) days early.
    """
    x = np.asarray(x, dtype=np.float64)
    early = np.floor(terms / 2)
    on_time = np.clip((-x + 1) / (early + 1), 0.0, 1.0)  # P(offset >= x) for uniform {-early..0}
    on_time = np.where(x <= -early, 1.0, on_time)
    late_tail = np.where(x <= 1, 1.0, np.exp(-(x - 1) / mean))
    return never + (1 - never) * (late * late_tail + (1 - late) * on_time * (x <= 0))


def _invoices(tr, cust, t, revenue, rng, end_t, lo) -> dict[str, np.ndarray]:
    """Invoices of the orders of customers buying on account (block-local ``cust``)."""
    on_account = tr["on_account"][cust]
    ic, it, amount = cust[on_account], t[on_account], revenue[on_account]
    issue = np.floor(it)
    terms = tr["terms_days"][ic]
    due = issue + terms
    u = rng.random(ic.size)
    never = tr["never_pay"][ic]
    late = tr["late_share"][ic]
    late_days = 1 + np.floor(rng.exponential(tr["late_mean_days"][ic]))
    early_days = np.floor(rng.random(ic.size) * (np.floor(terms / 2) + 1))
    is_late = u < never + (1 - never) * late
    paid = due + np.where(is_late, late_days, -early_days)
    unpaid = (u < never) | (paid >= end_t)  # never paid, or not yet paid when the data ends
    return {
        "inv_cust": (ic + lo).astype(np.int32),
        "inv_issue": issue,
        "inv_due": due,
        "inv_amount": amount,
        "inv_paid": np.where(unpaid, 0, paid),
        "inv_unpaid": unpaid,
    }


def _interactions(tr, cust, t, rng, end_t, lo) -> dict[str, np.ndarray]:
    """Service contacts after orders, sales visits and campaigns (block-local ``cust``)."""
    m = tr["rate"].size
    signup_t = tr["signup_t"]
    parts = []
    # Complaints and support contacts follow orders.
    for kind, prob, lag in (("complaint", "complaint_p", 10.0), ("support", "support_p", 5.0)):
        hit = rng.random(cust.size) < tr[prob][cust]
        parts.append((kind, cust[hit], t[hit] + 0.5 + lag * rng.random(hit.sum())))
    # Sales visits (B2B) and campaigns (everyone) run over the relationship's life.
    tenure_years = (end_t - signup_t) / YEAR
    for kind, rate in (("visit", tr["visit_rate"]), ("campaign", np.full(m, 2.0))):
        count = rng.poisson(rate * tenure_years)
        who = np.repeat(np.arange(m), count)
        parts.append((kind, who, signup_t[who] + rng.random(who.size) * (end_t - signup_t[who])))
    k = np.concatenate([np.full(p[1].size, INTERACTION_KINDS.index(p[0]), np.int8) for p in parts])
    who = np.concatenate([p[1] for p in parts])
    when = np.concatenate([p[2] for p in parts])
    keep = when < end_t
    k, who, when = k[keep], who[keep], when[keep]
    order = np.argsort(who * 4096.0 + when, kind="stable")
    k, who, when = k[order], who[order], when[order]
    cost_table = np.array([COST[x] for x in INTERACTION_KINDS])  # (kind, segment)
    return {
        "it_cust": (who + lo).astype(np.int32),
        "it_t": when,
        "it_kind": k,
        "it_cost": cost_table[k, tr["b2b"][who].astype(int)],
    }


# --- truth -----------------------------------------------------------------------------------


def _positions(values: pa.ChunkedArray, universe: pd.Series) -> np.ndarray:
    """Position of each value in ``universe`` (unique), -1 when absent: one Arrow hash join,
    no Python strings."""
    value_set = pa.array(universe, type=pa.string(), from_pandas=True)
    return pc.index_in(values, value_set=value_set).fill_null(-1).to_numpy().astype(np.int64)


def _day(as_of: date) -> float:
    return float((as_of - START).days)


def _horizon(as_of: date, horizon_days: int) -> tuple[float, float]:
    """T and T + H in days since :data:`START`; a ValueError naming them when outside the base."""
    t0, t1 = _day(as_of), _day(as_of) + horizon_days
    if not (0 < t0 and t1 <= _day(END)):
        raise ValueError(
            f"as_of + horizon_days must lie within the generated period {START} .. {END - timedelta(days=1)}; "
            f"got as_of={as_of}, horizon_days={horizon_days}"
        )
    return t0, t1


def _days_since_start(ts: pa.ChunkedArray) -> np.ndarray:
    """Timestamps (to the second) as fractional days since :data:`START`, the simulation's clock."""
    seconds = ts.to_numpy().astype("datetime64[s]").astype(np.int64)
    return (seconds - np.datetime64(START.isoformat(), "s").astype(np.int64)) / 86_400.0


#: (customer, category, path) triples simulated at once by :func:`compute_truth`: its memory
#: is bounded by this, not by customers x categories x paths (1.2e9 for 1M customers)
TRUTH_BLOCK_PAIRS = 2**21


def compute_truth(
    synthetic: SyntheticBase, as_of: date, horizon_days: int, *, mc_paths: int = 200, seed: int = 0
) -> pd.DataFrame:
    """The true probabilities and expectation behind each label at ``as_of`` for ``horizon_days``.

    Returns one row per customer known at ``as_of`` (signed up before it): ``customer_id``,
    ``true_churn`` (P(no purchase in [T, T+H))), ``true_purchase_<category>``,
    ``true_default`` (NaN for customers not buying on account), ``true_margin`` (expected
    margin in the horizon, currency) and ``true_margin_se`` (its Monte Carlo standard error).
    The Monte Carlo part runs over blocks of customers, each with its own random stream
    spawned from ``seed``.
    """
    check_positive_int("horizon_days", horizon_days)
    check_positive_int("mc_paths", mc_paths)
    t0, t1 = _horizon(as_of, horizon_days)
    tr = synthetic.traits.frame
    known = np.flatnonzero(tr["signup_t"].to_numpy() < t0)
    k = len(CATEGORIES)
    tx = synthetic.tables["transactions"]
    tx_cust = _positions(tx.column("customer_id"), tr["customer_id"])
    tx_t = _days_since_start(tx.column("ts"))
    tx_cat = _positions(tx.column("product_category"), pd.Series(CATEGORIES))
    # Last reset per (customer, category) before T: the last purchase, else sign-up.
    last = np.repeat(warp(tr["signup_t"].to_numpy() + 0.5), k).reshape(-1, k)
    past = tx_t < t0
    pair = tx_cust[past] * k + tx_cat[past]
    flat = last.ravel()
    np.maximum.at(flat, pair, warp(tx_t[past]))
    last = flat.reshape(-1, k)[known]

    rate = tr["rate"].to_numpy()[known]
    kappa = tr["kappa"].to_numpy()[known][:, None]
    lam = rate[:, None] * synthetic.traits.matrix("affinity")[known] / YEAR
    tau0, tau1 = warp(t0), warp(t1)
    spent = cumulative_hazard(tau0 - last, lam, kappa)
    expected = cumulative_hazard(tau1 - last, lam, kappa) - spent
    p_none = np.exp(-expected)  # (n_known, k)
    out = pd.DataFrame({"customer_id": tr["customer_id"].to_numpy()[known]})
    out["true_churn"] = p_none.prod(axis=1)
    for j, c in enumerate(CATEGORIES):
        out[f"true_purchase_{c}"] = 1 - p_none[:, j]

    # Monte Carlo continuations for expected margin and defaults on new invoices.
    n_known = known.size
    unit_margin = (
        tr["spend"].to_numpy()[known][:, None] * PRICE[None, :] * synthetic.traits.matrix("margin")[known]
    )
    g = {name: tr[name].to_numpy()[known]
         for name in ("on_account", "terms_days", "never_pay", "late_share", "late_mean_days")}
    margin, margin_se = np.empty(n_known), np.full(n_known, np.nan)
    new_ok = np.empty(n_known)  # P(no invoice issued inside the horizon defaults)
    step = max(1, TRUTH_BLOCK_PAIRS // (k * mc_paths))
    edges = list(range(0, n_known, step)) + [n_known]
    streams = np.random.default_rng(seed).spawn(len(edges) - 1)
    for lo, hi, rng in zip(edges[:-1], edges[1:], streams, strict=True):
        m = hi - lo
        ev_pair, ev_tau = simulate_purchases(
            np.tile(lam[lo:hi].ravel(), mc_paths),
            np.tile(np.repeat(kappa[lo:hi].ravel(), k), mc_paths),
            np.tile(last[lo:hi].ravel(), mc_paths),
            np.full(m * k * mc_paths, tau1),
            rng,
            offset=np.tile(spent[lo:hi].ravel(), mc_paths),
        )
        path = ev_pair // (m * k)
        local = ev_pair % (m * k)
        ci, cj = local // k, local % k
        per_path = np.zeros((mc_paths, m))
        np.add.at(per_path, (path, ci), unit_margin[lo:hi][ci, cj])
        margin[lo:hi] = per_path.mean(axis=0)
        if mc_paths > 1:
            margin_se[lo:hi] = per_path.std(axis=0, ddof=1) / np.sqrt(mc_paths)
        block_g = {name: values[lo:hi] for name, values in g.items()}
        new_ok[lo:hi] = _new_invoices_ok(block_g, t1, path, ci, unwarp(ev_tau), mc_paths)
    out["true_margin"] = margin
    out["true_margin_se"] = margin_se
    out["true_default"] = _default_truth(synthetic, known, g, t0, t1, new_ok)
    return out



# --- the best prediction from the record ------------------------------------------------------

#: grids of the posterior: log kappa at this many points over +-4 prior standard deviations,
#: complaint probability at this many quantiles of each component of its prior, and Dirichlet
#: draws of the category affinities per (kappa, complaint probability) point
POSTERIOR_KAPPA_POINTS, POSTERIOR_COMPLAINT_POINTS, POSTERIOR_AFFINITY_DRAWS = 49, 12, 32
#: customers whose posterior is computed at once (memory: block x 49 x 24 x 32 floats)
POSTERIOR_BLOCK = 200


def record_posterior(
    synthetic: SyntheticBase, as_of: date, horizon_days: int, *, customers: pd.Series | None = None,
    draws: int = 256, seed: int = 0,
) -> pd.DataFrame:
    """The best predictions the record allows: E[margin], P(churn), P(purchase), P(default) given the record.

    :func:`compute_truth` gives expectations *given the latent traits*; a model sees only the
    record (sign-up date, segment, each order's time, category, revenue and cost, complaints),
    which identifies the traits only partly: a customer of two orders says little about their
    spend scale. Here the generator is inverted: the posterior of the traits given the record
    under the priors of :func:`draw_traits`, and the margin and churn averaged over it. Its
    RMSE is the floor any model of the record can reach on average, the "best prediction from
    the record" of ../shared/BENCHMARKS.md.

    The posterior factorises: spend scale from the revenues (Gamma orders, log-normal prior;
    a grid), each category's margin rate from its costs (exact when bought, the prior mean
    otherwise), and the purchase process (1) from the order times and complaints. For the
    process, the engaged rate integrates out in closed form (Gamma prior, Poisson-process
    likelihood in lambda); kappa (a grid), the complaint probability (prior quantiles) and the
    affinities (Dirichlet draws from the posterior the counts alone give) are weighted by the
    rest of the likelihood; ``draws`` of them per customer are resampled by weight, each with
    a rate drawn from its conditional Gamma and one simulated continuation of (1). Approximations:
    a complaint follows an order within 10.5 days (orders of the last days count in part), and
    the first order of the sign-up day's acquisition window is taken for the acquisition order.

    The default (:func:`_record_default`) has a posterior of its own: the credit trait drives
    the payments only, and the payments nothing else.

    Returns one row per customer known at ``as_of`` (of ``customers`` when given), in the
    order and with the names of :func:`compute_truth`'s columns, ``true_`` read ``record_``:
    ``customer_id``, ``record_churn``, ``record_purchase_<category>``, ``record_margin``,
    ``record_default`` (bases with invoices, horizons up to 104 days), and checks:
    ``record_spend`` (E[spend scale | record], the trait ``spend``), ``record_credit``
    (E[credit trait | record], with ``record_default``) and ``record_ess`` (the effective
    number of weighted points behind the draws, a check on the grids).
    """
    from scipy import stats

    check_positive_int("horizon_days", horizon_days)
    check_positive_int("draws", draws)
    t0, t1 = _horizon(as_of, horizon_days)
    tr = synthetic.traits.frame
    known = np.flatnonzero(tr["signup_t"].to_numpy() < t0)
    if customers is not None:
        known = known[tr["customer_id"].iloc[known].astype(str).isin(set(customers.astype(str))).to_numpy()]
    ids = tr["customer_id"].iloc[known]
    n, k = known.size, len(CATEGORIES)

    # The record, from the tables: sign-up and segment, orders before T, complaints before T.
    cu = synthetic.tables["customers"]
    cpos = _positions(cu.column("customer_id"), ids)
    signup = np.empty(n)
    b2b = np.empty(n, bool)
    epoch = np.datetime64(START.isoformat(), "D")
    cdays = (cu.column("signup_date").to_numpy(zero_copy_only=False).astype("datetime64[D]") - epoch).astype(np.float64)
    signup[cpos[cpos >= 0]] = cdays[cpos >= 0]
    b2b[cpos[cpos >= 0]] = (cu.column("segment").to_numpy(zero_copy_only=False) == "B2B")[cpos >= 0]
    tx = synthetic.tables["transactions"]
    who = _positions(tx.column("customer_id"), ids)
    t = _days_since_start(tx.column("ts"))
    keep = (who >= 0) & (t < t0)
    who, t = who[keep], t[keep]
    cat = _positions(tx.column("product_category"), pd.Series(CATEGORIES))[keep]
    revenue = tx.column("revenue").to_numpy()[keep]
    cost = tx.column("cost").to_numpy()[keep]
    order = np.lexsort((t, who))
    who, t, cat, revenue, cost = who[order], t[order], cat[order], revenue[order], cost[order]
    it = synthetic.tables["interactions"]
    it_who = _positions(it.column("customer_id"), ids)
    it_t = _days_since_start(it.column("ts"))
    complaint = (it_who >= 0) & (it_t < t0) & (it.column("kind").to_numpy(zero_copy_only=False) == "complaint")
    complaints = np.bincount(it_who[complaint], minlength=n).astype(np.float64)
    # An order's complaint, if any, comes 0.5 + 10 U days later: orders of the last days count in part.
    exposed = np.bincount(who, weights=np.clip((t0 - t - 0.5) / 10.0, 0.0, 1.0), minlength=n)

    # The acquisition order: a customer's first order, inside the sign-up day's window.
    first = np.r_[True, who[1:] != who[:-1]]
    lag = t - signup[who]
    acquisition = first & (lag >= ACQUISITION_LAG) & (lag < ACQUISITION_LAG + ACQUISITION_WINDOW)

    # Spend scale: revenue ~ Gamma(shape, scale x price / shape) per order, log-normal prior.
    orders = np.bincount(who, minlength=n).astype(np.float64)
    scaled = np.bincount(who, weights=revenue / PRICE[cat], minlength=n)
    z = np.linspace(-6, 6, 241)
    log_s = (np.log(SPEND_MEDIAN) + np.where(b2b, np.log(B2B_SPEND), 0.0))[:, None] + SPEND_LOG_SD * z[None, :]
    loglik = -z**2 / 2 - GAMMA_ORDER_SHAPE * (orders[:, None] * log_s + scaled[:, None] * np.exp(-log_s))
    w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    spend = (w * np.exp(log_s)).sum(axis=1) / w.sum(axis=1)

    # Margin rate per category: revenue-weighted from the costs where bought, else the prior mean.
    pair = who * k + cat
    rev_c = np.bincount(pair, weights=revenue, minlength=n * k).reshape(n, k)
    cost_c = np.bincount(pair, weights=cost, minlength=n * k).reshape(n, k)
    prior_margin = MARGIN_RATE[None, :] * np.exp(MARGIN_LOG_SD**2 / 2) * np.where(b2b, B2B_MARGIN, 1.0)[:, None]
    margin = np.where(rev_c > 0, 1 - cost_c / np.where(rev_c > 0, rev_c, 1.0), prior_margin)

    # The purchase process (1), in warped time: the acquisition order resets its category's
    # clock; every other order is an event of its (customer, category) process.
    start = np.repeat(warp(signup + 0.5), k).reshape(n, k)
    acq_pair = pair[acquisition]
    flat = start.ravel()
    flat[acq_pair] = np.maximum(flat[acq_pair], warp(t[acquisition]))
    ev = ~acquisition
    ev_pair, ev_tau = pair[ev], warp(t[ev])
    by_pair = np.lexsort((ev_tau, ev_pair))  # customer, category, time
    ev_pair, ev_tau = ev_pair[by_pair], ev_tau[by_pair]
    same = np.r_[False, ev_pair[1:] == ev_pair[:-1]]
    prev = np.where(same, np.r_[0.0, ev_tau[:-1]], flat[ev_pair])
    gap = ev_tau - prev  # (warped) time since the reset each event ends
    counts = np.bincount(ev_pair, minlength=n * k).reshape(n, k)
    last = flat.copy()
    np.maximum.at(last, ev_pair, ev_tau)
    last = last.reshape(n, k)
    tau0, tau1 = warp(t0), warp(t1)
    alpha = POPULARITY * AFFINITY_CONCENTRATION + counts + np.bincount(acq_pair, minlength=n * k).reshape(n, k)

    kz = np.linspace(-4, 4, POSTERIOR_KAPPA_POINTS)
    kappa = np.exp(np.log(KAPPA_MEDIAN) + KAPPA_LOG_SD * kz)
    log_prior_kappa = -kz**2 / 2
    u = (np.arange(POSTERIOR_COMPLAINT_POINTS) + 0.5) / POSTERIOR_COMPLAINT_POINTS
    q = stats.beta.ppf(u, *COMPLAINT_BETA)
    cp = np.r_[q, np.minimum(q * COMPLAINT_PRONE_FACTOR, COMPLAINT_P_MAX)]
    log_prior_cp = np.log(np.r_[np.full(u.size, (1 - COMPLAINT_PRONE_SHARE) / u.size),
                                np.full(u.size, COMPLAINT_PRONE_SHARE / u.size)])
    rng = np.random.default_rng(seed)

    def G(r: np.ndarray, kap: np.ndarray) -> np.ndarray:  # integrated hazard of (1) per unit lambda
        return cumulative_hazard(r, 1.0, kap)

    # Per block of customers, arrays run over (customer, kappa point J, complaint point L,
    # affinity draw S); a point's weight is its prior times the likelihood with the rate integrated out.
    out_margin, out_ess, out_none, churn = np.empty(n), np.empty(n), np.empty((n, k)), np.empty(n)
    ev_who = ev_pair // k
    bounds = np.searchsorted(ev_who, np.arange(0, n + POSTERIOR_BLOCK, POSTERIOR_BLOCK).clip(max=n))
    for b, lo in enumerate(range(0, n, POSTERIOR_BLOCK)):
        hi = min(n, lo + POSTERIOR_BLOCK)
        m = hi - lo
        e = slice(bounds[b], bounds[b + 1])
        e_who, e_pair, e_gap = ev_who[e] - lo, ev_pair[e] - lo * k, gap[e]
        # log g(gap) summed per customer, and the integrated hazard per (customer, category)
        log_g = np.log(RHO + (1 - RHO) * np.exp(-e_gap[:, None] / kappa[None, :]))  # (events, J)
        sum_log_g = np.zeros((m, kappa.size))
        np.add.at(sum_log_g, e_who, log_g)
        W = np.zeros((m * k, kappa.size))
        np.add.at(W, e_pair, G(e_gap[:, None], kappa[None, :]))
        W += G((tau0 - last[lo:hi]).reshape(-1, 1), kappa[None, :])
        W = W.reshape(m, k, kappa.size)
        n_ev = counts[lo:hi].sum(axis=1).astype(np.float64)
        # affinities: Dirichlet(prior + counts) draws, via Gamma variates
        g = rng.standard_gamma(np.broadcast_to(alpha[lo:hi, None, :], (m, POSTERIOR_AFFINITY_DRAWS, k)))
        a = g / g.sum(axis=2, keepdims=True)  # (m, S, k)
        A = np.einsum("msc,mcj->mjs", a, W)  # (m, J, S)
        mult = np.where(b2b[lo:hi], B2B_RATE, 1.0)[:, None] * np.exp(-COMPLAINT_RATE_EFFECT * cp)[None, :]  # (m, L)
        comp, expo = complaints[lo:hi, None], exposed[lo:hi, None]
        log_cp = comp * np.log(cp)[None, :] + np.maximum(expo - comp, 0) * np.log1p(-cp)[None, :]
        beta = 1 / RATE_SCALE + mult[:, None, :, None] * A[:, :, None, :] / YEAR  # (m, J, L, S)
        logw = ((log_prior_kappa[None, :] + sum_log_g)[:, :, None, None]
                + (log_prior_cp[None, :] + log_cp + n_ev[:, None] * np.log(mult))[:, None, :, None]
                - (n_ev + RATE_SHAPE)[:, None, None, None] * np.log(beta))
        logw = logw.reshape(m, -1)
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        out_ess[lo:hi] = 1 / (w**2).sum(axis=1)
        # resample ``draws`` points per customer (systematic), then the rate given each point
        cum = np.cumsum(w, axis=1)
        pos = (np.arange(draws)[None, :] + rng.random((m, 1))) / draws * cum[:, -1:]
        pick = np.stack([np.searchsorted(cum[i], pos[i]) for i in range(m)]).clip(max=w.shape[1] - 1)
        at_kappa, rest = np.divmod(pick, cp.size * POSTERIOR_AFFINITY_DRAWS)
        at_cp, at_a = np.divmod(rest, POSTERIOR_AFFINITY_DRAWS)
        rows = np.arange(m)[:, None]
        rate = rng.gamma(n_ev[:, None] + RATE_SHAPE, 1 / beta[rows, at_kappa, at_cp, at_a]) * mult[rows, at_cp]
        lam = rate[:, :, None] * a[rows, at_a] / YEAR  # (m, draws, k)
        kap = np.broadcast_to(kappa[at_kappa][:, :, None], lam.shape)
        from_last = np.broadcast_to(last[lo:hi, None, :], lam.shape)
        spent = lam * G(tau0 - from_last, kap)
        p_none = np.exp(-(lam * G(tau1 - from_last, kap) - spent))  # (m, draws, k)
        out_none[lo:hi] = p_none.mean(axis=1)
        churn[lo:hi] = p_none.prod(axis=2).mean(axis=1)
        ev_p, _ = simulate_purchases(lam.ravel(), kap.ravel(), from_last.ravel(),
                                     np.full(lam.size, tau1), rng, offset=spent.ravel())
        bought = np.bincount(ev_p, minlength=lam.size).reshape(lam.shape).mean(axis=1)  # E[purchases], (m, k)
        out_margin[lo:hi] = spend[lo:hi] * (bought * PRICE[None, :] * margin[lo:hi]).sum(axis=1)
    out = pd.DataFrame({"customer_id": ids.to_numpy(), "record_churn": churn})
    for j, c in enumerate(CATEGORIES):
        out[f"record_purchase_{c}"] = 1 - out_none[:, j]
    out["record_margin"] = out_margin
    if "invoices" in synthetic.tables and t1 - t0 <= min(TERMS_DAYS) + LATE_DAYS_DEFAULT:
        out["record_default"], credit = _record_default(synthetic, ids, b2b, t0, t1)
    out["record_spend"] = spend  # E[spend scale | record]: a check of the spend posterior on its own
    if "record_default" in out:  # E[credit trait | record]: a check of the credit posterior
        out["record_credit"] = credit
    out["record_ess"] = out_ess
    return out


def _invoice_days(inv: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Issue, due and paid dates of every invoice, in days since START; never paid: inf."""
    epoch = np.datetime64(START.isoformat(), "D")

    def days(col: str) -> np.ndarray:
        arr = inv.column(col).to_numpy(zero_copy_only=False).astype("datetime64[D]")
        return np.where(np.isnat(arr), np.inf, (arr - epoch).astype(np.float64))

    return days("issue_date"), days("due_date"), days("paid_date")


def _open_invoices_not_defaulting(
    who: np.ndarray, n: int, t0: float, t1: float, issue: np.ndarray, due: np.ndarray, paid: np.ndarray,
    law: tuple[np.ndarray, ...],
) -> np.ndarray:
    """P(no invoice issued before T and unpaid at T reaches 90 days past due in [T, T+H)), per
    customer (``who``: the customer of each invoice, -1 for others; ``n`` customers).

    ``law`` holds each customer's payment terms (shape (n,)), and never-pay probability, late
    share and mean days late (:func:`payment_offset_survival`) of shape (n,) or, one column per
    point of a grid, (n, points): the result has the latter's shape."""
    terms, never, late, mean = law
    crossing = due + LATE_DAYS_DEFAULT
    open_ = (who >= 0) & (issue < t0) & (paid >= t0) & (crossing >= t0) & (crossing < t1)
    w = who[open_]
    extra = (slice(None),) + (None,) * (never.ndim - 1)  # the invoices' values against the points
    surv = lambda x: payment_offset_survival(  # noqa: E731
        x[extra], terms[w][extra], never[w], late[w], mean[w])
    # paid_date >= T  <=>  offset >= T - due: the chance of 90 days given that
    p_inv = surv(np.full(w.size, float(LATE_DAYS_DEFAULT))) / surv(t0 - due[open_])
    log_ok = np.zeros((n, *never.shape[1:]))
    np.add.at(log_ok, w, np.log1p(-np.clip(p_inv, 0, 1 - 1e-15)))
    return np.exp(log_ok)


#: points of the posterior of the credit trait, over +-6 prior standard deviations
POSTERIOR_CREDIT_POINTS = 241


def _record_default(
    synthetic: SyntheticBase, ids: pd.Series, b2b: np.ndarray, t0: float, t1: float
) -> tuple[np.ndarray, np.ndarray]:
    """P(default in [T, T+H) | record) and E[credit trait | record] per customer of ``ids``:
    NaN without an invoice issued before T (as ``label_default``).

    The credit trait drives nothing but payments (:func:`draw_traits`), so its posterior is
    one-dimensional: the prior N(B2B_CREDIT x b2b, 1) on a grid, times the likelihood of each
    invoice issued before T under the payment law of :func:`_invoices` (:func:`payment_offset_survival`):
    an invoice paid before T by its offset (on time, uniformly up to half the terms early; late
    by 1 + floor(Exp(mean)) days), an invoice unpaid at T by P(offset >= T - due). The default
    given the trait is :func:`_default_truth`'s, for the invoices open at T; invoices issued
    inside the horizon cannot reach 90 days past due before T + H when H <= terms + 90 days,
    the only case computed (:func:`record_posterior` leaves the column out otherwise).
    """
    inv = synthetic.tables["invoices"]
    who = _positions(inv.column("customer_id"), ids)
    issue, due, paid = _invoice_days(inv)
    keep = np.flatnonzero((who >= 0) & (issue < t0))
    keep = keep[np.argsort(who[keep], kind="stable")]  # by customer: sums per customer by reduceat
    who, issue, due, paid = who[keep], issue[keep], due[keep], paid[keep]
    n = len(ids)
    z = np.linspace(-6, 6, POSTERIOR_CREDIT_POINTS)
    credit = np.where(b2b, B2B_CREDIT, 0.0)[:, None] + z[None, :]  # (customers, grid)
    never, late, mean = credit_payment_law(credit)
    terms = due - issue
    loglik = -z[None, :] ** 2 / 2 + np.zeros((n, z.size))
    for lo in range(0, who.size, 20_000):  # (invoices x grid) arrays of ~40 MB at a time
        i = slice(lo, lo + 20_000)
        # the likelihood of each invoice's record under every grid point, from the one payment
        # law: unpaid at T, P(offset >= T - due); paid before T with offset x, P(offset = x) =
        # P(offset >= x) - P(offset >= x + 1)
        paid_before = paid[i] < t0
        x = np.where(paid_before, paid[i] - due[i], t0 - due[i])[:, None]
        c, term = who[i], terms[i][:, None]
        like = payment_offset_survival(x, term, never[c], late[c], mean[c])
        p = np.flatnonzero(paid_before)
        like[p] -= payment_offset_survival(x[p] + 1, term[p], never[c[p]], late[c[p]], mean[c[p]])
        customers, starts = np.unique(who[i], return_index=True)
        loglik[customers] += np.add.reduceat(np.log(np.maximum(like, 1e-300)), starts, axis=0)
    w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    customer_terms = np.zeros(n)
    customer_terms[who] = terms
    ok = _open_invoices_not_defaulting(who, n, t0, t1, issue, due, paid, (customer_terms, never, late, mean))
    p_default = ((1 - ok) * w).sum(axis=1)
    invoiced = np.bincount(who, minlength=n) > 0
    return np.where(invoiced, p_default, np.nan), np.where(invoiced, (w * credit).sum(axis=1), np.nan)


def _new_invoices_ok(g, t1, path, ci, unev_t, mc_paths) -> np.ndarray:
    """P(no invoice issued inside the horizon reaches 90 days past due before T + H), per
    customer of a block, averaged over the simulated paths ``path`` of its purchases."""
    acc = g["on_account"][ci]
    issue_new = np.floor(unev_t[acc])
    c_new = ci[acc]
    cross_new = issue_new + g["terms_days"][c_new] + LATE_DAYS_DEFAULT
    hit = cross_new < t1  # only possible when H > terms + 90 days
    new_log = np.zeros((mc_paths, g["on_account"].size))
    if hit.any():
        cc = c_new[hit]
        p90 = payment_offset_survival(
            np.full(cc.size, float(LATE_DAYS_DEFAULT)),
            g["terms_days"][cc], g["never_pay"][cc], g["late_share"][cc], g["late_mean_days"][cc],
        )
        np.add.at(new_log, (path[acc][hit], cc), np.log1p(-np.clip(p90, 0, 1 - 1e-15)))
    return np.exp(new_log).mean(axis=0)


def _default_truth(synthetic, known, g, t0, t1, new_ok) -> np.ndarray:
    tr = synthetic.traits.frame
    inv = synthetic.tables["invoices"]
    who = _positions(inv.column("customer_id"), tr["customer_id"].iloc[known])
    law = tuple(g[name].astype(np.float64) for name in ("terms_days", "never_pay", "late_share", "late_mean_days"))
    p_no_default = _open_invoices_not_defaulting(who, known.size, t0, t1, *_invoice_days(inv), law) * new_ok
    return np.where(g["on_account"], 1 - p_no_default, np.nan)


#: columns worth a Parquet dictionary: few distinct values (labels, dates, money with many
#: repeats); ids and timestamps are nearly all distinct, and trying a dictionary on them
#: first costs a hash per value before the writer falls back to plain encoding
DICTIONARY_COLUMNS = {
    "customers": ("signup_date", "segment", "region", "acquisition_channel"),
    "transactions": ("product_category", "revenue", "cost"),
    "invoices": ("issue_date", "due_date", "amount", "paid_date"),
    "interactions": ("kind", "cost_to_serve"),
    "traits": (),
}


def _write_parquet(table: pa.Table, path: Path, use_dictionary: tuple[str, ...]) -> None:
    """Write ``table`` to ``path`` (zstd, no pandas index) via a temporary file and a rename."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=list(use_dictionary))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_synthetic_base(synthetic: SyntheticBase, out_path: Path, *, n_jobs: int = 2) -> None:
    """Write the tables as Parquet and the traits to ``_truth/traits.parquet``.

    Arrow's Parquet writer releases the GIL: the files are written on ``n_jobs`` threads,
    largest first, so the transactions overlap with all the others.
    """
    out_path = Path(out_path)
    traits = pa.Table.from_pandas(synthetic.traits.frame, preserve_index=False)
    jobs = [(t, out_path / f"{name}.parquet", DICTIONARY_COLUMNS.get(name, ()))
            for name, t in synthetic.tables.items()]
    jobs.append((traits, out_path / "_truth" / "traits.parquet", DICTIONARY_COLUMNS["traits"]))
    jobs.sort(key=lambda job: -job[0].nbytes)
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        for done in [pool.submit(_write_parquet, *job) for job in jobs]:
            done.result()


def truth_path(out_path: Path, as_of: date, horizon_days: int, what: str = "truth") -> Path:
    """Where the truth (``what="truth"``) or the best prediction from the record (``"record"``,
    :func:`record_posterior`) of ``as_of`` and ``horizon_days`` is written."""
    return Path(out_path) / "_truth" / f"{what}_{as_of.isoformat()}_h{horizon_days}.parquet"


def load_synthetic_base(base_path: Path) -> SyntheticBase:
    """Read back a base written by :func:`write_synthetic_base`, traits included."""
    import pyarrow.parquet as pq

    base_path = Path(base_path)
    traits_file = base_path / "_truth" / "traits.parquet"
    if not traits_file.is_file():
        raise FileNotFoundError(
            f"{base_path} has no {traits_file.relative_to(base_path)}: the truth exists only for "
            "bases made by `crmscore generate`"
        )
    tables = {
        name: pq.read_table(base_path / f"{name}.parquet")
        for name in ("customers", "transactions", "invoices", "interactions")
    }
    return SyntheticBase(tables=tables, traits=Traits(pq.read_table(traits_file).to_pandas()))
