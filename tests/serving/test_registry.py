"""The serving bundle: loading, parity of the precomputed rows with batch scoring, the batch
file's cut-offs and reasons, inline feature checks, failed loads, and the holder's swap."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crmscore.bundle import ModelKind
from crmscore.features.io import write_snapshot
from crmscore.serving.policy import load_policy
from crmscore.serving.portfolio import assign_portfolio
from crmscore.serving.registry import (
    BundleHolder,
    LoadError,
    ReloadInProgress,
    ServingBundle,
    load_serving_bundle,
)
from crmscore.serving.scoring import score_matrix
from crmscore.serving.settings import ServingSettings

AS_OF = "2025-01-01"


@dataclass(frozen=True)
class Files:
    folder: Path
    snapshot_path: Path
    scores_path: Path
    snapshot: pd.DataFrame


@pytest.fixture(scope="module")
def files(trained_models, tmp_path_factory: pytest.TempPathFactory) -> Files:
    """The fixture's snapshot with its as-of date in the metadata, and a real batch scoring of it."""
    from crmscore.serving.batch.job import score_base

    folder = tmp_path_factory.mktemp("registry")
    snapshot = pq.read_table(trained_models.snapshot_path).to_pandas()
    snapshot_path = folder / "snapshot.parquet"
    write_snapshot(snapshot, AS_OF, snapshot_path)
    first = load_serving_bundle(ServingSettings(home=trained_models.home, snapshot_path=snapshot_path))
    scores_path = folder / "scores.parquet"
    score_base(snapshot_path, scores_path, models=first.models, reasons="none")
    return Files(folder, snapshot_path, scores_path, snapshot)


@pytest.fixture(scope="module")
def bundle(trained_models, files: Files) -> ServingBundle:
    return load_serving_bundle(ServingSettings(home=trained_models.home, snapshot_path=files.snapshot_path,
                                               scores_path=files.scores_path))


def settings_for(trained_models, **kwargs) -> ServingSettings:
    return ServingSettings(home=trained_models.home, **kwargs)


def test_bundle_holds_models_snapshot_and_batch_file(bundle: ServingBundle, files: Files) -> None:
    assert set(bundle.versions) == {k.value for k in ModelKind} and all(bundle.versions.values())
    assert bundle.n_customers == len(files.snapshot)
    assert str(bundle.snapshot_as_of) == AS_OF
    assert bundle.X.shape == (len(files.snapshot), len(bundle.models.feature_names)) and bundle.X.dtype == np.float64
    assert bundle.cutoffs_source == "scores_file" and bundle.scores_file.cutoffs_used
    assert bundle.scores_file.status == "loaded" and bundle.scores_file.model_versions == bundle.versions
    assert bundle.summary is not None and bundle.summary["n_customers"] == len(files.snapshot)
    assert bundle.reasons == {}  # the batch ran with reasons="none"
    assert bundle.cached_reasons(0) == ({}, list(bundle.models.bundles))


def test_precomputed_rows_equal_the_batch_path(bundle: ServingBundle, files: Files) -> None:
    """Scores and placement of every customer = score_matrix + assign_portfolio on the snapshot,
    and = the rows written by batch scoring."""
    X = bundle.models.encode(files.snapshot)
    scores = score_matrix(bundle.models, X)
    frame = pd.DataFrame({"customer_id": files.snapshot["customer_id"].astype(str), **scores})
    placed = assign_portfolio(frame, load_policy(), bundle.cutoffs)
    batch = pq.read_table(files.scores_path).to_pandas().set_index("customer_id")
    for i in np.linspace(0, len(placed) - 1, 40).astype(int):
        record = bundle.scored.record(int(i))
        expected = placed.iloc[i]
        written = batch.loc[expected["customer_id"]]
        for column in ("churn_prob", "propensity_books", "default_prob", "credit_points", "expected_margin",
                       "clv", "current_value", "future_potential", "expected_credit_loss"):
            for reference in (expected[column], written[column]):
                if pd.isna(reference):
                    assert record[column] is None, column
                else:
                    assert record[column] == pytest.approx(float(reference), rel=1e-9, abs=1e-12), column
        assert record["quadrant"] == expected["quadrant"] == written["quadrant"]
        assert record["actions"] == expected["actions"] == written["actions"]
        assert record["missing_components"] == expected["missing_components"]


