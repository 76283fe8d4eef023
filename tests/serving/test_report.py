"""The portfolio view and report, on the synthetic base.

The scores frame is the *oracle* scoring of the synthetic base (``synthetic_small``, 2,000
customers): the true churn, purchase and default probabilities and expected margin from
``compute_truth``, trailing 12-month margin and cost to serve summed from the base's
transactions and interactions, the open invoice balance at as-of, and a CLV from the true
expected margin and retention. Every figure of the report is checked against a direct,
plain computation written here.
"""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from crmscore.features.synthetic import CATEGORIES, SyntheticBase, compute_truth
from crmscore.serving.policy import Cutoffs, load_policy
from crmscore.serving.portfolio import QUADRANTS, assess_customer, assign_portfolio
from crmscore.serving.report import (
    COLOURS,
    migration_matrix,
    pareto_curve,
    portfolio_summary,
    quadrant_table,
    read_scores,
    run_portfolio,
    top_share,
    value_bands,
    write_report,
)

AS_OF = date(2024, 10, 1)
HORIZON_DAYS = 90


def oracle_scores(synthetic: SyntheticBase, as_of: date = AS_OF) -> pd.DataFrame:
    """Scores a perfect model would give the synthetic base at ``as_of``."""
    truth = compute_truth(synthetic, as_of, HORIZON_DAYS, mc_paths=40, seed=0)
    base = synthetic.to_base()
    t1 = pd.Timestamp(as_of)
    t0 = t1 - pd.Timedelta(days=365)
    tx = base.transactions[(base.transactions["ts"] >= t0) & (base.transactions["ts"] < t1)]
    margin = (tx["revenue"] - tx["cost"]).groupby(tx["customer_id"].astype(str)).sum()
    it = base.interactions
    it = it[(it["ts"] >= t0) & (it["ts"] < t1)]
    cost = it.groupby(it["customer_id"].astype(str))["cost_to_serve"].sum()
    inv = base.invoices[base.invoices["issue_date"] < t1]
    still_open = inv["paid_date"].isna() | (inv["paid_date"] >= t1)
    balance = (
        inv[still_open].groupby(inv.loc[still_open, "customer_id"].astype(str))["amount"].sum()
    )
    invoiced = set(inv["customer_id"].astype(str))

    ids = truth["customer_id"].astype(str)
    churn = truth["true_churn"].to_numpy()
    per_horizon = truth["true_margin"].to_numpy()
    discount = 1.10 ** (HORIZON_DAYS / 365.25) - 1  # 10% a year
    scores = pd.DataFrame(
        {
            "customer_id": ids,
            "as_of": t1,
            "horizon_days": HORIZON_DAYS,
            "churn_prob": churn,
            **{f"propensity_{c}": truth[f"true_purchase_{c}"].to_numpy() for c in CATEGORIES},
            "default_prob": truth["true_default"].to_numpy(),
            "expected_margin": per_horizon,
            # present value of the margin per horizon, retained with probability 1 - churn
            "clv": per_horizon * (1 + discount) / (discount + churn),
            "margin_365d": ids.map(margin).fillna(0.0).to_numpy(),
            "cost_to_serve_365d": ids.map(cost).fillna(0.0).to_numpy(),
            "outstanding_balance": np.where(
                ids.isin(invoiced), ids.map(balance).fillna(0.0), np.nan
            ),
        }
    )
    scores["current_value"] = scores["margin_365d"] - scores["cost_to_serve_365d"]
    segment = base.customers.set_index(base.customers["customer_id"].astype(str))["segment"]
    scores["segment"] = ids.map(segment).astype(str).to_numpy()
    return scores


@pytest.fixture(scope="module")
def scores(synthetic_small: SyntheticBase) -> pd.DataFrame:
    return oracle_scores(synthetic_small)


@pytest.fixture(scope="module")
def scored(scores: pd.DataFrame) -> pd.DataFrame:
    return assign_portfolio(scores, load_policy())


