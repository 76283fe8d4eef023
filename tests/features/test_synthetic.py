"""The synthetic base: determinism, realistic shape, and a truth that matches its outcomes."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from crmscore.cli import app
from crmscore.features import synthetic
from crmscore.features.synthetic import (
    CATEGORIES,
    compute_truth,
    cumulative_hazard,
    generate_base,
    payment_offset_survival,
    simulate_purchases,
    unwarp,
    warp,
)

AS_OF = date(2024, 7, 1)
HORIZON = 90


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.parquet"))
    }


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    runner = CliRunner()
    for name in ("a", "b"):
        result = runner.invoke(
            app, ["generate", "--customers", "1500", "--seed", "1", "--out", str(tmp_path / name)]
        )
        assert result.exit_code == 0, result.output
    first, second = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert first == second
    assert {"customers.parquet", "transactions.parquet", "invoices.parquet", "interactions.parquet",
            "_truth/traits.parquet", "_truth/truth_2024-10-01_h90.parquet"} == set(first)


def test_other_seed_other_base() -> None:
    a, b = generate_base(300, seed=1), generate_base(300, seed=2)
    assert not a.tables["transactions"].equals(b.tables["transactions"])


def test_bad_size_is_named() -> None:
    with pytest.raises(ValueError, match=r"^n_customers must be a positive whole number; got 0$"):
        generate_base(0, seed=1)


def test_truth_outside_period_is_named(synthetic_small) -> None:
    with pytest.raises(ValueError, match=r"as_of=2024-12-01, horizon_days=90"):
        compute_truth(synthetic_small, date(2024, 12, 1), 90)


def test_base_follows_the_contract_dtypes(base_small) -> None:
    tx = base_small.transactions
    assert str(tx["customer_id"].dtype) == "string" and tx["customer_id"].dtype.storage == "pyarrow"
    assert tx["ts"].dtype == "datetime64[ns]"
    assert tx["revenue"].dtype == "float64"
    assert set(tx["product_category"].unique()) == set(CATEGORIES)
    assert base_small.invoices["paid_date"].isna().any()
    assert set(base_small.interactions["kind"].unique()) == {"complaint", "support", "visit", "campaign"}
    assert tx["order_id"].is_unique
    assert (tx["ts"] < pd.Timestamp(synthetic.END)).all()


def customer_profit(base) -> pd.DataFrame:
    tx = base.transactions
    margin = (tx["revenue"] - tx["cost"]).groupby(tx["customer_id"]).sum()
    cost = base.interactions.groupby("customer_id")["cost_to_serve"].sum()
    ids = base.customers["customer_id"]
    return pd.DataFrame(
        {"margin": margin.reindex(ids).fillna(0).to_numpy(), "cost": cost.reindex(ids).fillna(0).to_numpy()}
    )


def test_80_20_shape_and_unprofitable_customers(base_small) -> None:
    profit = customer_profit(base_small)
    margin = np.sort(profit["margin"].to_numpy())[::-1]
    top20 = margin[: len(margin) // 5].sum() / margin.sum()
    assert top20 >= 0.60
    net = profit["margin"] - profit["cost"]
    assert 0.02 < (net < 0).mean() < 0.4  # some, not most, are unprofitable after cost to serve
    # Cost to serve rises with complaints: complainers cost more per customer.
    inter = base_small.interactions
    complaints = inter[inter["kind"] == "complaint"].groupby("customer_id").size()
    has = base_small.customers["customer_id"].isin(complaints.index).to_numpy()
    assert profit["cost"][has].mean() > profit["cost"][~has].mean()


def test_b2b_buys_more_than_b2c(base_small) -> None:
    tx = base_small.transactions.merge(base_small.customers[["customer_id", "segment"]], on="customer_id")
    per = tx.groupby("segment")["revenue"].sum() / base_small.customers.groupby("segment").size()
    assert per["B2B"] > 3 * per["B2C"]


def test_warp_round_trip() -> None:
    t = np.linspace(0, 1100, 5000)
    np.testing.assert_allclose(unwarp(warp(t)), t, atol=1e-7)
    assert np.all(np.diff(warp(t)) > 0)


def test_waiting_times_recover_the_hazard() -> None:
    """Simulate-and-recover: first waiting times follow P(W > r) = exp(-H(r)) of process (1)."""
    rng = np.random.default_rng(3)
    n = 20_000
    lam, kappa = np.full(n, 0.02), np.full(n, 150.0)
    pair, tau = simulate_purchases(lam, kappa, np.zeros(n), np.full(n, 5_000.0), rng)
    first = pd.Series(tau).groupby(pair).min()
    waits = np.full(n, np.inf)
    waits[first.index.to_numpy()] = first.to_numpy()
    grid = np.array([10.0, 50.0, 150.0, 400.0, 1500.0])
    empirical = (waits[:, None] > grid[None, :]).mean(axis=0)
    expected = np.exp(-cumulative_hazard(grid, lam[0], kappa[0]))
    np.testing.assert_allclose(empirical, expected, atol=0.012)


def test_payment_law_matches_generated_invoices(base_small, synthetic_small) -> None:
    inv = base_small.invoices.merge(synthetic_small.traits.frame, on="customer_id")
    # Only invoices whose payment would be observed in the data for any offset < 200 days.
    inv = inv[inv["due_date"] + pd.Timedelta(days=200) < pd.Timestamp(synthetic.END)]
    offset = (inv["paid_date"] - inv["due_date"]).dt.days.fillna(10_000).to_numpy()
    for x in (-3, 0, 1, 10, 30, 90):
        expected = payment_offset_survival(
            np.full(len(inv), float(x)), inv["terms_days"].to_numpy(), inv["never_pay"].to_numpy(),
            inv["late_share"].to_numpy(), inv["late_mean_days"].to_numpy(),
        ).mean()
        empirical = (offset >= x).mean()
        se = np.sqrt(expected * (1 - expected) / len(inv))
        assert abs(empirical - expected) < 4 * se + 1e-3, x


@pytest.fixture(scope="module")
def truth_and_labels(synthetic_small, base_small):
    truth = compute_truth(synthetic_small, AS_OF, HORIZON, mc_paths=100, seed=1)
    tx = base_small.transactions
    start = pd.Timestamp(AS_OF)
    window = tx[(tx["ts"] >= start) & (tx["ts"] < start + pd.Timedelta(days=HORIZON))]
    ids = truth["customer_id"]
    labels = pd.DataFrame({"churn": (~ids.isin(window["customer_id"])).astype(float).to_numpy()})
    for c in CATEGORIES:
        labels[c] = ids.isin(window.loc[window["product_category"] == c, "customer_id"]).astype(float).to_numpy()
    margin = (window["revenue"] - window["cost"]).groupby(window["customer_id"]).sum()
    labels["margin"] = margin.reindex(ids).fillna(0).to_numpy()
    inv = base_small.invoices
    cross = inv["due_date"] + pd.Timedelta(days=90)
    hit = inv[(cross >= start) & (cross < start + pd.Timedelta(days=HORIZON))
              & (inv["paid_date"].isna() | (inv["paid_date"] >= cross))]
    labels["default"] = ids.isin(hit["customer_id"]).astype(float).to_numpy()
    return truth, labels


def test_truth_is_calibrated_against_outcomes(truth_and_labels) -> None:
    """The truth is the law the outcomes were drawn from: means agree within sampling error."""
    truth, labels = truth_and_labels
    pairs = [("true_churn", "churn")] + [(f"true_purchase_{c}", c) for c in CATEGORIES]
    for t_col, l_col in pairs:
        p = truth[t_col].to_numpy()
        se = np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(labels[l_col].mean() - p.mean()) < 4 * se, t_col
    eligible = truth["true_default"].notna().to_numpy()
    p = truth.loc[eligible, "true_default"].to_numpy()
    se = np.sqrt((p * (1 - p)).sum()) / len(p)
    assert abs(labels.loc[eligible, "default"].mean() - p.mean()) < 4 * se + 1e-3
    # Expected margin: the total agrees within a few percent (heavy-tailed spend).
    assert abs(labels["margin"].sum() / truth["true_margin"].sum() - 1) < 0.08


def test_truth_ranks_outcomes_well(truth_and_labels) -> None:
    from sklearn.metrics import roc_auc_score

    truth, labels = truth_and_labels
    assert roc_auc_score(labels["churn"], truth["true_churn"]) > 0.85
    rho = stats.spearmanr(labels["margin"], truth["true_margin"]).statistic
    assert rho > 0.6


def test_truth_cli_for_another_as_of(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "base"
    assert runner.invoke(app, ["generate", "--customers", "500", "--out", str(out), "--truth-as-of", "2024-01-01",
                               "--record"]).exit_code == 0
    assert set(pd.read_parquet(out / "_truth" / "record_2024-01-01_h90.parquet")["customer_id"]) == set(
        pd.read_parquet(out / "_truth" / "truth_2024-01-01_h90.parquet")["customer_id"])
    result = runner.invoke(app, ["truth", "--base", str(out), "--as-of", "2024-03-01", "--horizon-days", "180", "--mc-paths", "20"])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "_truth" / "truth_2024-03-01_h180.parquet")
    assert {"customer_id", "true_churn", "true_default", "true_margin"} <= set(table.columns)
    assert table["true_churn"].between(0, 1).all()
    assert not (out / "_truth" / "record_2024-03-01_h180.parquet").exists()  # only when asked
    result = runner.invoke(app, ["truth", "--base", str(out), "--as-of", "2024-03-01", "--horizon-days", "180",
                                 "--mc-paths", "20", "--record"])
    assert result.exit_code == 0, result.output
    record = pd.read_parquet(out / "_truth" / "record_2024-03-01_h180.parquet")
    assert record["customer_id"].tolist() == table["customer_id"].tolist()
    assert record["record_churn"].between(0, 1).all() and (record["record_margin"] >= 0).all()


def test_restricted_base_keeps_its_customers_rows_and_their_exact_truth(synthetic_small, truth_and_labels) -> None:
    """``SyntheticBase.restrict`` (the truth of a training run's sample): each table keeps exactly
    the chosen customers' rows, and the truth's exact parts (churn, purchase per category) are
    those of the whole base; margin and default on new invoices are Monte Carlo, so not compared."""
    truth, _ = truth_and_labels
    ids = truth["customer_id"].astype(str).iloc[::7].reset_index(drop=True)
    small = synthetic_small.restrict(ids)
    assert set(small.traits.frame["customer_id"].astype(str)) == set(ids)
    for name, table in synthetic_small.tables.items():
        kept = table.to_pandas()
        kept = kept[kept["customer_id"].astype(str).isin(set(ids))].reset_index(drop=True)
        pd.testing.assert_frame_equal(small.tables[name].to_pandas(), kept)
    part = compute_truth(small, AS_OF, HORIZON, mc_paths=100, seed=1).set_index("customer_id")
    whole = truth.set_index("customer_id").loc[part.index]
    exact = ["true_churn", *(f"true_purchase_{c}" for c in CATEGORIES)]
    assert len(part) == len(ids)
    np.testing.assert_allclose(part[exact].to_numpy(), whole[exact].to_numpy(), rtol=1e-12, atol=1e-12)


def test_record_posterior_is_the_truth_seen_through_the_record(synthetic_small, truth_and_labels) -> None:
    """``record_posterior`` is E[truth | record]: among customers of a given posterior, the truth
    averages to it (a posterior too confident or too vague, or a wrong prior, tilts the slope
    of the truth on it and the deciles apart); and it predicts the outcomes worse than the
    truth, which knows the traits, but far better than the segment's mean."""
    truth, labels = truth_and_labels
    record = synthetic.record_posterior(synthetic_small, AS_OF, HORIZON, seed=3)
    assert list(record["customer_id"]) == list(truth["customer_id"])
    assert record["record_ess"].min() > 50  # the grids hold the posterior
    assert [c.replace("record_", "true_") for c in record.columns[:-3]] == [
        c for c in truth.columns if c.startswith(("customer_id", "true_churn", "true_purchase_", "true_margin",
                                                  "true_default")) and c != "true_margin_se"]
    assert list(record.columns[-3:]) == ["record_spend", "record_credit", "record_ess"]
    for col, true_col in (("record_margin", "true_margin"), ("record_churn", "true_churn"),
                          ("record_purchase_books", "true_purchase_books")):
        post, true = record[col].to_numpy(), truth[true_col].to_numpy()
        slope = np.polyfit(post, true, 1)[0]
        assert 0.9 < slope < 1.1, (col, slope)
        decile = pd.qcut(post, 10, labels=False, duplicates="drop")
        means = pd.DataFrame({"post": post, "true": true}).groupby(decile).mean()
        gap = (means["true"] - means["post"]).abs() / means["post"].abs().max()
        assert gap.max() < 0.05, (col, means)
    # the spend posterior on its own, against the trait (a wrong spend prior or order-value
    # shape moves a decile by 6-23% here; the margin's slope above hides it)
    post, spend = record["record_spend"].to_numpy(), synthetic_small.traits.frame.set_index("customer_id")[
        "spend"].reindex(record["customer_id"]).to_numpy()
    assert 0.95 < np.polyfit(post, spend, 1)[0] < 1.05
    means = pd.DataFrame({"post": post, "true": spend}).groupby(pd.qcut(post, 10, labels=False)).mean()
    assert ((means["true"] - means["post"]).abs() / means["post"]).max() < 0.05, means
    # default: given only for customers with an invoice before T, as the label; the truth
    # averages to it. Its inputs are mostly the state of the open invoices, so a wrong payment
    # law hardly moves it: the credit trait's posterior is checked on its own (a law of
    # 1.5 x or 0.7 x the trait moves the slope to 1.25 / 0.84; a shift of 0.5, or B2B's prior
    # mean at 1 instead of 0.2, the mean by 0.32 / 0.11)
    invoiced = record["record_default"].notna().to_numpy()
    assert invoiced.sum() > 300
    assert truth["true_default"].notna().to_numpy()[invoiced].all()  # on account, as the truth knows
    post, true = record["record_default"].to_numpy()[invoiced], truth["true_default"].to_numpy()[invoiced]
    assert 0.9 < np.polyfit(post, true, 1)[0] < 1.1
    assert abs(post.mean() - true.mean()) < 0.1 * true.mean()
    post = record["record_credit"].to_numpy()[invoiced]
    credit = synthetic_small.traits.frame.set_index("customer_id")["credit"].reindex(record["customer_id"]).to_numpy()
    assert 0.9 < np.polyfit(post, credit[invoiced], 1)[0] < 1.1
    assert abs((credit[invoiced] - post).mean()) < 0.08
    rmse = {name: np.sqrt(np.mean((labels["margin"].to_numpy() - p) ** 2)) for name, p in (
        ("truth", truth["true_margin"]), ("record", record["record_margin"]),
        ("segment", labels["margin"].groupby(synthetic_small.traits.frame.set_index("customer_id")["b2b"]
                                             .reindex(truth["customer_id"]).to_numpy()).transform("mean")))}
    assert rmse["truth"] < rmse["record"] < 0.8 * rmse["segment"], rmse
