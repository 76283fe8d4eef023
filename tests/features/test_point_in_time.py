"""Point-in-time correctness, proven: nothing on or after the as-of date moves a feature.

Every event on or after T is deleted, or changed (times moved later, amounts, categories and
kinds redrawn, new events added), and payments dated on or after T are moved or undone; the
features must stay exactly the same. Labels, which describe the horizon, may move.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from crmscore.features.io import Base
from crmscore.features.pipeline import build_snapshot
from crmscore.features.schema import INTERACTION_KINDS
from crmscore.features.transforms import compute_features

AS_OF = date(2024, 3, 1)
T = pd.Timestamp(AS_OF)
DATA_END = date(2025, 1, 1)
S = pd.StringDtype("pyarrow")


@pytest.fixture(scope="module")
def base() -> Base:
    from crmscore.features.synthetic import generate_base

    generated = generate_base(500, seed=21)
    return generated.to_base() if hasattr(generated, "to_base") else generated


def features(base: Base, categories: list[str]) -> pd.DataFrame:
    """The features three ways: the engine without labels, the engine with labels (so
    horizon events reach the feature function), and the pure function on whole tables."""
    plain = build_snapshot(base, AS_OF, 90, with_labels=False, categories=categories,
                           data_end=DATA_END, chunk_customers=128)
    labelled = build_snapshot(base, AS_OF, 90, with_labels=True, categories=categories,
                              data_end=DATA_END, chunk_customers=128)
    pd.testing.assert_frame_equal(plain, labelled[plain.columns], check_exact=True)
    direct = compute_features(base.tables(), AS_OF, 90, categories, with_labels=False)
    direct = direct.sort_values("customer_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(plain, direct, check_exact=True, check_dtype=False,
                                  check_categorical=False)
    return plain


def categories_of(base: Base) -> list[str]:
    return sorted(base.transactions["product_category"].unique())


def delete_the_future(base: Base) -> Base:
    """Only what was on record at the start of T: later events gone, later payments undone."""
    tx = base.transactions[base.transactions["ts"] < T]
    inv = base.invoices[base.invoices["issue_date"] < T].copy()
    inv.loc[inv["paid_date"] >= T, "paid_date"] = pd.NaT
    it = base.interactions[base.interactions["ts"] < T]
    return Base(customers=base.customers, transactions=tx, invoices=inv, interactions=it)


def rewrite_the_future(base: Base, seed: int) -> Base:
    """Every event on or after T changed; new future events for random customers."""
    rng = np.random.default_rng(seed)
    cats = np.array(categories_of(base))

    tx = base.transactions.copy()
    future = tx["ts"] >= T
    k = int(future.sum())
    tx.loc[future, "ts"] = tx.loc[future, "ts"] + pd.to_timedelta(rng.integers(0, 400, k), unit="D")
    tx.loc[future, "revenue"] = rng.gamma(2.0, 50.0, k)
    tx.loc[future, "cost"] = tx.loc[future, "revenue"] * rng.random(k)
    tx.loc[future, "product_category"] = pd.array(rng.choice(cats, k), dtype=S)
    offsets = rng.integers(0, 300 * 86_400, 300)
    offsets[:50] = 0  # at the very start of T: already the future
    extra = tx.sample(300, random_state=seed, replace=True).assign(
        ts=T + pd.to_timedelta(offsets, unit="s"),
        order_id=pd.array([f"new{i}" for i in range(300)], dtype=S),
    )
    tx = pd.concat([tx[~future | (rng.random(len(tx)) < 0.7)], extra], ignore_index=True)

    inv = base.invoices.copy()
    issued_later = inv["issue_date"] >= T
    inv.loc[issued_later, "amount"] = rng.gamma(2.0, 100.0, int(issued_later.sum()))
    inv = inv[~issued_later | (rng.random(len(inv)) < 0.5)].copy()
    paid_later = inv["paid_date"] >= T  # unpaid at T: the payment may come any time, or never
    m = int(paid_later.sum())
    new_paid = T + pd.to_timedelta(rng.integers(0, 200, m), unit="D")
    inv.loc[paid_later, "paid_date"] = new_paid.where(rng.random(m) < 0.5)  # else NaT
    unpaid = inv["paid_date"].isna() & (inv["issue_date"] < T)
    inv.loc[unpaid, "paid_date"] = T + pd.to_timedelta(rng.integers(0, 100, int(unpaid.sum())), unit="D")

    it = base.interactions.copy()
    later = it["ts"] >= T
    n = int(later.sum())
    it.loc[later, "kind"] = pd.array(rng.choice(INTERACTION_KINDS, n), dtype=S)
    it.loc[later, "cost_to_serve"] = rng.gamma(2.0, 20.0, n)
    it.loc[later, "ts"] = it.loc[later, "ts"] + pd.to_timedelta(rng.integers(0, 100, n), unit="h")
    at_t = it.sample(100, random_state=seed, replace=True).assign(ts=T)
    it = pd.concat([it, at_t], ignore_index=True)
    return Base(customers=base.customers, transactions=tx, invoices=inv, interactions=it)


def test_the_past_has_events_on_both_sides(base: Base) -> None:
    assert (base.transactions["ts"] >= T).mean() > 0.2
    assert (base.invoices["paid_date"] >= T).sum() > 0  # some invoices are open at T


def test_deleting_every_future_event_moves_no_feature(base: Base) -> None:
    categories = categories_of(base)
    pd.testing.assert_frame_equal(
        features(base, categories), features(delete_the_future(base), categories), check_exact=True
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_rewriting_every_future_event_moves_no_feature(base: Base, seed: int) -> None:
    categories = categories_of(base)
    before = features(base, categories)
    pd.testing.assert_frame_equal(before, features(rewrite_the_future(base, seed), categories),
                                  check_exact=True)


def test_labels_do_move(base: Base) -> None:
    categories = categories_of(base)
    kw = {"categories": categories, "data_end": DATA_END, "with_labels": True}
    before = build_snapshot(base, AS_OF, 90, **kw)
    after = build_snapshot(rewrite_the_future(base, 1), AS_OF, 90, **kw)
    assert not before["label_margin"].equals(after["label_margin"])
    assert not before["label_default"].equals(after["label_default"])


def test_future_customers_change_nothing_but_levels(base: Base) -> None:
    """Customers who sign up on or after T, and all their events, can go too."""
    categories = categories_of(base)
    later = base.customers.loc[base.customers["signup_date"] >= T, "customer_id"]
    assert len(later) > 0

    def drop(df: pd.DataFrame) -> pd.DataFrame:
        return df[~df["customer_id"].isin(later)]

    trimmed = Base(customers=drop(base.customers), transactions=drop(base.transactions),
                   invoices=drop(base.invoices), interactions=drop(base.interactions))
    pd.testing.assert_frame_equal(features(base, categories), features(trimmed, categories),
                                  check_exact=True, check_categorical=False)