@pytest.fixture(scope="module")
def previous(synthetic_small: SyntheticBase) -> pd.DataFrame:
    """The same base scored a quarter earlier."""
    return assign_portfolio(oracle_scores(synthetic_small, date(2024, 7, 1)), load_policy())


def test_the_oracle_scores_look_like_a_real_portfolio(scores: pd.DataFrame) -> None:
    assert len(scores) > 1500
    assert (scores["current_value"] < 0).any()  # cost to serve makes some unprofitable
    assert scores["default_prob"].isna().any() and scores["default_prob"].notna().any()
    assert scores["clv"].max() > 20 * scores["clv"].median()


# --- tables against direct computations -------------------------------------------------------


def test_quadrant_counts_and_profit_shares_agree_with_a_direct_computation(
    scored: pd.DataFrame,
) -> None:
    table = quadrant_table(scored)
    total_cv = scored["current_value"].sum()
    total_margin = scored["margin_365d"].sum()
    for q in QUADRANTS:
        rows = scored[scored["quadrant"].astype(str) == q]
        assert table.at[q, "customers"] == len(rows)
        assert table.at[q, "customer_share"] == pytest.approx(len(rows) / len(scored))
        assert table.at[q, "current_value"] == pytest.approx(rows["current_value"].sum())
        assert table.at[q, "profit_share"] == pytest.approx(rows["current_value"].sum() / total_cv)
        assert table.at[q, "margin_share"] == pytest.approx(
            rows["margin_365d"].sum() / total_margin
        )
    assert table.loc[list(QUADRANTS), "customers"].sum() == len(scored)
    assert table.loc[list(QUADRANTS), "profit_share"].sum() == pytest.approx(1.0)
    assert table.at["total", "customers"] == len(scored)
    # Buttle: unprofitable customers are there, and invest brings more than all the profit.
    assert table.at["sack", "current_value"] < 0
    assert table.at["invest", "profit_share"] > 1.0


def test_the_80_20_figure_agrees_with_a_direct_computation(scored: pd.DataFrame) -> None:
    margin = scored["margin_365d"].sort_values(ascending=False).to_numpy()
    k = math.ceil(0.2 * len(margin))
    direct = margin[:k].sum() / margin.sum()
    assert top_share(scored["margin_365d"]) == pytest.approx(direct)
    summary = portfolio_summary(scored)
    assert summary["pareto"]["margin_share_of_top"] == pytest.approx(direct)
    cv = scored["current_value"].sort_values(ascending=False).to_numpy()
    assert summary["pareto"]["current_value_share_of_top"] == pytest.approx(cv[:k].sum() / cv.sum())
    # The synthetic base is built so that about 20% bring about 80% of the margin.
    assert 0.65 < direct < 0.95


