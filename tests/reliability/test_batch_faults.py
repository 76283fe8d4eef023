"""Issue 8, property 3 (faults) for the nightly batch job, through the real `crmscore score` process:

* SIGKILL at seeded random moments, several times in a row on the same output, then a run to
  the end: the output is identical to an uninterrupted run, nobody lost or doubled;
* a full disk (the process's file-size limit, ``RLIMIT_FSIZE``, makes every write past it fail
  with ``EFBIG``, as a full disk fails with ``ENOSPC``): a clear error naming the file, a
  non-zero exit and no partial output;
* an output folder the job may not write (mode 0555; as root, the child runs without the
  capabilities that let root ignore file modes): the same, naming that folder (not the hidden
  work folder inside it) and the underlying error; on Spark too, both when the engine's
  check up front finds it and when the folder turns read-only during Spark's own write (in the
  JVM, as a disk filling there would fail): Java's words for it, no Python traceback;
* a snapshot the champions cannot read (another base's columns): an error naming the missing
  features, exit code 1 (input that fails its contract) and no output.
"""

from __future__ import annotations

import ctypes
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

KILL_TRIALS = 3
CHUNK_ROWS = 250


def _command(trained_models: Any, out: Path) -> list[str]:
    return [sys.executable, "-m", "crmscore.cli", "score", "--features", str(trained_models.snapshot_path),
            "--out", str(out), "--chunk-rows", str(CHUNK_ROWS), "--reasons", "none"]


def _env(trained_models: Any) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{trained_models.home / 'mlflow.db'}",
            "COLUMNS": "200"}