def test_snapshot_without_as_of_and_no_batch_file(trained_models, files: Files) -> None:
    from crmscore.features.io import write_parquet_atomic

    path = files.folder / "no_as_of.parquet"
    write_parquet_atomic(files.snapshot, path)  # no crmscore.as_of metadata
    loaded = load_serving_bundle(settings_for(trained_models, snapshot_path=path))
    assert loaded.snapshot_as_of is None
    assert loaded.cutoffs_source == "snapshot" and loaded.scores_file.status == "not_configured"
    assert loaded.summary is None


def test_batch_file_of_another_day_is_not_trusted(trained_models, files: Files) -> None:
    table = pq.read_table(files.scores_path)
    index = table.column_names.index("as_of")
    other = table.set_column(index, "as_of", pa.array([pd.Timestamp("2024-10-01")] * table.num_rows,
                                                       pa.timestamp("ns")))
    meta = dict(table.schema.metadata)
    cutoffs = json.loads(meta[b"crmscore.cutoffs"])
    cutoffs["as_of"], cutoffs["future_potential"] = "2024-10-01", 123456.0
    meta[b"crmscore.cutoffs"] = json.dumps(cutoffs).encode()
    path = files.folder / "old_scores.parquet"
    pq.write_table(other.replace_schema_metadata(meta), path)
    loaded = load_serving_bundle(settings_for(trained_models, snapshot_path=files.snapshot_path, scores_path=path))
    assert loaded.cutoffs_source == "snapshot" and loaded.cutoffs.future_potential != 123456.0
    assert any("2024-10-01" in note for note in loaded.scores_file.notes)
    assert loaded.summary is not None  # still the portfolio view of that batch