def test_top_share_and_pareto_curve_by_hand() -> None:
    values = [1.0, 10.0, 3.0, np.nan, 5.0, 1.0]  # 5 known; top 20% = 1 customer
    assert top_share(values) == pytest.approx(10 / 20)
    assert top_share(values, top=0.4) == pytest.approx(15 / 20)  # 2 customers
    assert top_share(values, top=1.0) == pytest.approx(1.0)
    curve = pareto_curve(values)
    np.testing.assert_allclose(curve["customer_share"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve["value_share"], [0, 0.5, 0.75, 0.9, 0.95, 1.0])
    whale = pareto_curve([5.0, -3.0, 2.0])  # the rest lose money: the curve tops 100%
    np.testing.assert_allclose(whale["value_share"], [0, 1.25, 1.75, 1.0])
    with pytest.raises(ValueError, match=r"^top must be a share of customers in \(0, 1\]; got 0$"):
        top_share(values, top=0)


@pytest.mark.parametrize("column", ["current_value", "future_potential"])
def test_value_bands_are_deciles_with_their_share_of_margin(
    scored: pd.DataFrame, column: str
) -> None:
    bands = value_bands(scored, column)
    known = scored[scored[column].notna()]
    n = len(known)
    assert list(bands.index) == list(range(1, 11))
    assert bands["customers"].sum() == n
    assert bands["customers"].max() - bands["customers"].min() <= 1
    ranked = known.sort_values(column, ascending=False, kind="stable")
    top = ranked.iloc[: bands.at[1, "customers"]]
    assert bands.at[1, "min"] == pytest.approx(top[column].min())
    assert bands.at[1, "margin_share"] == pytest.approx(
        top["margin_365d"].sum() / known["margin_365d"].sum()
    )
    assert bands["margin_share"].sum() == pytest.approx(1.0)
    assert (bands["min"].to_numpy()[:-1] >= bands["max"].to_numpy()[1:]).all()  # ordered bands


def test_migration_matrix_counts_equal_a_direct_crosstab(
    scored: pd.DataFrame, previous: pd.DataFrame
) -> None:
    # Make the two scorings differ in membership too.
    before = previous.iloc[40:]
    now = scored.iloc[:-25]
    matrix = migration_matrix(before, now)
    both = before[["customer_id", "quadrant"]].merge(
        now[["customer_id", "quadrant"]], on="customer_id", suffixes=("_before", "_now")
    )
    direct = pd.crosstab(both["quadrant_before"].astype(str), both["quadrant_now"].astype(str))
    for a in QUADRANTS:
        for b in QUADRANTS:
            expected = direct.at[a, b] if a in direct.index and b in direct.columns else 0
            assert matrix.at[a, b] == expected
    new = now[~now["customer_id"].isin(before["customer_id"])]
    gone = before[~before["customer_id"].isin(now["customer_id"])]
    for q in QUADRANTS:
        assert matrix.at["new", q] == (new["quadrant"].astype(str) == q).sum()
        assert matrix.at[q, "gone"] == (gone["quadrant"].astype(str) == q).sum()
    assert matrix.to_numpy().sum() == len(both) + len(new) + len(gone)


def test_migration_needs_one_row_per_customer(scored: pd.DataFrame) -> None:
    doubled = pd.concat([scored.iloc[:3], scored.iloc[:1]])
    with pytest.raises(ValueError) as info:
        migration_matrix(doubled, scored)
    assert str(info.value) == (
        f"the previous scoring has 1 duplicated customer_id(s), e.g. "
        f"{scored['customer_id'].iloc[0]!r}; one row per customer is expected"
    )


# --- summary ---------------------------------------------------------------------------------


def test_summary_is_json_and_agrees_with_the_tables(
    scored: pd.DataFrame, previous: pd.DataFrame
) -> None:
    summary = portfolio_summary(scored, previous)
    text = json.dumps(summary, allow_nan=False)  # strict JSON: no NaN
    assert json.loads(text) == summary
    assert summary["policy_version"] == "default@1"
    assert summary["as_of"] == "2024-10-01"
    assert summary["n_customers"] == len(scored)
    assert summary["margin_basis"] == "margin_365d"
    assert sum(q["customers"] for q in summary["quadrants"].values()) == len(scored)
    assert summary["cutoffs"]["current_value_cutoff"] == 0.0
    assert summary["cutoffs"]["future_potential_cutoff"] == pytest.approx(
        float(scored["future_potential"].median())
    )
    assert summary["strategic"]["high_value"] == int(scored["flag_high_value"].sum())
    assert summary["strategic"]["benchmark"] == 0  # no reference-account column in this base
    assert summary["actions"]["develop_and_retain"] == summary["quadrants"]["invest"]["customers"]
    no_credit = scored["default_prob"].isna() | scored["outstanding_balance"].isna()
    assert summary["missing_components"]["credit"] == int(no_credit.sum())
    counts = summary["migration"]["counts"]
    assert sum(sum(row.values()) for row in counts.values()) == len(
        set(scored["customer_id"]) | set(previous["customer_id"])
    )
    assert len(summary["value_bands"]["current_value"]) == 10


def test_summary_without_margin_uses_current_value(scored: pd.DataFrame) -> None:
    summary = portfolio_summary(scored.drop(columns=["margin_365d"]))
    assert summary["margin_basis"] == "current_value"
    assert summary["pareto"]["margin_share_of_top"] == pytest.approx(
        top_share(scored["current_value"])
    )


def test_summary_needs_a_placed_frame(scores: pd.DataFrame) -> None:
    with pytest.raises(ValueError) as info:
        portfolio_summary(scores)
    assert str(info.value) == (
        "the frame lacks 'quadrant', 'future_potential': place the customers first with "
        "crmscore.serving.portfolio.assign_portfolio(scores, policy)"
    )


# --- the report ------------------------------------------------------------------------------


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_report_writes_real_images_and_html_referencing_them(
    tmp_path: Path, scored: pd.DataFrame, previous: pd.DataFrame
) -> None:
    backend = matplotlib.get_backend()
    report = write_report(scored, tmp_path / "out", previous=previous)
    assert matplotlib.get_backend() == backend  # no global backend switch
    out = report.parent
    assert report == out / "report.html"
    html = report.read_text()
    md = (out / "report.md").read_text()
    pngs = ["quadrants.png", "actions.png", "pareto.png", "value_bands.png", "migration.png"]
    for name in pngs:
        path = out / name
        assert path.stat().st_size > 20_000, name
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 600 and image.height >= 400
            pixels = np.asarray(image.convert("RGB"), dtype=float)
        assert pixels.std() > 10, f"{name} is blank"
        assert f'<img src="{name}"' in html
        assert f"]({name})" in md
    assert "<script" not in html and "http" not in html  # self-contained
    # The scatter shows the data: each quadrant's colour is drawn.
    with Image.open(out / "quadrants.png") as image:
        pixels = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3)
    for q, colour in COLOURS.items():
        alone = 0.55 * _rgb(colour) + 0.45 * 255  # one point (alpha 0.55) on white
        near = np.abs(pixels - alone).max(axis=1) < 25
        assert near.sum() > 500, q
    summary = json.loads((out / "summary.json").read_text())
    assert summary == portfolio_summary(scored, previous)
    share = f"{summary['pareto']['margin_share_of_top']:.1%}"
    assert share in html and share in md


