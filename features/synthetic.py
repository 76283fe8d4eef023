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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crmscore.features.io import Base, write_arrow_atomic, write_parquet_atomic

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


def unwarp(tau: np.ndarray) -> np.ndarray:
    """Inverse of :func:`warp` by Newton's method (warp is strictly increasing)."""
    w = 2 * np.pi / YEAR
    t = np.array(tau, dtype=np.float64, copy=True)
    # t = tau is within A * YEAR / 2pi (17 days) of the root; Newton converges quadratically
    # from there, to round-off within five steps (checked in the tests).
    for _ in range(6):
        t -= (warp(t) - tau) / (1 + SEASON_AMPLITUDE * np.cos(w * (t - SEASON_PEAK_DAY)))
    return t


# --- the purchase process (1) ---------------------------------------------------------------


def cumulative_hazard(r: np.ndarray, lam: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """H(r) = integral of (1) from 0 to r: expected purchases r (warped) days after a reset."""
    return lam * (RHO * r + (1 - RHO) * kappa * (-np.expm1(-r / kappa)))


def solve_waiting_time(target: np.ndarray, lam: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """Solve H(r) = target for r >= 0 (inverse-transform sampling of the next purchase).

    H is increasing and concave, so Newton's method from r = 0 climbs monotonically to the root.
    """
    r = np.zeros_like(target)
    todo = np.arange(target.size)
    for _ in range(60):
        rr, lt, kt, tt = r[todo], lam[todo], kappa[todo], target[todo]
        f = cumulative_hazard(rr, lt, kt) - tt
        step = f / (lt * (RHO + (1 - RHO) * np.exp(-rr / kt)))
        r[todo] = rr - step
        keep = np.abs(step) > 1e-7 * (1 + np.abs(rr))
        todo = todo[keep]
        if todo.size == 0:
            break
    return r


@dataclass(frozen=True)
class Traits:
    """Latent per-customer traits (the part of the truth a model never sees directly)."""

    frame: pd.DataFrame  # one row per customer; columns listed in :func:`draw_traits`

    def matrix(self, prefix: str) -> np.ndarray:
        """Per-category trait as an (n_customers, n_categories) array."""
        return self.frame[[f"{prefix}_{c}" for c in CATEGORIES]].to_numpy(np.float64)


def draw_traits(n_customers: int, rng: np.random.Generator) -> Traits:
    """Draw the latent traits of ``n_customers`` customers."""
    n = n_customers
    horizon = (END - START).days
    b2b = rng.random(n) < 0.15
    # Acquisition over the whole period, more customers early (an established base).
    signup_t = np.floor(horizon * rng.beta(0.9, 1.3, n) * 0.97)
    base_rate = rng.gamma(1.6, 11.0, n) * np.where(b2b, 2.5, 1.0)  # orders a year when engaged
    complaint_p = rng.beta(1.0, 24.0, n) * np.where(rng.random(n) < 0.08, 5.0, 1.0)
    complaint_p = np.minimum(complaint_p, 0.6)
    rate = base_rate * np.exp(-4.0 * complaint_p)  # complaint-prone customers buy less
    kappa = np.exp(rng.normal(np.log(200.0), 0.6, n))  # warped days a category stays warm
    affinity = rng.dirichlet(POPULARITY * 0.7, n)
    spend = np.exp(rng.normal(np.log(30.0), 0.55, n)) * np.where(b2b, 4.0, 1.0)
    margin = MARGIN_RATE[None, :] * np.exp(rng.normal(0.0, 0.15, (n, len(CATEGORIES))))
    margin *= np.where(b2b, 0.8, 1.0)[:, None]
    support_p = rng.beta(2.0, 10.0, n) * np.where(b2b, 1.6, 1.0)
    visit_rate = np.where(b2b, rng.gamma(2.0, 2.5, n), 0.0)  # sales visits a year
    on_account = b2b | (rng.random(n) < 0.2)
    credit = rng.normal(0.0, 1.0, n) + np.where(b2b, 0.2, 0.0)
    never_pay = 1 / (1 + np.exp(-(-6.5 + 1.3 * credit)))
    late_share = 1 / (1 + np.exp(-(-1.2 + 1.1 * credit)))
    late_mean = np.exp(2.0 + 0.65 * credit)  # days late when late
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
            "terms_days": np.where(b2b, 30, 14),
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
    idx = np.arange(lam.size)
    last = start_tau.astype(np.float64, copy=True)
    spent = np.zeros(lam.size) if offset is None else offset.astype(np.float64, copy=True)
    while idx.size:
        target = spent + rng.exponential(1.0, idx.size)
        room = end_tau[idx] - last
        # Pairs whose next purchase would fall past the window stop here (most lapsed ones).
        fits = cumulative_hazard(room, lam[idx], kappa[idx]) > target
        idx, target, base = idx[fits], target[fits], last[fits]
        r = solve_waiting_time(target, lam[idx], kappa[idx])
        tau = base + r
        ok = tau < end_tau[idx]  # guard against round-off at the boundary
        idx, tau = idx[ok], tau[ok]
        pairs.append(idx)
        times.append(tau)
        last = tau
        spent = np.zeros(idx.size)
    if not pairs:
        return np.empty(0, np.int64), np.empty(0)
    return np.concatenate(pairs), np.concatenate(times)


# --- the base ------------------------------------------------------------------------------


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded text keys such as C0000042, written digit by digit into an Arrow buffer.

    Building the bytes in numpy and wrapping them as a StringArray is ~100x faster than
    formatting 20M Python strings.
    """
    size = len(prefix) + width
    numbers = np.asarray(numbers)
    dtype = np.uint32 if numbers.size == 0 or numbers.max() < 2**32 else np.uint64
    rest = numbers.astype(dtype)
    chars = np.empty((numbers.size, size), dtype=np.uint8)
    chars[:, : len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    for pos in range(size - 1, len(prefix) - 1, -1):
        rest, digit = np.divmod(rest, dtype(10))
        chars[:, pos] = digit
    chars[:, len(prefix) :] += 48  # digits to ASCII in one pass
    offsets = np.arange(0, (numbers.size + 1) * size, size, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(
        numbers.size, pa.py_buffer(offsets), pa.py_buffer(chars)
    ).cast(pa.string())


def _timestamps(t_days: np.ndarray) -> pa.Array:
    """Days since START (float) -> timestamp[ns], rounded to the second."""
    base = np.datetime64(START.isoformat(), "s").astype(np.int64)
    seconds = base + np.floor(t_days * 86_400.0).astype(np.int64)
    return pa.array(seconds.astype("datetime64[s]").astype("datetime64[ns]"))


def _dates(day_numbers: np.ndarray) -> pa.Array:
    base = np.datetime64(START.isoformat(), "D")
    return pa.array((base + day_numbers.astype(np.int64)).astype("datetime64[ns]"))


def _strings(values: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(values)).cast(pa.string())


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


def generate_base(n_customers: int, seed: int) -> SyntheticBase:
    """Generate a synthetic CRM base of ``n_customers`` from 2022-01-01 to 2024-12-31.

    Parameters
    ----------
    n_customers : int
        Number of customers, > 0. About 20 transactions per customer result.
    seed : int
        Seed of the random generator; the same seed gives the same tables, byte for byte.
    """
    check_positive_int("n_customers", n_customers)
    rng = np.random.default_rng(seed)
    traits = draw_traits(n_customers, rng)
    tr = traits.frame
    n, k = n_customers, len(CATEGORIES)
    end_t = float((END - START).days)
    width = max(7, len(str(n_customers)))

    # Purchases: one independent process per (customer, category), all warm at sign-up.
    affinity = traits.matrix("affinity")
    lam = (tr["rate"].to_numpy()[:, None] * affinity / YEAR).ravel()
    kappa = np.repeat(tr["kappa"].to_numpy(), k)
    signup_tau = warp(tr["signup_t"].to_numpy() + 0.5)
    pair, tau = simulate_purchases(
        lam, kappa, np.repeat(signup_tau, k), np.full(n * k, warp(end_t)), rng
    )
    cust = pair // k
    cat = pair % k
    t = unwarp(tau)
    # The acquisition order, on the sign-up day, in a category drawn from the affinities.
    has_acq = tr["acquisition"].to_numpy()
    acq_cust = np.flatnonzero(has_acq)
    u = rng.random(acq_cust.size)
    acq_cat = (affinity[acq_cust].cumsum(axis=1) < u[:, None]).sum(axis=1).clip(0, k - 1)
    acq_t = tr["signup_t"].to_numpy()[acq_cust] + 0.3 + 0.4 * rng.random(acq_cust.size)
    cust = np.concatenate([acq_cust, cust])
    cat = np.concatenate([acq_cat, cat])
    t = np.concatenate([acq_t, t])
    order = np.argsort(cust * 4096.0 + t, kind="stable")  # by customer, then time
    cust, cat, t = cust[order], cat[order], t[order]

    spend = tr["spend"].to_numpy()[cust] * PRICE[cat]
    revenue = np.round(rng.gamma(4.0, spend / 4.0), 2)
    margin_rate = traits.matrix("margin")[cust, cat]
    cost = np.round(revenue * (1 - margin_rate), 2)
    n_tx = cust.size
    customer_ids = _ids("C", np.arange(n), width)
    transactions = pa.table(
        {
            "customer_id": _ids("C", cust, width),
            "ts": _timestamps(t),
            "order_id": _ids("O", np.arange(n_tx), max(9, len(str(n_tx)))),
            "product_category": _strings(CATEGORIES, cat),
            "revenue": revenue,
            "cost": cost,
        }
    )

    customers = pa.table(
        {
            "customer_id": customer_ids,
            "signup_date": _dates(tr["signup_t"].to_numpy()),
            "segment": _strings(("B2C", "B2B"), tr["b2b"].to_numpy().astype(np.int32)),
            "region": _strings(REGIONS, tr["region"].to_numpy()),
            "acquisition_channel": _strings(B2C_CHANNELS + B2B_CHANNELS, tr["channel"].to_numpy()),
        }
    )

    invoices = _invoices(tr, cust, t, revenue, width, rng, end_t)
    interactions = _interactions(tr, cust, t, width, rng, end_t)
    tables = {
        "customers": customers,
        "transactions": transactions,
        "invoices": invoices,
        "interactions": interactions,
    }
    logger.info(
        "generated %d customers, %d transactions, %d invoices, %d interactions",
        n, n_tx, invoices.num_rows, interactions.num_rows,
    )
    traits.frame.insert(0, "customer_id", customer_ids.to_pandas())
    return SyntheticBase(tables=tables, traits=traits)


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


def _invoices(tr, cust, t, revenue, width, rng, end_t) -> pa.Table:
    on_account = tr["on_account"].to_numpy()[cust]
    ic, it, amount = cust[on_account], t[on_account], revenue[on_account]
    issue = np.floor(it)
    terms = tr["terms_days"].to_numpy()[ic]
    due = issue + terms
    u = rng.random(ic.size)
    never = tr["never_pay"].to_numpy()[ic]
    late = tr["late_share"].to_numpy()[ic]
    late_days = 1 + np.floor(rng.exponential(tr["late_mean_days"].to_numpy()[ic]))
    early_days = np.floor(rng.random(ic.size) * (np.floor(terms / 2) + 1))
    is_late = u < never + (1 - never) * late
    offset = np.where(is_late, late_days, -early_days)
    paid = due + offset
    unpaid = (u < never) | (paid >= end_t)  # never paid, or not yet paid when the data ends
    paid_dates = _dates(np.where(unpaid, 0, paid))
    paid_dates = pc.if_else(pa.array(unpaid), pa.scalar(None, paid_dates.type), paid_dates)
    return pa.table(
        {
            "customer_id": _ids("C", ic, width),
            "invoice_id": _ids("I", np.arange(ic.size), max(9, len(str(ic.size)))),
            "issue_date": _dates(issue),
            "due_date": _dates(due),
            "amount": amount,
            "paid_date": paid_dates,
        }
    )


def _interactions(tr, cust, t, width, rng, end_t) -> pa.Table:
    b2b = tr["b2b"].to_numpy()
    parts = []
    # Complaints and support contacts follow orders.
    for kind, prob, lag in (("complaint", "complaint_p", 10.0), ("support", "support_p", 5.0)):
        hit = rng.random(cust.size) < tr[prob].to_numpy()[cust]
        parts.append((kind, cust[hit], t[hit] + 0.5 + lag * rng.random(hit.sum())))
    # Sales visits (B2B) and campaigns (everyone) run over the relationship's life.
    tenure_years = (end_t - tr["signup_t"].to_numpy()) / YEAR
    for kind, rate in (("visit", tr["visit_rate"].to_numpy()), ("campaign", np.full(len(tr), 2.0))):
        count = rng.poisson(rate * tenure_years)
        who = np.repeat(np.arange(len(tr)), count)
        parts.append((kind, who, tr["signup_t"].to_numpy()[who] + rng.random(who.size) * (end_t - tr["signup_t"].to_numpy()[who])))
    kinds = ("complaint", "support", "visit", "campaign")
    k = np.concatenate([np.full(p[1].size, kinds.index(p[0])) for p in parts])
    who = np.concatenate([p[1] for p in parts])
    when = np.concatenate([p[2] for p in parts])
    keep = when < end_t
    k, who, when = k[keep], who[keep], when[keep]
    order = np.argsort(who * 4096.0 + when, kind="stable")
    k, who, when = k[order], who[order], when[order]
    cost_table = np.array([COST[x] for x in kinds])  # (kind, segment)
    cost = cost_table[k, b2b[who].astype(int)]
    return pa.table(
        {
            "customer_id": _ids("C", who, width),
            "ts": _timestamps(when),
            "kind": _strings(kinds, k),
            "cost_to_serve": cost,
        }
    )


# --- truth -----------------------------------------------------------------------------------


def _day(as_of: date) -> float:
    return float((as_of - START).days)


def compute_truth(
    synthetic: SyntheticBase, as_of: date, horizon_days: int, *, mc_paths: int = 200, seed: int = 0
) -> pd.DataFrame:
    """The true probabilities and expectation behind each label at ``as_of`` for ``horizon_days``.

    Returns one row per customer known at ``as_of`` (signed up before it): ``customer_id``,
    ``true_churn`` (P(no purchase in [T, T+H))), ``true_purchase_<category>``,
    ``true_default`` (NaN for customers not buying on account), ``true_margin`` (expected
    margin in the horizon, currency) and ``true_margin_se`` (its Monte Carlo standard error).
    """
    check_positive_int("horizon_days", horizon_days)
    check_positive_int("mc_paths", mc_paths)
    t0, t1 = _day(as_of), _day(as_of) + horizon_days
    if not (0 < t0 and t1 <= _day(END)):
        raise ValueError(
            f"as_of + horizon_days must lie within the generated period {START} .. {END - timedelta(days=1)}; "
            f"got as_of={as_of}, horizon_days={horizon_days}"
        )
    tr = synthetic.traits.frame
    known = np.flatnonzero(tr["signup_t"].to_numpy() < t0)
    k = len(CATEGORIES)
    tx = synthetic.tables["transactions"]
    cust_index = pd.Index(tr["customer_id"])
    tx_cust = cust_index.get_indexer(tx.column("customer_id").to_pandas())
    tx_t = (tx.column("ts").to_numpy().astype("datetime64[s]").astype(np.int64) - np.datetime64(START.isoformat(), "s").astype(np.int64)) / 86_400.0
    tx_cat = pd.Index(CATEGORIES).get_indexer(tx.column("product_category").to_pandas())
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
    rng = np.random.default_rng(seed)
    n_known = known.size
    reps = np.tile(np.arange(n_known * k), mc_paths)
    ev_pair, ev_tau = simulate_purchases(
        np.tile(lam.ravel(), mc_paths),
        np.tile(np.repeat(kappa.ravel(), k), mc_paths),
        np.tile(last.ravel(), mc_paths),
        np.full(reps.size, tau1),
        rng,
        offset=np.tile(spent.ravel(), mc_paths),
    )
    path = ev_pair // (n_known * k)
    local = ev_pair % (n_known * k)
    ci, cj = local // k, local % k
    unit_margin = (
        tr["spend"].to_numpy()[known][:, None] * PRICE[None, :] * synthetic.traits.matrix("margin")[known]
    )
    per_path = np.zeros((mc_paths, n_known))
    np.add.at(per_path, (path, ci), unit_margin[ci, cj])
    out["true_margin"] = per_path.mean(axis=0)
    out["true_margin_se"] = per_path.std(axis=0, ddof=1) / np.sqrt(mc_paths) if mc_paths > 1 else np.nan

    out["true_default"] = _default_truth(synthetic, known, t0, t1, path, ci, unev_t=unwarp(ev_tau), mc_paths=mc_paths)
    return out


def _default_truth(synthetic, known, t0, t1, path, ci, unev_t, mc_paths) -> np.ndarray:
    tr = synthetic.traits.frame
    g = {name: tr[name].to_numpy()[known] for name in ("terms_days", "never_pay", "late_share", "late_mean_days")}
    on_account = tr["on_account"].to_numpy()[known]
    inv = synthetic.tables["invoices"]
    index = pd.Index(tr["customer_id"].to_numpy()[known])
    who = index.get_indexer(inv.column("customer_id").to_pandas())
    epoch = np.datetime64(START.isoformat(), "D")

    def days(col: str) -> np.ndarray:
        arr = inv.column(col).to_numpy(zero_copy_only=False).astype("datetime64[D]")
        return np.where(np.isnat(arr), np.inf, (arr - epoch).astype(np.float64))

    issue, due, paid = days("issue_date"), days("due_date"), days("paid_date")
    crossing = due + LATE_DAYS_DEFAULT
    # Invoices issued before T, unpaid at T, whose 90th day past due falls in [T, T+H).
    open_ = (who >= 0) & (issue < t0) & (paid >= t0) & (crossing >= t0) & (crossing < t1)
    w = who[open_]
    s = t0 - due[open_]  # paid_date >= T  <=>  offset >= T - due
    surv = lambda x: payment_offset_survival(  # noqa: E731
        x, g["terms_days"][w], g["never_pay"][w], g["late_share"][w], g["late_mean_days"][w]
    )
    p_inv = surv(np.full(w.size, float(LATE_DAYS_DEFAULT))) / surv(s)
    log_ok = np.zeros(known.size)
    np.add.at(log_ok, w, np.log1p(-np.clip(p_inv, 0, 1 - 1e-15)))
    # Invoices issued inside the horizon (only possible when H > terms + 90 days).
    acc = on_account[ci]
    issue_new = np.floor(unev_t[acc])
    c_new = ci[acc]
    cross_new = issue_new + g["terms_days"][c_new] + LATE_DAYS_DEFAULT
    hit = cross_new < t1
    new_log = np.zeros((mc_paths, known.size))
    if hit.any():
        cc = c_new[hit]
        p90 = payment_offset_survival(
            np.full(cc.size, float(LATE_DAYS_DEFAULT)),
            g["terms_days"][cc], g["never_pay"][cc], g["late_share"][cc], g["late_mean_days"][cc],
        )
        np.add.at(new_log, (path[acc][hit], cc), np.log1p(-np.clip(p90, 0, 1 - 1e-15)))
    p_no_default = np.exp(log_ok) * np.exp(new_log).mean(axis=0)
    return np.where(on_account, 1 - p_no_default, np.nan)


def write_synthetic_base(synthetic: SyntheticBase, out_path: Path) -> None:
    """Write the tables as Parquet and the traits to ``_truth/traits.parquet``."""
    from concurrent.futures import ThreadPoolExecutor

    out_path = Path(out_path)
    # Arrow writes release the GIL: the four tables go to disk in parallel.
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [
            pool.submit(write_arrow_atomic, table, out_path / f"{name}.parquet")
            for name, table in synthetic.tables.items()
        ]
        for job in jobs:
            job.result()
    write_parquet_atomic(synthetic.traits.frame, out_path / "_truth" / "traits.parquet")


def truth_path(out_path: Path, as_of: date, horizon_days: int) -> Path:
    return Path(out_path) / "_truth" / f"truth_{as_of.isoformat()}_h{horizon_days}.parquet"


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
