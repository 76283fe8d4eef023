"""Batch scoring: chunking, reasons modes, Spark parity, kill-and-resume, failed writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from crmscore.bundle import setup_tracking
from crmscore.serving.batch.chunks import TRIGGERED_ACTIONS, read_cutoffs
from crmscore.serving.batch.job import load_champions, score_base
from crmscore.serving.batch.local import BatchError


@pytest.fixture(scope="module")
def models(trained_models):
    setup_tracking(trained_models.home)
    return load_champions()


def read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas().sort_values("customer_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(trained_models, models, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("batch") / "scores.parquet"
    score_base(trained_models.snapshot_path, out, models=models, chunk_rows=100_000)
    return read(out)


def test_every_customer_scored_once_with_versions_and_policy(trained_models, reference) -> None:
    snapshot = pq.read_table(trained_models.snapshot_path, columns=["customer_id"]).to_pandas()
    assert sorted(reference["customer_id"]) == sorted(snapshot["customer_id"].astype(str))
    assert reference["customer_id"].is_unique
    assert set(reference["quadrant"]) <= {"invest", "nurture", "re-engineer", "sack"}
    assert (reference["model_version_churn"] != "").all() and (reference["policy_version"] == "default@1").all()
    assert reference["churn_prob"].between(0, 1).all()
    assert (reference["as_of"] == pd.Timestamp(trained_models.as_of)).all()
    has_credit = reference["default_prob"].notna()
    assert reference.loc[has_credit, "credit_grade"].notna().all()


def test_chunk_size_does_not_change_results(trained_models, models, reference, tmp_path) -> None:
    out = tmp_path / "chunked.parquet"
    score_base(trained_models.snapshot_path, out, models=models, chunk_rows=700)
    pd.testing.assert_frame_equal(read(out), reference)
    assert read_cutoffs(out) == read_cutoffs(out)  # stored in the file's metadata
    assert read_cutoffs(out).n_customers == len(reference)


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_do_not_change_results(trained_models, models, reference, tmp_path, workers) -> None:
    """Chunks scored one at a time or three at a time (threads): the same output, row for row."""
    out = tmp_path / "scores.parquet"
    score_base(trained_models.snapshot_path, out, models=models, chunk_rows=400, workers=workers)
    pd.testing.assert_frame_equal(read(out), reference)


def test_workers_must_be_a_count() -> None:
    from crmscore.serving.batch.local import resolve_workers

    assert resolve_workers(0, 1) == 1 and resolve_workers(5, 3) == 3
    with pytest.raises(ValueError, match=r"^workers must be 0 \(one per core\) or a positive number of threads; got -1$"):
        resolve_workers(-1, 4)


def test_reasons_only_for_triggered_actions_by_default(reference) -> None:
    triggered = reference["action_codes"].apply(lambda c: any(a in c for a in TRIGGERED_ACTIONS))
    assert triggered.any() and (~triggered).any()
    assert reference.loc[triggered, "reasons_churn"].notna().all()
    assert reference.loc[~triggered, "reasons_churn"].isna().all()
    reasons = json.loads(reference.loc[triggered, "reasons_churn"].iloc[0])
    assert 1 <= len(reasons) <= 3 and {"code", "feature", "direction", "text"} <= set(reasons[0])


def test_reasons_none_and_all(trained_models, models, reference, tmp_path) -> None:
    score_base(trained_models.snapshot_path, tmp_path / "none.parquet", models=models, reasons="none")
    none = read(tmp_path / "none.parquet")
    assert none["reasons_churn"].isna().all()
    pd.testing.assert_series_equal(none["churn_prob"], reference["churn_prob"])
    head = pq.read_table(trained_models.snapshot_path).slice(0, 300)
    pq.write_table(head, tmp_path / "head.parquet")
    score_base(tmp_path / "head.parquet", tmp_path / "all.parquet", models=models, reasons="all")
    assert read(tmp_path / "all.parquet")["reasons_churn"].notna().all()
    with pytest.raises(ValueError, match=r"^reasons must be one of all, actions, none; got 'some'$"):
        score_base(tmp_path / "head.parquet", tmp_path / "x.parquet", models=models, reasons="some")


def test_credit_is_scored_and_explained_exactly_for_customers_with_an_invoice(trained_models, models) -> None:
    """The credit model predicts and explains only the rows with an invoice history (the
    others get no credit score): their scores equal the booster's on all rows at once."""
    from crmscore.bundle import ModelKind
    from crmscore.serving.scoring import CREDIT_HISTORY, compute_reasons, score_matrix

    snapshot = pq.read_table(trained_models.snapshot_path).slice(0, 400).to_pandas()
    has_history = snapshot[CREDIT_HISTORY].to_numpy() > 0
    assert 0 < has_history.sum() < len(snapshot), "the test needs customers with and without invoices"
    X = models.encode(snapshot)
    scores = score_matrix(models, X, num_threads=1)
    credit = models.bundles[ModelKind.CREDIT_RISK]
    every_row = credit.predict(models.matrix(X, ModelKind.CREDIT_RISK), num_threads=1)
    np.testing.assert_array_equal(scores["default_prob"][has_history], every_row[has_history])
    assert np.isnan(scores["default_prob"][~has_history]).all()
    assert np.isnan(scores["credit_points"][~has_history]).all()
    reasons = compute_reasons(models, X, num_threads=1)["credit_risk"]
    assert all(r == [] for r, h in zip(reasons, has_history, strict=True) if not h)
    assert all(len(r) == 3 for r, h in zip(reasons, has_history, strict=True) if h)
    one = int(np.flatnonzero(has_history)[0])
    assert compute_reasons(models, X[one:one + 1], num_threads=1)["credit_risk"][0] == reasons[one]


