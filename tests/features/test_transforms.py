"""Features: hand-computed values on a 3-customer base, and a slow reference implementation.

The reference (:func:`reference_snapshot`) loops over customers and their events in plain
Python with ``datetime`` arithmetic, written from the catalogue's definitions; the fast,
vectorised ``compute_features`` must agree with it on every feature and label.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from crmscore.features.catalogue import category_slugs
from crmscore.features.io import Base
from crmscore.features.pipeline import build_snapshot, catalogue_specs
from crmscore.features.schema import INTERACTION_KINDS
from crmscore.features.transforms import compute_features, feature_specs

S = pd.StringDtype("pyarrow")
AS_OF = date(2024, 7, 1)
T = datetime(2024, 7, 1)
HORIZON = 90


# --- building small typed bases by hand --------------------------------------------------------


def typed_base(customers, transactions, invoices=None, interactions=None, extras=None) -> Base:
    """A Base typed as ``io.Base`` holds it, from lists of tuples."""
    c = pd.DataFrame(customers, columns=["customer_id", "signup_date", "segment", "region",
                                         "acquisition_channel"])
    for col in ("customer_id", "segment", "region", "acquisition_channel"):
        c[col] = c[col].astype(S)
    c["signup_date"] = pd.to_datetime(c["signup_date"]).astype("datetime64[ns]")
    for name, values in (extras or {}).items():
        c[name] = values
    t = pd.DataFrame(transactions, columns=["customer_id", "ts", "order_id", "product_category",
                                            "revenue", "cost"])
    for col in ("customer_id", "order_id", "product_category"):
        t[col] = t[col].astype(S)
    t["ts"] = pd.to_datetime(t["ts"]).astype("datetime64[ns]")
    t[["revenue", "cost"]] = t[["revenue", "cost"]].astype("float64")
    inv = None
    if invoices is not None:
        inv = pd.DataFrame(invoices, columns=["customer_id", "invoice_id", "issue_date", "due_date",
                                              "amount", "paid_date"])
        for col in ("customer_id", "invoice_id"):
            inv[col] = inv[col].astype(S)
        for col in ("issue_date", "due_date", "paid_date"):
            inv[col] = pd.to_datetime(inv[col]).astype("datetime64[ns]")
        inv["amount"] = inv["amount"].astype("float64")
    it = None
    if interactions is not None:
        it = pd.DataFrame(interactions, columns=["customer_id", "ts", "kind", "cost_to_serve"])
        for col in ("customer_id", "kind"):
            it[col] = it[col].astype(S)
        it["ts"] = pd.to_datetime(it["ts"]).astype("datetime64[ns]")
        it["cost_to_serve"] = it["cost_to_serve"].astype("float64")
    return Base(customers=c, transactions=t, invoices=inv, interactions=it)


def hand_base(**kw) -> Base:
    """A: a B2B customer with history, invoices and contacts; B: new, nothing before T;
    C: signs up on T (not known); D: one old purchase, one invoice paid early."""
    return typed_base(
        customers=[
            ("A", "2023-01-15", "B2B", "north", "sales"),
            ("B", "2024-05-01", "B2C", "south", "web"),
            ("C", "2024-07-01", "B2C", "south", "web"),
            ("D", "2022-06-01", "B2C", "east", "store"),
        ],
        transactions=[
            ("A", "2023-02-01 10:00", "o1", "books", 100.0, 60.0),
            ("A", "2024-03-01 12:00", "o2", "books", 50.0, 20.0),
            ("A", "2024-03-01 12:00", "o2", "electronics", 200.0, 150.0),
            ("A", "2024-06-20 08:00", "o3", "home", 30.0, 10.0),
            ("A", "2024-07-15 09:00", "o4", "books", 40.0, 25.0),  # horizon
            ("A", "2024-10-15 09:00", "o5", "home", 10.0, 5.0),  # after the horizon
            ("B", "2024-08-01 11:00", "o6", "fashion", 80.0, 30.0),  # horizon
            ("C", "2024-07-02 11:00", "o7", "fashion", 5.0, 1.0),
            ("D", "2023-06-01 00:00", "o8", "home", 20.0, 5.0),
            ("D", "2024-12-30 00:00", "o9", "home", 1.0, 1.0),  # sets the data end
        ],
        invoices=[
            ("A", "i1", "2023-02-01", "2023-03-03", 100.0, "2023-03-10"),
            ("A", "i2", "2024-03-01", "2024-03-31", 250.0, "2024-07-05"),  # paid after T
            ("A", "i3", "2024-06-20", "2024-07-20", 30.0, None),
            ("A", "i5", "2024-05-01", "2024-05-31", 20.0, None),  # 90 days past due on 08-29
            ("A", "i4", "2024-07-15", "2024-08-14", 40.0, None),  # issued after T
            ("D", "i6", "2023-06-01", "2023-06-15", 20.0, "2023-06-10"),
        ],
        interactions=[
            ("A", "2024-06-01 09:00", "complaint", 80.0),
            ("A", "2024-01-10 10:00", "support", 15.0),
            ("A", "2023-05-01 10:00", "visit", 60.0),  # older than 365 days
            ("A", "2024-07-02 10:00", "campaign", 1.0),  # after T
            ("B", "2024-05-10 10:00", "campaign", 0.8),
        ],
        **kw,
    )


CATEGORIES = ["books", "electronics", "fashion", "home"]


def row(frame: pd.DataFrame, customer: str) -> pd.Series:
    return frame.set_index("customer_id").loc[customer]


# --- hand-computed expectations ----------------------------------------------------------------


@pytest.fixture(scope="module")
def hand() -> pd.DataFrame:
    return compute_features(hand_base().tables(), AS_OF, HORIZON, CATEGORIES, with_labels=True)


def test_known_customers_only_in_input_order(hand: pd.DataFrame) -> None:
    assert hand["customer_id"].tolist() == ["A", "B", "D"]  # C signs up on T: not known


def test_customer_a_rfm_trend_mix(hand: pd.DataFrame) -> None:
    a = row(hand, "A")
    assert a["tenure_days"] == 533
    assert (a["order_count_30d"], a["revenue_30d"], a["margin_30d"]) == (1, 30.0, 20.0)
    assert (a["order_count_90d"], a["revenue_90d"], a["margin_90d"]) == (1, 30.0, 20.0)
    assert (a["order_count_365d"], a["revenue_365d"], a["margin_365d"]) == (2, 280.0, 100.0)
    assert (a["order_count_lifetime"], a["revenue_lifetime"], a["margin_lifetime"]) == (3, 380.0, 140.0)
    assert a["days_since_last_purchase"] == pytest.approx(10 + 16 / 24)
    assert a["days_since_first_purchase"] == pytest.approx(516 - 10 / 24)
    assert a["revenue_prev_90d"] == 250.0
    assert a["revenue_trend_90d_ratio"] == pytest.approx((30 - 250) / 280)
    gaps = [394 + 2 / 24, 111 - 4 / 24]
    assert a["inter_purchase_mean_days"] == pytest.approx(sum(gaps) / 2)
    assert a["inter_purchase_cv_ratio"] == pytest.approx(abs(gaps[0] - gaps[1]) / 2 / (sum(gaps) / 2))
    assert a["revenue_share_365d_books"] == pytest.approx(50 / 280)
    assert a["revenue_share_365d_electronics"] == pytest.approx(200 / 280)
    assert a["revenue_share_365d_fashion"] == 0.0
    assert a["revenue_share_365d_home"] == pytest.approx(30 / 280)
    assert a["category_breadth_365d_count"] == 3
    assert a["category_breadth_lifetime_count"] == 3
    assert a["margin_rate_365d_share"] == pytest.approx(100 / 280)


def test_customer_a_value_payment_service(hand: pd.DataFrame) -> None:
    a = row(hand, "A")
    assert a["cost_to_serve_90d"] == 80.0
    assert a["cost_to_serve_365d"] == 95.0
    assert a["current_value_365d"] == 5.0
    assert a["invoice_count_lifetime"] == 4  # i4 is issued after T
    assert a["invoice_count_365d"] == 3
    assert a["open_invoice_count"] == 3  # i2 is paid after T, so open at T
    assert a["outstanding_balance"] == 300.0
    assert a["overdue_balance"] == 270.0  # i2 and i5; i3 is due after T
    assert a["current_days_past_due"] == 92  # i2, due 2024-03-31
    assert (a["mean_days_late"], a["max_days_late"], a["paid_late_share"]) == (7.0, 7.0, 1.0)
    assert math.isnan(a["days_late_trend"])  # nothing paid in the last 180 days
    assert (a["complaint_count_90d"], a["complaint_count_365d"]) == (1, 1)
    assert (a["support_count_90d"], a["support_count_365d"]) == (0, 1)
    assert (a["visit_count_90d"], a["visit_count_365d"]) == (0, 0)
    assert (a["campaign_count_90d"], a["campaign_count_365d"]) == (0, 0)
    assert a["days_since_last_complaint"] == pytest.approx(30 - 9 / 24)


def test_customer_a_labels(hand: pd.DataFrame) -> None:
    a = row(hand, "A")
    assert a["label_churn"] == 0.0
    assert [a[f"label_purchase_{c}"] for c in CATEGORIES] == [1, 0, 0, 0]  # o5 is after T+H
    assert a["label_default"] == 1.0  # i5 reaches 90 days past due on 2024-08-29
    assert a["label_margin"] == 15.0


def test_customer_without_purchases_has_zero_activity(hand: pd.DataFrame) -> None:
    b = row(hand, "B")
    assert b["tenure_days"] == 61
    for w in ("30d", "90d", "365d", "lifetime"):
        assert (b[f"order_count_{w}"], b[f"revenue_{w}"], b[f"margin_{w}"]) == (0, 0.0, 0.0)
    for name in ("days_since_last_purchase", "days_since_first_purchase", "revenue_trend_90d_ratio",
                 "inter_purchase_mean_days", "inter_purchase_cv_ratio", "revenue_share_365d_books",
                 "margin_rate_365d_share", "mean_days_late", "max_days_late", "paid_late_share",
                 "days_since_last_complaint", "label_churn", "label_default"):
        assert math.isnan(b[name]), name
    assert b["category_breadth_lifetime_count"] == 0
    assert (b["invoice_count_lifetime"], b["current_days_past_due"], b["outstanding_balance"]) == (0, 0, 0.0)
    assert (b["cost_to_serve_90d"], b["current_value_365d"], b["campaign_count_90d"]) == (0.8, -0.8, 1)
    assert (b["label_purchase_fashion"], b["label_margin"]) == (1, 50.0)


def test_lapsed_customer(hand: pd.DataFrame) -> None:
    d = row(hand, "D")
    assert (d["order_count_lifetime"], d["revenue_lifetime"], d["margin_lifetime"]) == (1, 20.0, 15.0)
    assert d["order_count_365d"] == 0
    assert d["days_since_last_purchase"] == 396.0
    assert math.isnan(d["revenue_share_365d_home"])
    assert (d["category_breadth_365d_count"], d["category_breadth_lifetime_count"]) == (0, 1)
    assert (d["mean_days_late"], d["max_days_late"], d["paid_late_share"]) == (0.0, 0.0, 0.0)
    assert (d["invoice_count_lifetime"], d["invoice_count_365d"], d["open_invoice_count"]) == (1, 0, 0)
    assert (d["label_churn"], d["label_default"], d["label_margin"]) == (1.0, 0.0, 0.0)
    assert d["cost_to_serve_365d"] == 0.0 and math.isnan(d["days_since_last_complaint"])


def test_columns_and_dtypes_follow_the_catalogue(hand: pd.DataFrame) -> None:
    specs = catalogue_specs(CATEGORIES)
    assert hand.columns.tolist() == ["customer_id", *[s.name for s in specs]]
    for spec in specs:
        assert str(hand[spec.name].dtype) == spec.dtype, spec.name


def test_missing_optional_tables_drop_their_families() -> None:
    full = hand_base()
    bare = Base(customers=full.customers, transactions=full.transactions)
    out = compute_features(bare.tables(), AS_OF, HORIZON, CATEGORIES, with_labels=True)
    names = set(out.columns)
    assert not names & {"invoice_count_lifetime", "label_default", "current_days_past_due"}
    assert not names & {"cost_to_serve_365d", "current_value_365d", "complaint_count_90d"}
    assert "margin_rate_365d_share" in names
    pd.testing.assert_frame_equal(
        out, compute_features(full.tables(), AS_OF, HORIZON, CATEGORIES, with_labels=True)[out.columns]
    )


def test_no_labels_without_asking(hand: pd.DataFrame) -> None:
    out = compute_features(hand_base().tables(), AS_OF, HORIZON, CATEGORIES, with_labels=False)
    assert not [c for c in out.columns if c.startswith("label_")]
    pd.testing.assert_frame_equal(out, hand[out.columns])


def test_extra_attributes_pass_through() -> None:
    base = hand_base(extras={
        "tier": pd.array(["gold", None, "gold", "silver"], dtype=S),
        "employees": [120, 1, 1, 3],
        "vip": [True, False, False, True],
        "contract_end": pd.to_datetime(["2024-12-31", None, None, "2024-06-01"]),
    })
    out = compute_features(base.tables(), AS_OF, HORIZON, CATEGORIES, with_labels=False)
    assert out["tier"].dtype == pd.CategoricalDtype(["gold", "silver"])
    assert out["tier"].astype(object).tolist()[0] == "gold" and pd.isna(out["tier"].iloc[1])
    assert out["employees"].tolist() == [120.0, 1.0, 3.0]
    assert out["vip"].tolist() == [1.0, 0.0, 1.0]
    assert out["days_since_contract_end"].iloc[0] == -183.0
    assert out["days_since_contract_end"].iloc[2] == 30.0


def test_attribute_named_like_a_feature_is_an_error() -> None:
    base = hand_base(extras={"tenure_days": [1, 2, 3, 4]})
    with pytest.raises(ValueError) as err:
        compute_features(base.tables(), AS_OF, HORIZON, CATEGORIES, with_labels=False)
    assert str(err.value) == (
        "customer attribute(s) tenure_days have the name of a computed feature; rename them in the base"
    )


def test_an_order_is_an_order_id_at_one_time() -> None:
    base = typed_base(
        customers=[("A", "2023-01-01", "B2C", "x", "web"), ("B", "2023-01-01", "B2C", "x", "web")],
        transactions=[
            ("A", "2024-06-01 10:00", "o1", "books", 10.0, 5.0),
            ("A", "2024-06-01 10:00", "o2", "books", 10.0, 5.0),  # same time, another order
            ("A", "2024-06-01 10:00", "o1", "home", 10.0, 5.0),  # o1 again, interleaved
            ("A", "2024-04-15 10:00", "o3", "home", 1.0, 0.0),
            ("A", "2024-06-25 10:00", "o3", "books", 1.0, 0.0),  # o3 at another time: 2 purchases
            ("B", "2024-06-01 10:00", "o1", "books", 7.0, 1.0),  # o1 reused by B: B's own order
        ],
    )
    out = compute_features(base.tables(), AS_OF, HORIZON, ["books", "home"], with_labels=False)
    a, b = row(out, "A"), row(out, "B")
    assert (a["order_count_lifetime"], a["order_count_30d"], a["order_count_90d"]) == (4, 3, 4)
    assert a["revenue_30d"] == 31.0  # revenue follows the lines
    assert a["inter_purchase_mean_days"] == pytest.approx((47 + 0 + 24) / 3)
    assert b["order_count_lifetime"] == 1


def test_unknown_category_counts_in_totals_only() -> None:
    out = compute_features(hand_base().tables(), AS_OF, HORIZON, ["books", "home"], with_labels=True)
    a = row(out, "A")
    assert a["revenue_365d"] == 280.0
    assert a["revenue_share_365d_books"] + a["revenue_share_365d_home"] == pytest.approx(80 / 280)
    assert a["category_breadth_365d_count"] == 2


def test_category_names_become_column_names() -> None:
    assert category_slugs(["Home & Garden", "books", "TV/Audio"]) == ["home_garden", "books", "tv_audio"]
    with pytest.raises(ValueError) as err:
        category_slugs(["Home", "home"])
    assert str(err.value) == (
        "product categories 'Home' and 'home' both give the column name 'home'; rename one of them in the base"
    )
    # accents come off Latin letters; other scripts stay (they had all been dropped: "Bücher"
    # read "b_cher", and any two Japanese categories collided as "blank")
    assert category_slugs(["Électronique", "Bücher", "本", "家電 & ゲーム", "Straße", "a__b"]) == [
        "electronique", "bucher", "本", "家電_ゲーム", "straße", "a_b"]


def test_categories_of_any_script_give_the_same_features() -> None:
    """A base whose categories are written in German and Japanese computes what the English one
    does, under their column names."""
    base = hand_base()
    names = {"books": "Bücher", "home": "本", "electronics": "家電 & ゲーム"}
    english = compute_features(base.tables(), AS_OF, HORIZON, ["books", "home", "electronics"], with_labels=True)
    tables = base.tables()
    tables["transactions"] = tables["transactions"].assign(
        product_category=tables["transactions"]["product_category"].astype(object).replace(names).astype(S))
    other = compute_features(tables, AS_OF, HORIZON, list(names.values()), with_labels=True)
    renamed = {c: c.replace("_books", "_bücher").replace("_home", "_本").replace("_electronics", "_家電_ゲーム")
               for c in english.columns}
    renamed = {c: n.replace("bücher", "bucher") for c, n in renamed.items()}
    pd.testing.assert_frame_equal(other, english.rename(columns=renamed))


def test_empty_chunk() -> None:
    base = hand_base()
    tables = {name: df.iloc[0:0] for name, df in base.tables().items()}
    out = compute_features(tables, AS_OF, HORIZON, CATEGORIES, with_labels=True)
    assert len(out) == 0
    assert out.columns.tolist()[1:] == [s.name for s in catalogue_specs(CATEGORIES)]


# --- the slow reference implementation ---------------------------------------------------------


def _days(delta: timedelta) -> float:
    return delta / timedelta(days=1)


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 else math.nan


def _is_sale(line: dict) -> bool:
    """A line that is not a return: neither its revenue nor its cost is negative."""
    return line["revenue"] >= 0 and line["cost"] >= 0


def reference_snapshot(base: Base, as_of: date, horizon_days: int, categories: list[str],
                       with_labels: bool) -> pd.DataFrame:
    """Features and labels customer by customer, in plain Python, from the definitions.

    Returns net against the money (sums, shares, the margin label); every count, recency and
    purchase label reads the sales only."""
    t = datetime.combine(as_of, datetime.min.time())
    end = t + timedelta(days=horizon_days)

    def records(df: pd.DataFrame | None) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = defaultdict(list)
        if df is not None:
            for r in df.to_dict("records"):
                out[r["customer_id"]].append(r)
        return out

    txs, invs, its = records(base.transactions), records(base.invoices), records(base.interactions)
    rows = []
    for c in base.customers.to_dict("records"):
        if not c["signup_date"] < t:
            continue
        r: dict = {"customer_id": c["customer_id"], "segment": c["segment"], "region": c["region"],
                   "acquisition_channel": c["acquisition_channel"],
                   "tenure_days": (t - c["signup_date"]).days, "as_of_month": as_of.month}
        past = [x for x in txs[c["customer_id"]] if x["ts"] < t]
        bought = [x for x in past if _is_sale(x)]
        orders = {(x["order_id"], x["ts"]) for x in bought}  # an order id at one time
        for w, d in (("30d", 30), ("90d", 90), ("365d", 365), ("lifetime", None)):
            since = t - timedelta(days=d) if d else datetime.min
            lines = [x for x in past if x["ts"] >= since]
            r[f"order_count_{w}"] = sum(1 for _, ts in orders if ts >= since)
            r[f"revenue_{w}"] = sum(x["revenue"] for x in lines)
            r[f"margin_{w}"] = sum(x["revenue"] - x["cost"] for x in lines)
        times = sorted(ts for _, ts in orders)
        r["days_since_last_purchase"] = _days(t - times[-1]) if times else math.nan
        r["days_since_first_purchase"] = _days(t - times[0]) if times else math.nan
        r["margin_per_order_365d"] = _ratio(r["margin_365d"], r["order_count_365d"])
        r["margin_per_order_lifetime"] = _ratio(r["margin_lifetime"], r["order_count_lifetime"])
        prev = sum(x["revenue"] for x in past if t - timedelta(days=180) <= x["ts"] < t - timedelta(days=90))
        r["revenue_prev_90d"] = prev
        now, before = max(r["revenue_90d"], 0.0), max(prev, 0.0)
        r["revenue_trend_90d_ratio"] = _ratio(now - before, now + before)
        gaps = [_days(b - a) for a, b in zip(times, times[1:], strict=False)]
        r["inter_purchase_mean_days"] = statistics.fmean(gaps) if gaps else math.nan
        r["inter_purchase_cv_ratio"] = (
            _ratio(statistics.pstdev(gaps), statistics.fmean(gaps)) if len(gaps) >= 2 else math.nan
        )
        year = [x for x in past if x["ts"] >= t - timedelta(days=365)]
        for cat, slug in zip(categories, category_slugs(categories), strict=True):
            part = sum(x["revenue"] for x in year if x["product_category"] == cat)
            total = r["revenue_365d"]
            r[f"revenue_share_365d_{slug}"] = min(max(part / total, 0.0), 1.0) if total > 0 else math.nan
        bought_year = [x for x in bought if x["ts"] >= t - timedelta(days=365)]
        for cat, slug in zip(categories, category_slugs(categories), strict=True):
            mine = [x["ts"] for x in bought if x["product_category"] == cat]
            r[f"days_since_last_purchase_{slug}"] = _days(t - max(mine)) if mine else math.nan
            r[f"line_count_365d_{slug}"] = sum(1 for x in bought_year if x["product_category"] == cat)
            r[f"line_count_lifetime_{slug}"] = len(mine)
        r["category_breadth_365d_count"] = len({x["product_category"] for x in bought_year} & set(categories))
        r["category_breadth_lifetime_count"] = len({x["product_category"] for x in bought} & set(categories))
        r["margin_rate_365d_share"] = (_ratio(r["margin_365d"], r["revenue_365d"])
                                       if r["revenue_365d"] > 0 else math.nan)
        if base.interactions is not None:
            contacts = [x for x in its[c["customer_id"]] if x["ts"] < t]
            for d in (90, 365):
                r[f"cost_to_serve_{d}d"] = sum(x["cost_to_serve"] for x in contacts
                                               if x["ts"] >= t - timedelta(days=d))
            r["current_value_365d"] = r["margin_365d"] - r["cost_to_serve_365d"]
        if base.invoices is not None:
            mine = [x for x in invs[c["customer_id"]] if x["amount"] >= 0]  # credit notes apart
            notes = [x for x in invs[c["customer_id"]] if x["amount"] < 0]
            issued = [x for x in mine if x["issue_date"] < t]
            r["invoice_count_365d"] = sum(1 for x in issued if x["issue_date"] >= t - timedelta(days=365))
            r["invoice_count_lifetime"] = len(issued)
            paid = [x for x in issued if not pd.isna(x["paid_date"]) and x["paid_date"] < t]
            open_ = [x for x in issued if x not in paid]
            r["open_invoice_count"] = len(open_)
            r["outstanding_balance"] = sum(x["amount"] for x in open_) + sum(
                x["amount"] for x in notes
                if x["issue_date"] < t and (pd.isna(x["paid_date"]) or x["paid_date"] >= t))
            r["overdue_balance"] = sum(x["amount"] for x in open_ if x["due_date"] < t)
            r["current_days_past_due"] = max([(t - x["due_date"]).days for x in open_ if x["due_date"] < t],
                                             default=0)
            dpd = [(t - x["due_date"]).days for x in open_]
            r["open_dpd_1_30_count"] = sum(1 for d in dpd if 1 <= d <= 30)
            r["open_dpd_31_60_count"] = sum(1 for d in dpd if 31 <= d <= 60)
            r["open_dpd_61_89_count"] = sum(1 for d in dpd if 61 <= d <= 89)
            r["open_dpd_90_plus_count"] = sum(1 for d in dpd if d >= 90)
            late = [max((x["paid_date"] - x["due_date"]).days, 0) for x in paid]
            r["mean_days_late"] = statistics.fmean(late) if late else math.nan
            r["max_days_late"] = float(max(late)) if late else math.nan
            r["paid_late_share"] = sum(1 for d in late if d > 0) / len(late) if late else math.nan
            cut = t - timedelta(days=180)
            recent = [max((x["paid_date"] - x["due_date"]).days, 0) for x in paid if x["paid_date"] >= cut]
            early = [max((x["paid_date"] - x["due_date"]).days, 0) for x in paid if x["paid_date"] < cut]
            r["days_late_trend"] = (statistics.fmean(recent) - statistics.fmean(early)
                                    if recent and early else math.nan)
        if base.interactions is not None:
            contacts = [x for x in its[c["customer_id"]] if x["ts"] < t]
            for kind in INTERACTION_KINDS:
                for d in (90, 365):
                    r[f"{kind}_count_{d}d"] = sum(1 for x in contacts if x["kind"] == kind
                                                  and x["ts"] >= t - timedelta(days=d))
            complaints = [x["ts"] for x in contacts if x["kind"] == "complaint"]
            r["days_since_last_complaint"] = _days(t - max(complaints)) if complaints else math.nan
        if with_labels:
            horizon = [x for x in txs[c["customer_id"]] if t <= x["ts"] < end]
            horizon_bought = [x for x in horizon if _is_sale(x)]
            r["label_churn"] = (0.0 if horizon_bought else 1.0) if bought else math.nan
            for cat, slug in zip(categories, category_slugs(categories), strict=True):
                r[f"label_purchase_{slug}"] = int(any(x["product_category"] == cat for x in horizon_bought))
            if base.invoices is not None:
                mine = [x for x in invs[c["customer_id"]] if x["amount"] >= 0]  # no credit notes
                if any(x["issue_date"] < t for x in mine):
                    r["label_default"] = float(any(
                        t <= x["due_date"] + timedelta(days=90) < end
                        and (pd.isna(x["paid_date"]) or x["paid_date"] >= x["due_date"] + timedelta(days=90))
                        for x in mine))
                else:
                    r["label_default"] = math.nan
            r["label_margin"] = sum(x["revenue"] - x["cost"] for x in horizon)
        rows.append(r)
    return pd.DataFrame(rows)


def assert_matches_reference(fast: pd.DataFrame, slow: pd.DataFrame) -> None:
    fast = fast.sort_values("customer_id").reset_index(drop=True)
    slow = slow.sort_values("customer_id").reset_index(drop=True)
    assert fast.columns.tolist() == slow.columns.tolist()
    assert fast["customer_id"].astype(str).tolist() == slow["customer_id"].tolist()
    for column in fast.columns[1:]:
        a, b = fast[column], slow[column]
        if isinstance(a.dtype, pd.CategoricalDtype):
            assert a.astype(object).tolist() == b.tolist(), column
        else:
            np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-9, atol=1e-9,
                                       err_msg=column)


def test_reference_on_the_hand_base(hand: pd.DataFrame) -> None:
    assert_matches_reference(hand, reference_snapshot(hand_base(), AS_OF, HORIZON, CATEGORIES, True))


def synthetic_base(n: int, seed: int) -> Base:
    from crmscore.features.synthetic import generate_base

    return generate_base(n, seed=seed).to_base()


@pytest.mark.parametrize("as_of", [date(2022, 9, 15), date(2024, 3, 1), date(2024, 10, 3)])
def test_reference_on_a_synthetic_base(as_of: date) -> None:
    base = synthetic_base(120, seed=7)
    categories = sorted(base.transactions["product_category"].unique())
    fast = compute_features(base.tables(), as_of, HORIZON, categories, with_labels=True)
    assert_matches_reference(fast, reference_snapshot(base, as_of, HORIZON, categories, True))


@pytest.mark.parametrize("as_of", [date(2023, 2, 1), date(2024, 10, 3)])
def test_returns_and_credit_notes_net_the_money_and_are_not_purchases(as_of: date, with_returns) -> None:
    base = with_returns(synthetic_base(120, seed=7), seed=1)
    assert (base.transactions["revenue"] < 0).sum() > 100
    categories = sorted(base.transactions["product_category"].unique())
    fast = compute_features(base.tables(), as_of, HORIZON, categories, with_labels=True)
    assert_matches_reference(fast, reference_snapshot(base, as_of, HORIZON, categories, True))
    # The returns reach the features: net revenue falls, orders do not rise.
    plain = compute_features(synthetic_base(120, seed=7).tables(), as_of, HORIZON, categories,
                             with_labels=True)
    assert (fast["revenue_lifetime"] < plain["revenue_lifetime"]).any()
    assert (fast["revenue_lifetime"] <= plain["revenue_lifetime"] + 1e-9).all()
    assert (fast["order_count_lifetime"] == plain["order_count_lifetime"]).all()
    assert (fast["label_churn"].fillna(-1) == plain["label_churn"].fillna(-1)).all()
    assert fast["label_margin"].sum() < plain["label_margin"].sum()
    # credit notes lower the balance while open; they are no invoices to count or default on
    assert (base.invoices["amount"] < 0).sum() > 10
    assert (fast["outstanding_balance"] < plain["outstanding_balance"]).any()
    for column in ("invoice_count_lifetime", "open_invoice_count", "max_days_late", "label_default"):
        pd.testing.assert_series_equal(fast[column], plain[column])


def test_a_customer_who_only_sends_goods_back() -> None:
    """A return in the horizon is no purchase (the customer churned); a return-only past is
    no activity (nobody to churn); a window whose returns outweigh its sales has no shares."""
    base = typed_base(
        customers=[("A", "2023-01-01", "B2C", "north", "web"), ("B", "2023-01-01", "B2C", "north", "web")],
        transactions=[
            ("A", "2024-01-10 10:00", "O1", "books", 100.0, 60.0),
            ("A", "2024-06-20 10:00", "CN1", "books", -150.0, -60.0),  # more back than bought
            ("A", "2024-07-05 10:00", "CN2", "books", -10.0, 0.0),  # horizon: a credit note
            ("B", "2024-05-01 10:00", "CN3", "home", -20.0, -12.0),  # only a return
        ],
    )
    snap = compute_features(base.tables(), AS_OF, HORIZON, ["books", "home"], with_labels=True)
    a, b = row(snap, "A"), row(snap, "B")
    assert a["order_count_lifetime"] == 1 and a["line_count_lifetime_books"] == 1
    assert a["days_since_last_purchase"] == pytest.approx(_days(T - datetime(2024, 1, 10, 10)))
    assert a["revenue_lifetime"] == -50.0 and a["margin_lifetime"] == -50.0
    assert math.isnan(a["revenue_share_365d_books"]) and math.isnan(a["margin_rate_365d_share"])
    assert a["revenue_90d"] == -150.0 and a["revenue_prev_90d"] == 100.0
    assert a["revenue_trend_90d_ratio"] == -1.0  # the returns' window counts as no revenue
    assert a["label_churn"] == 1.0 and a["label_purchase_books"] == 0
    assert a["label_margin"] == -10.0
    assert b["order_count_lifetime"] == 0 and b["category_breadth_lifetime_count"] == 0
    assert math.isnan(b["days_since_last_purchase"]) and math.isnan(b["label_churn"])
    assert b["revenue_lifetime"] == -20.0


def test_reference_through_the_chunked_engine() -> None:
    base = synthetic_base(150, seed=11)
    categories = sorted(base.transactions["product_category"].unique())
    fast = build_snapshot(base, AS_OF, HORIZON, chunk_customers=16, n_jobs=2)
    assert_matches_reference(fast, reference_snapshot(base, AS_OF, HORIZON, categories, True))


def test_feature_specs_units_in_names() -> None:
    for spec in feature_specs(CATEGORIES, has_invoices=True, has_interactions=True):
        if spec.unit == "days":
            assert "days" in spec.name, spec.name
        if spec.unit == "count":
            assert "count" in spec.name, spec.name
        if spec.unit in ("share", "ratio"):
            assert spec.name.endswith(f"_{spec.unit}") or "_share_" in spec.name, spec.name