def _read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas().sort_values("customer_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted(trained_models: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, float, int]:
    """The reference: one run to the end; its output, its wall time and its file size."""
    out = tmp_path_factory.mktemp("uninterrupted") / "scores.parquet"
    begin = time.monotonic()
    done = subprocess.run(_command(trained_models, out), env=_env(trained_models), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return _read(out), time.monotonic() - begin, out.stat().st_size


def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_output(
        trained_models: Any, uninterrupted: tuple[pd.DataFrame, float, int], tmp_path: Path) -> None:
    reference, wall_s, _ = uninterrupted
    out = tmp_path / "scores.parquet"
    work = tmp_path / ".scores.parquet.work"
    rng = random.Random(8)
    killed_with_parts = []
    for _ in range(KILL_TRIALS):
        # anywhere from start-up to the end of a whole run: before any part, between parts,
        # inside a write, during placement or the final assembly
        delay = rng.uniform(0.2, wall_s)
        proc = subprocess.Popen(_command(trained_models, out), env=_env(trained_models),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_with_parts.append(len(list(work.glob("scores-*.arrow"))))
            if out.exists():  # killed after the atomic rename, while tidying up: complete, never partial
                pd.testing.assert_frame_equal(_read(out), reference)
        else:
            assert proc.returncode == 0  # it finished before its kill: the next trials resume nothing
            out.unlink()
    assert killed_with_parts, "no trial was killed part-way"
    finished = subprocess.run(_command(trained_models, out), env=_env(trained_models), capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert not work.exists()
    result = _read(out)
    assert result["customer_id"].is_unique
    pd.testing.assert_frame_equal(result, reference)


def _limit_file_size(limit_bytes: int) -> Any:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def test_a_full_disk_is_a_clear_error_with_no_partial_output(
        trained_models: Any, uninterrupted: tuple[pd.DataFrame, float, int], tmp_path: Path) -> None:
    _, _, output_bytes = uninterrupted
    out = tmp_path / "scores.parquet"
    # room for the small parts, not for the assembled output
    done = subprocess.run(_command(trained_models, out), env=_env(trained_models), capture_output=True,
                          text=True, timeout=300, preexec_fn=_limit_file_size(output_bytes // 2))
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    message = " ".join(done.stderr.split())
    assert "batch scoring could not write" in message and "File too large" in message, message[-1000:]
    assert f"nothing was written to {out}".replace(" ", "") in message.replace(" ", ""), message[-1000:]
    assert "Traceback" not in done.stderr
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name != ".scores.parquet.work"]
    assert leftovers == [], leftovers  # finished parts may stay in the work folder, for a resume


#: Linux capabilities that let root ignore file modes (linux/capability.h), and prctl's
#: PR_CAPBSET_DROP: dropped from the bounding set, they are gone from root's next exec
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


def _held_to_file_modes() -> None:
    """preexec_fn: as root, drop the capabilities to override file modes (the suite runs as
    root, which ignores them). Still uid 0, so the session's registry and snapshot, in the
    test's own 0700 folders, stay readable; a folder of mode 0555 is not writable."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


@pytest.mark.parametrize("where", ["the folder", "inside the folder"])
def test_a_read_only_output_folder_is_a_clear_error_with_no_partial_output(
        trained_models: Any, tmp_path: Path, where: str) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    out = folder / "scores.parquet" if where == "the folder" else folder / "nightly" / "scores.parquet"
    folder.chmod(0o555)
    preexec = _held_to_file_modes if os.geteuid() == 0 else None
    try:
        # the premise: this child may not write there (else the test would prove nothing)
        probe = subprocess.run([sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"],
                               preexec_fn=preexec, capture_output=True, text=True, timeout=60)
        assert probe.returncode == 1 and "PermissionError" in probe.stderr, probe.stderr[-500:]
        done = subprocess.run(_command(trained_models, out), env=_env(trained_models), capture_output=True,
                              text=True, timeout=300, preexec_fn=preexec)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    message = " ".join(done.stderr.split())
    # the message names what the user asked for and can act on: the output's folder, not the
    # hidden work folder the job failed to create there, which only the underlying error names
    # (after it); or, when the output's folder is itself to be made, that folder
    if where == "the folder":
        named = f"batch scoring could not write in the output folder {folder}: [Errno 13] Permission denied: "
    else:
        named = f"batch scoring could not write {out.parent}: Permission denied;"
    assert named.replace(" ", "") in message.replace(" ", ""), message[-1000:]
    assert f"nothing was written to {out}".replace(" ", "") in message.replace(" ", ""), message[-1000:]
    assert list(folder.iterdir()) == []  # no output, no part, no work folder


@pytest.mark.spark
def test_a_read_only_output_folder_is_a_clear_error_on_spark_too(trained_models: Any, tmp_path: Path) -> None:
    """The Spark engine asks whether it can write beside the output before any Spark work:
    the local engine's message, no Python traceback, nothing left (it used to fail at the
    end, after all the scoring, with Spark's Java stack as a Python traceback)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    out = folder / "scores.parquet"
    folder.chmod(0o555)
    preexec = _held_to_file_modes if os.geteuid() == 0 else None
    try:
        done = subprocess.run([*_command(trained_models, out), "--engine", "spark"], env=_env(trained_models),
                              capture_output=True, text=True, timeout=300, preexec_fn=preexec)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    message = " ".join(done.stderr.split())
    named = f"batch scoring could not write in the output folder {folder}: [Errno 13] Permission denied: "
    assert named.replace(" ", "") in message.replace(" ", ""), message[-1000:]
    assert f"nothing was written to {out}".replace(" ", "") in message.replace(" ", ""), message[-1000:]
    assert list(folder.iterdir()) == []


#: runs `crmscore score` with one change of the world, not of the job: the output folder turns
#: read-only the moment pass 1 has scored everyone, so the folder passes the engine's check up
#: front and it is Spark's own write (in the JVM) that fails, as on a disk that fills mid-write
_LOCKED_AFTER_PASS_1 = """
import sys
from pathlib import Path

import crmscore.serving.batch.spark as engine

folder, resolve_cutoffs = Path(sys.argv[1]), engine.resolve_cutoffs


def resolve_then_lock(*args, **kwargs):
    cutoffs = resolve_cutoffs(*args, **kwargs)
    folder.chmod(0o555)
    return cutoffs


engine.resolve_cutoffs = resolve_then_lock
from crmscore.cli import app

sys.argv = ["crmscore", *sys.argv[2:]]
app()
"""


@pytest.mark.spark
def test_a_failure_in_sparks_own_write_is_a_clear_error_with_no_partial_output(trained_models: Any, tmp_path: Path) -> None:
    folder = tmp_path / "locked-mid-job"
    folder.mkdir()
    out = folder / "scores.parquet"
    preexec = _held_to_file_modes if os.geteuid() == 0 else None
    command = [sys.executable, "-c", _LOCKED_AFTER_PASS_1, str(folder), *_command(trained_models, out)[3:], "--engine", "spark"]
    try:
        done = subprocess.run(command, env=_env(trained_models), capture_output=True, text=True, timeout=300,
                              preexec_fn=preexec)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr and "Py4J" not in done.stderr, done.stderr[-3000:]
    message = " ".join(done.stderr.split()).replace(" ", "")
    # Spark's own words for the failure (Hadoop's local file system), after ours
    named = f"batch scoring could not write {out} on Spark: java.io.IOException: Mkdirs failed to create"
    assert named.replace(" ", "") in message, done.stderr[-3000:]
    assert f"nothing was written to {out}".replace(" ", "") in message, done.stderr[-3000:]
    assert list(folder.iterdir()) == []  # Spark's temporary output is gone too


def test_a_snapshot_the_champions_cannot_read_is_a_clear_error(trained_models: Any, tmp_path: Path) -> None:
    """A snapshot of another base (other product categories, no interactions) lacks features the
    champions read: the error names them, without the quotes of a KeyError's repr, and nothing
    is written."""
    import pyarrow as pa

    table = pq.read_table(trained_models.snapshot_path)
    dropped = [c for c in table.column_names if c.startswith("line_count_365d_")][:1] + ["complaint_count_90d"]
    snapshot = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pandas(table.to_pandas().drop(columns=dropped), preserve_index=False)
                   .replace_schema_metadata(table.schema.metadata), snapshot)
    out = tmp_path / "scores.parquet"
    command = _command(trained_models, out)
    command[command.index("--features") + 1] = str(snapshot)
    done = subprocess.run(command, env=_env(trained_models), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    message = " ".join(done.stderr.split())
    assert f"error: snapshot lacks features the models read: {', '.join(dropped)}" in message, message[-1000:]
    assert not out.exists()


def test_a_registry_without_champions_is_a_clear_error(trained_models: Any, tmp_path: Path) -> None:
    """Scoring before anything was promoted: the error names the model and the alias (the same
    loader as the server's), with no traceback, and nothing is written."""
    out = tmp_path / "scores.parquet"
    empty = f"sqlite:///{tmp_path / 'empty.db'}"  # set_registry_uri exports the session's registry too
    env = {**_env(trained_models), "MLFLOW_TRACKING_URI": empty, "MLFLOW_REGISTRY_URI": empty}
    done = subprocess.run(_command(trained_models, out), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])  # nothing to run with, as a missing file
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    message = " ".join(done.stderr.split())
    assert "error: registered model crm-churn has no version with alias 'champion'" in message, message[-1000:]
    assert message.count("has no version") == 1, message[-1000:]
    assert not out.exists()