def test_missing_batch_file_is_not_fatal(trained_models, files: Files) -> None:
    loaded = load_serving_bundle(settings_for(trained_models, snapshot_path=files.snapshot_path,
                                              scores_path=files.folder / "not_yet.parquet"))
    assert loaded.scores_file.status == "missing" and loaded.summary is None


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing_snapshot", "feature snapshot not found"),
        ("truncated_snapshot", "the feature snapshot cannot be read"),
        ("snapshot_lacks_feature", "the feature snapshot does not fit the models"),
        ("duplicate_ids", "the feature snapshot has duplicate customer ids"),
        ("corrupt_scores", "the batch scoring file cannot be read"),
        ("unknown_alias", "registered model crm-churn has no version with alias 'nosuchalias'"),
        ("bad_policy", "the portfolio policy cannot be read"),
    ],
)
def test_failed_loads_say_why(trained_models, files: Files, case: str, reason: str) -> None:
    folder = files.folder / case
    folder.mkdir()
    kwargs: dict = {"snapshot_path": files.snapshot_path}
    if case == "missing_snapshot":
        kwargs["snapshot_path"] = folder / "nope.parquet"
    elif case == "truncated_snapshot":
        data = files.snapshot_path.read_bytes()
        (folder / "s.parquet").write_bytes(data[: len(data) // 2])
        kwargs["snapshot_path"] = folder / "s.parquet"
    elif case == "snapshot_lacks_feature":
        write_snapshot(files.snapshot.drop(columns=["tenure_days"]), AS_OF, folder / "s.parquet")
        kwargs["snapshot_path"] = folder / "s.parquet"
    elif case == "duplicate_ids":
        write_snapshot(pd.concat([files.snapshot, files.snapshot.head(3)]), AS_OF, folder / "s.parquet")
        kwargs["snapshot_path"] = folder / "s.parquet"
    elif case == "corrupt_scores":
        (folder / "scores.parquet").write_bytes(b"PAR1 not really")
        kwargs["scores_path"] = folder / "scores.parquet"
    elif case == "unknown_alias":
        kwargs["model_alias"] = "nosuchalias"
    elif case == "bad_policy":
        (folder / "policy.yaml").write_text("name: p\nversion: 1\nloss_given_default: 7\n")
        kwargs["policy_path"] = folder / "policy.yaml"
    with pytest.raises(LoadError) as err:
        load_serving_bundle(settings_for(trained_models, **kwargs))
    assert err.value.reason == reason
    assert str(folder) not in err.value.reason  # the short reason (shown by /health/ready) names no file


# --- inline features ------------------------------------------------------------------------------


def test_encode_features_rules(bundle: ServingBundle) -> None:
    base = bundle.X[5]
    j = bundle.feature_position
    x, attrs, problems, warnings = bundle.encode_features(
        {"tenure_days": 400, "segment": "B2B", "region": "atlantis", "revenue_30d": None}, base, None)
    assert x[j["tenure_days"]] == 400.0
    assert x[j["segment"]] == bundle.models.categorical_levels["segment"].index("B2B")
    assert np.isnan(x[j["region"]]) and np.isnan(x[j["revenue_30d"]])
    untouched = [k for n, k in j.items() if n not in ("tenure_days", "segment", "region", "revenue_30d")]
    np.testing.assert_array_equal(x[untouched], base[untouched])
    assert problems == [] and warnings == ["region: unknown category level, treated as missing"]
    assert attrs == {c: False for c in bundle.flag_columns}
    np.testing.assert_array_equal(bundle.X[5], base)  # the snapshot row is not modified

    _, _, problems, _ = bundle.encode_features(
        {"tenure_days": float("nan"), "margin_30d": float("inf"), "revenue_90d": 10**400, "order_count_30d": True,
         "margin_90d": "12", "segment": 1, "revenue_365d": 2e15, "no_such_feature": 1}, None, None)
    got = {p.feature: p.type for p in problems}
    assert got == {"tenure_days": "finite_number", "margin_30d": "finite_number", "revenue_90d": "finite_number",
                   "order_count_30d": "float_type", "margin_90d": "float_type", "segment": "string_type",
                   "revenue_365d": "less_than_equal", "no_such_feature": "extra_forbidden"}
    assert all("12" not in p.message and "2e+15" not in p.message for p in problems)  # values never echoed


def test_inline_scoring_equals_precomputed_rows(bundle: ServingBundle) -> None:
    rows = [0, 7, 42]
    ids = [str(bundle.customer_ids[i]) for i in rows]
    attrs = {c: [bundle.attributes[c][i] for i in rows] for c in bundle.flag_columns}
    scored = bundle.score_rows(ids, bundle.X[rows], attrs)
    for k, i in enumerate(rows):
        got, expected = scored.record(k), bundle.scored.record(i)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-9), key
            else:
                assert got[key] == value, key


# --- the holder ---------------------------------------------------------------------------------


def test_holder_swaps_and_keeps_the_old_bundle_on_failure(trained_models, bundle: ServingBundle) -> None:
    second = dataclasses.replace(bundle, bundle_id="second")
    outcomes: list = [bundle, LoadError("feature snapshot not found", "/x"), second]

    def loader(settings: ServingSettings) -> ServingBundle:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    holder = BundleHolder(settings_for(trained_models), loader)
    assert not holder.ready and holder.not_ready_reason() == "no bundle loaded yet"

    async def scenario() -> None:
        assert await holder.reload() is bundle
        with pytest.raises(LoadError):
            await holder.reload()
        assert holder.current is bundle and holder.last_attempt is not None and not holder.last_attempt.ok
        assert holder.last_attempt.reason == "feature snapshot not found"
        assert await holder.reload() is second and holder.current is second and holder.generation == 2

    asyncio.run(scenario())


def test_holder_runs_one_load_at_a_time(trained_models, bundle: ServingBundle) -> None:
    import threading

    release = threading.Event()

    def slow(settings: ServingSettings) -> ServingBundle:
        release.wait(5)
        return bundle

    holder = BundleHolder(settings_for(trained_models), slow)

    async def scenario() -> None:
        first = asyncio.create_task(holder.reload())
        await asyncio.sleep(0.05)
        assert holder.not_ready_reason().startswith("loading the first bundle")
        with pytest.raises(ReloadInProgress, match="a reload is already running"):
            await holder.reload()
        release.set()
        assert await first is bundle

    asyncio.run(scenario())


def test_the_replaced_bundle_is_freed_and_the_heap_trimmed(trained_models, bundle: ServingBundle,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """After a swap nothing of the holder's keeps the old bundle (the cached self-check used
    to), and once it is gone the C heap is trimmed (issue 8: RSS over reloads)."""
    import gc
    import weakref

    from crmscore.serving import loader_process, registry

    trims: list[bool] = []
    monkeypatch.setattr(registry, "malloc_trim", lambda: trims.append(loader_process.malloc_trim()) or True)
    monkeypatch.setattr(registry, "TRIM_WAIT_STEP_SECONDS", 0.01)
    made = iter(range(3))
    holder = BundleHolder(settings_for(trained_models),
                          lambda settings: dataclasses.replace(bundle, bundle_id=f"copy-{next(made)}"))

    async def scenario() -> None:
        first = weakref.ref(await holder.reload())
        assert holder.self_check(holder.current) is None  # caches (bundle, when, reason)
        await holder.reload()
        gc.collect()
        assert first() is None, gc.get_referrers(first())
        for _ in range(200):
            if trims:
                break
            await asyncio.sleep(0.01)
        assert trims == [True]  # glibc: malloc_trim was called, once the old bundle was gone

    asyncio.run(scenario())


def test_unexpected_loader_errors_become_load_errors(trained_models) -> None:
    def broken(settings: ServingSettings) -> ServingBundle:
        raise ZeroDivisionError("boom")

    holder = BundleHolder(settings_for(trained_models), broken)
    with pytest.raises(LoadError, match="unexpected error while loading: ZeroDivisionError: boom"):
        asyncio.run(holder.reload())
    assert holder.not_ready_reason().endswith("unexpected error while loading")


def test_the_loader_process_builds_at_its_niceness(trained_models, files: Files, bundle: ServingBundle) -> None:
    """``load_niceness`` applies to the loader process only: the server keeps its own priority."""
    import os

    from crmscore.serving.loader_process import LoaderProcess, from_pieces

    server_niceness = os.getpriority(os.PRIO_PROCESS, 0)
    wanted = min(19, server_niceness + 7)  # lowering priority needs no privilege
    settings = settings_for(trained_models, snapshot_path=files.snapshot_path, load_niceness=wanted)
    loader = LoaderProcess()
    try:
        pieces, _ = loader.load(settings)
        assert loader.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, loader.pid) == wanted
        assert os.getpriority(os.PRIO_PROCESS, 0) == server_niceness
        built = from_pieces(ServingBundle, pieces)
        assert built.versions == bundle.versions and built.n_customers == bundle.n_customers
    finally:
        loader.close()
    assert loader.pid is None


def _mlflow_tables(path: Path) -> set[str]:
    """The tables of a SQLite registry file (none while it is absent or locked)."""
    import contextlib
    import sqlite3

    if not path.exists():
        return set()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return set()


def test_the_loader_process_sets_up_as_it_starts(trained_models, tmp_path: Path) -> None:
    """The loader process does its one-time set-up when it starts, before any load is asked of
    it: LightGBM loaded, MLflow's tracking store built (here it creates the registry's tables),
    so the server's first reload does not pay for them (issue 8: 21-23 s at niceness 10); a
    load sent meanwhile is answered after it, in order."""
    import time

    from crmscore.serving.loader_process import LoaderProcess

    registry_path = tmp_path / "mlflow.db"  # a registry no process has opened yet
    settings = settings_for(trained_models, tracking_uri=f"sqlite:///{registry_path}",
                            snapshot_path=trained_models.snapshot_path)
    loader = LoaderProcess()
    try:
        loader.start(settings)
        deadline = time.monotonic() + 120
        while "experiments" not in _mlflow_tables(registry_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "experiments" in _mlflow_tables(registry_path), "no MLflow set-up before the first load"
        assert "lib_lightgbm" in Path(f"/proc/{loader.pid}/maps").read_text()  # imported before MLflow's set-up
        with pytest.raises(LoadError, match="has no version with alias 'champion'"):
            loader.load(settings)  # the empty registry: a clean failed load, from the same child
    finally:
        loader.close()


def test_the_first_load_starts_the_loader_process_with_the_settings(trained_models, bundle: ServingBundle) -> None:
    """The server's first load starts the loader process with the server's settings, so the
    child sets up MLflow for them while the server is still starting, not in the first reload."""
    settings = settings_for(trained_models)
    holder = BundleHolder(settings)  # the default loader: reloads go to the loader process
    started: list[ServingSettings | None] = []

    class LoaderProcessSpy:
        pid = None

        def start(self, settings: ServingSettings | None = None) -> None:
            started.append(settings)

        def close(self) -> None:
            pass

    holder.loader_process = LoaderProcessSpy()  # type: ignore[assignment]
    holder.loader = lambda _: bundle
    asyncio.run(holder.reload())
    assert holder.current is bundle
    assert started == [settings]
