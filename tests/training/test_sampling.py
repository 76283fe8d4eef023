"""Customer samples of large bases: seeded, by customer, the same in every snapshot, logged.

A large base is stood in for by a small one with small caps (``max_train_rows``, the test and
truth caps): the code paths are those of a million customers, on the real pipeline.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmscore.bundle import ModelKind
from crmscore.features.pipeline import build_snapshot, build_training_frame, restrict_base
from crmscore.features.synthetic import generate_base, write_synthetic_base
from crmscore.training.config import TrainConfig
from crmscore.training.jobs import evaluate_bundle, prepare_training_data, train_job
from crmscore.training.split import evaluation_sample, training_sample, validation_mask

CONFIG = TrainConfig(train_snapshots=6, max_train_rows=4_000)
CAPS = {"test_max_customers": 600, "truth_max_customers": 250}


@pytest.fixture(scope="module")
def synthetic():
    return generate_base(2_500, seed=5)


@pytest.fixture(scope="module")
def base_path(synthetic, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sampling") / "base"
    write_synthetic_base(synthetic, path)
    return path


@pytest.fixture(scope="module")
def sampled(base_path):
    return prepare_training_data(base_path, CONFIG, **CAPS)


def known_at(customers: pd.DataFrame, as_of: date) -> set[str]:
    return set(customers.loc[customers["signup_date"] < pd.Timestamp(as_of), "customer_id"].astype(str))


def rows_of(customers: pd.DataFrame, ids: pd.Series, dates: list[date]) -> int:
    """Training rows (customer x as-of, validation customers left out) of ``ids``, counted slowly."""
    chosen = customers[customers["customer_id"].astype(str).isin(set(ids))]
    chosen = chosen[~validation_mask(chosen["customer_id"])]
    return sum(int((chosen["signup_date"] < pd.Timestamp(d)).sum()) for d in dates)


def test_training_sample_is_seeded_by_customer_and_fills_the_cap(synthetic) -> None:
    customers = synthetic.to_base().customers
    dates = [date(2024, m, 1) for m in range(1, 7)]
    first = training_sample(customers, dates, 3_000, seed=0)
    again = training_sample(customers.sample(frac=1, random_state=3), dates, 3_000, seed=0)
    other = training_sample(customers, dates, 3_000, seed=1)
    larger = training_sample(customers, dates, 6_000, seed=0)
    assert first is not None and again is not None and other is not None and larger is not None
    # the same customers whatever the order of the table; another seed, other customers
    pd.testing.assert_series_equal(first.customer_ids, again.customer_ids)
    assert set(first.customer_ids) != set(other.customer_ids)
    # a larger cap keeps the customers of the smaller one (a customer's place is its own)
    assert set(first.customer_ids) < set(larger.customer_ids)
    # the rows it says it gives, up to the cap and no further than one customer's worth below it
    assert first.rows == rows_of(customers, first.customer_ids, dates)
    assert 3_000 - len(dates) < first.rows <= 3_000
    assert first.rows_of == rows_of(customers, customers["customer_id"], dates)
    # about the base's share of validation customers comes along
    share = validation_mask(first.customer_ids).mean()
    assert 0.1 < share < 0.3


def test_no_sample_below_the_caps(synthetic) -> None:
    customers = synthetic.to_base().customers
    dates = [date(2024, m, 1) for m in range(1, 7)]
    assert training_sample(customers, dates, 2_000_000, seed=0) is None
    assert evaluation_sample(customers, date(2024, 10, 1), 200_000, seed=0) is None


def test_truth_sample_is_part_of_the_test_sample(synthetic) -> None:
    customers = synthetic.to_base().customers
    test = evaluation_sample(customers, date(2024, 10, 1), 600, seed=0)
    truth = evaluation_sample(customers, date(2024, 10, 1), 250, seed=0, purpose="truth")
    assert len(test) == 600 and len(truth) == 250
    assert set(truth.customer_ids) < set(test.customer_ids) <= known_at(customers, date(2024, 10, 1))


def test_a_restricted_base_gives_the_whole_base_rows_of_its_customers(synthetic) -> None:
    base = synthetic.to_base()
    ids = base.customers["customer_id"].sample(700, random_state=2)
    whole = build_snapshot(base, date(2024, 7, 1), 90)
    part = build_snapshot(restrict_base(base, ids), date(2024, 7, 1), 90, plan_base=base)
    expected = whole[whole["customer_id"].isin(set(ids.astype(str)))].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected, check_exact=True)


def test_the_same_customers_in_every_training_snapshot(sampled, synthetic) -> None:
    customers = synthetic.to_base().customers
    sample = sampled.samples["train"]
    history = sampled.frame[sampled.frame["as_of"] < pd.Timestamp(sampled.test_date)]
    assert sorted(history["as_of"].dt.date.unique()) == sampled.train_dates
    assert set(history["customer_id"]) == set(sample.customer_ids)  # each in one snapshot at least
    for as_of, rows in history.groupby("as_of"):
        assert set(rows["customer_id"]) == set(sample.customer_ids) & known_at(customers, as_of.date())
    # and their rows are the full training frame's rows of the same customers
    whole = build_training_frame(synthetic.to_base(), sampled.train_dates, CONFIG.horizon_days)
    expected = whole[whole["customer_id"].isin(set(sample.customer_ids))].reset_index(drop=True)
    pd.testing.assert_frame_equal(history.reset_index(drop=True), expected, check_exact=True)
    train, valid, _ = sampled.split()
    assert len(train) == sample.rows <= CONFIG.max_train_rows
    assert not set(train["customer_id"]) & set(valid["customer_id"])


def test_test_and_truth_on_their_samples(sampled) -> None:
    _, _, test = sampled.split()
    assert (test["as_of"] == pd.Timestamp(sampled.test_date)).all()
    assert list(test["customer_id"]) == list(sampled.samples["test"].customer_ids)
    assert len(test) == CAPS["test_max_customers"]
    assert set(sampled.truth.index) == set(sampled.samples["truth"].customer_ids)
    assert set(sampled.truth.index) < set(test["customer_id"])
    assert sampled.split() is sampled.split()  # split once, reused by every kind


def test_small_bases_are_not_sampled(base_path, synthetic) -> None:
    config = TrainConfig(train_snapshots=6)
    data = prepare_training_data(base_path, config)
    assert data.samples == {}
    assert set(data.sampling().values()) == {
        "every customer (not sampled)", "every customer known at the test as-of (not sampled)",
        "every test customer (not sampled)"}
    whole = build_training_frame(synthetic.to_base(), [*data.train_dates, data.test_date], config.horizon_days)
    pd.testing.assert_frame_equal(data.frame, whole, check_exact=True)
    _, _, test = data.split()
    assert set(data.truth.index) == set(test["customer_id"])


def test_the_run_logs_its_samples_and_is_measured_on_the_logged_test(base_path, sampled, mlflow_home) -> None:
    import mlflow

    from crmscore.training import tracking

    [model] = train_job(base_path, [ModelKind.CHURN], CONFIG, home=mlflow_home, register=False, **CAPS).models
    run = mlflow.get_run(model.run.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["train_customers"] == str(len(sampled.samples["train"]))
    assert params["test_customers"] == str(CAPS["test_max_customers"])
    assert params["truth_customers"] == str(CAPS["truth_max_customers"])
    assert (params["train_sampled"], params["test_sampled"], params["sample_seed"]) == ("True", "True", "0")
    assert tags["crmscore.data.sample.test"] == sampled.samples["test"].describe()
    assert tags["crmscore.data.sample.train"] == sampled.samples["train"].describe()
    assert sampled.samples["train"].describe().startswith(f"{len(sampled.samples['train']):,} of ")
    logged = tracking.download_test_frame(model.run.run_id)
    assert list(logged["customer_id"].astype(str)) == list(sampled.samples["test"].customer_ids)
    again = evaluate_bundle(model.bundle, logged, with_plots=False).metrics
    assert np.isclose(again["auc"], run.data.metrics["auc"])