@pytest.mark.spark
def test_spark_output_is_identical_to_local(trained_models, models, reference, tmp_path) -> None:
    out = tmp_path / "spark_scores"
    result = score_base(trained_models.snapshot_path, out, models=models, engine="spark", chunk_rows=1000)
    assert out.is_dir()
    pd.testing.assert_frame_equal(read(out), reference, check_dtype=False)
    assert result.cutoffs == read_cutoffs(out)


def test_a_failed_write_leaves_no_output_and_says_what_failed(trained_models, models, tmp_path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(BatchError, match=r"^batch scoring could not write .*not_a_folder"):
        score_base(trained_models.snapshot_path, blocker / "scores.parquet", models=models)
    assert blocker.read_text() == "a file where a folder should be"


def test_missing_snapshot_is_named(models, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="feature snapshot .*nowhere.parquet does not exist"):
        score_base(tmp_path / "nowhere.parquet", tmp_path / "s.parquet", models=models)


def _score_command(trained_models, out: Path, chunk_rows: int) -> list[str]:
    return [sys.executable, "-m", "crmscore.cli", "score", "--features", str(trained_models.snapshot_path),
            "--out", str(out), "--chunk-rows", str(chunk_rows)]


@pytest.mark.parametrize("kill_after_parts", [1, 4])
def test_killed_run_resumes_to_identical_output(trained_models, reference, tmp_path, kill_after_parts) -> None:
    """SIGKILL a real `crmscore score` part-way, run it again: same output, nobody lost or doubled."""
    out = tmp_path / "scores.parquet"
    work = tmp_path / ".scores.parquet.work"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{trained_models.home / 'mlflow.db'}"}
    command = _score_command(trained_models, out, chunk_rows=250)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(work.glob("scores-*.arrow"))) >= kill_after_parts:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must leave no output"
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert not work.exists()
    result = read(out)
    assert result["customer_id"].is_unique
    pd.testing.assert_frame_equal(result, reference)
    assert np.isfinite(result["churn_prob"]).all()


def reference_normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """The obvious version: every text column through object, missing -> None, then Arrow text."""
    out = frame.copy()
    for col in out.columns:
        s = out[col]
        if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object or pd.api.types.is_string_dtype(s):
            out[col] = s.astype(object).where(s.notna(), None).astype(pd.StringDtype("pyarrow"))
        elif pd.api.types.is_bool_dtype(s):
            out[col] = s.astype(bool)
        elif pd.api.types.is_integer_dtype(s):
            out[col] = s.astype(np.int64)
        elif pd.api.types.is_float_dtype(s):
            out[col] = s.astype(np.float64)
    if "as_of" in out.columns:
        out["as_of"] = pd.to_datetime(out["as_of"]).astype("datetime64[ns]")
    return out


def test_normalise_equals_the_plain_conversion_whatever_the_text_columns_hold() -> None:
    import pyarrow as pa

    from crmscore.serving.batch.chunks import normalise

    frame = pd.DataFrame({
        "customer_id": ["C1", "C2", "C3", "C4"],
        "as_of": pd.to_datetime(["2025-01-01"] * 4),
        "text": np.array(["a", None, np.nan, pd.NA], dtype=object),
        "empty": np.array([None] * 4, dtype=object),
        "mixed": np.array([1, "b", None, 2.5], dtype=object),  # not all text: pandas formats each
        "arrow": pd.array(["x", None, "y", "z"], dtype=pd.StringDtype("pyarrow")),  # as pass 2 reads it
        "python_str": pd.array(["p", None, "q", "r"], dtype="string"),
        "quadrant": pd.Categorical(["invest", None, "sack", "invest"], categories=["invest", "sack"]),
        "flag": [True, False, True, False],
        "count": np.array([1, 2, 3, 4], dtype=np.int32),
        "score": np.array([0.5, np.nan, 1.0, 2.0], dtype=np.float32),
    }, index=[10, 11, 12, 13])
    got, expected = normalise(frame), reference_normalise(frame)
    pd.testing.assert_frame_equal(got, expected)
    assert pa.Table.from_pandas(got).equals(pa.Table.from_pandas(expected))