def test_report_without_previous_has_no_migration(tmp_path: Path, scored: pd.DataFrame) -> None:
    report = write_report(scored, tmp_path)
    assert not (tmp_path / "migration.png").exists()
    assert "migration" not in report.read_text().lower()


def test_run_portfolio_end_to_end(
    tmp_path: Path, synthetic_small: SyntheticBase, scores: pd.DataFrame
) -> None:
    """What `crmscore portfolio --scores F --previous P --out D` does."""
    scores_path = tmp_path / "scores.parquet"
    previous_path = tmp_path / "previous.csv"
    scores.to_parquet(scores_path)
    oracle_scores(synthetic_small, date(2024, 7, 1)).to_csv(previous_path, index=False)
    run = run_portfolio(scores_path, tmp_path / "out", previous_path=previous_path)
    assert run.report_path.is_file() and (run.report_path.parent / "migration.png").is_file()
    scored = read_scores(run.scored_path)
    assert len(scored) == len(scores)
    assert run.quadrant_counts == scored["quadrant"].astype(str).value_counts().to_dict() | {
        q: 0 for q in QUADRANTS if q not in set(scored["quadrant"].astype(str))
    }
    # The API places one customer with the stored cut-offs exactly as the batch did.
    cutoffs = Cutoffs.model_validate_json(run.cutoffs_path.read_text())
    policy = load_policy()
    for i in (0, 11, 500):
        record = scores.iloc[i].to_dict()
        one = assess_customer(record, policy, cutoffs)
        assert one["quadrant"] == scored["quadrant"].iloc[i]
        assert one["action_codes"] == scored["action_codes"].iloc[i]


def test_run_portfolio_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        run_portfolio(tmp_path / "none.parquet", tmp_path / "out")
    assert str(info.value) == f"scores file not found: {tmp_path / 'none.parquet'}"
    odd = tmp_path / "scores.xlsx"
    odd.write_text("x")
    with pytest.raises(ValueError) as info:
        run_portfolio(odd, tmp_path / "out")
    assert str(info.value) == "scores file must be .parquet or .csv; got 'scores.xlsx'"
