"""Batch scoring on the local engine: streamed in chunks, resumable, written atomically.

Work happens in a hidden folder beside the output, ``.<out>.work/``:

* ``manifest.json`` says what is being computed (snapshot identity, chunk size, model
  versions, policy, reasons mode); a different job there is discarded, not mixed in;
* ``scores-NNNNN.arrow`` (pass 1), each written to a temporary name and renamed when
  complete, so a killed run leaves only whole parts. Parts are Arrow IPC files (LZ4), read
  back once by the job itself: written and mapped in ~0.07 CPU-s a chunk of 100k, where zstd
  Parquet cost ~0.3;
* ``cutoffs.json``, resolved once on all scores.

A rerun skips finished parts. Pass 2 places the scored chunks in order straight into a
temporary file beside the output, renamed into place only when every chunk is in, with the
cut-offs in its Parquet metadata; then the work folder is removed.

Both passes run ``workers`` chunks at a time (one per core by default), each chunk's
``Booster.predict`` on ``num_threads / workers`` threads:

* pass 1 in threads: LightGBM's predict and Arrow's Parquet I/O release the GIL, so while one
  chunk predicts another is encoded or written. Each thread scores with its own copy of the
  models, since LightGBM's predictor set-up writes to the booster (LightGBM issue #6142);
* pass 2 in worker processes: placement builds every customer's reasons and actions as
  Python strings, which hold the GIL, so threads placed one chunk at a time whatever the
  cores (the batch benchmark measured the job at 1.67 cores of 2). The processes come from a
  ``forkserver`` (one fresh interpreter that imports crmscore once, then forks a worker per
  core): forking the job's own process would copy LightGBM's OpenMP state, which GNU OpenMP
  does not survive. They read the scores parts and hand each placed chunk back as an Arrow IPC
  file in the work folder, which the job maps; the job process alone writes the output. One
  worker places in the job's own process.

Memory is bounded by ``2 x workers`` chunks in flight.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crmscore.features.io import ARROW_STRINGS, AS_OF_KEY, write_atomic
from crmscore.serving.batch.chunks import (
    ReasonsMode,
    carried_columns,
    dictionary_columns,
    place_chunk,
    score_chunk,
    to_arrow,
    with_metadata,
)
from crmscore.serving.policy import Cutoffs, Policy
from crmscore.serving.portfolio import resolve_cutoffs
from crmscore.serving.scoring import ModelSet

logger = logging.getLogger(__name__)

#: columns pass 2 needs to resolve the portfolio cut-offs
CUTOFF_COLUMNS = ("customer_id", "clv", "current_value", "margin_365d", "cost_to_serve_365d",
                  "default_prob", "outstanding_balance", "churn_prob", "as_of")

#: how pass 1's parts are stored (in the manifest: a work folder of another format is discarded)
PARTS_FORMAT = "arrow-ipc-lz4"

Progress = Callable[[str, int, int], None]  # (phase, done, total)
T = TypeVar("T")


class BatchError(RuntimeError):
    """Batch scoring could not finish; the message says what failed. No partial output exists."""


def snapshot_identity(path: Path) -> dict:
    meta = pq.ParquetFile(path).metadata
    stat = Path(path).stat()
    digest = hashlib.sha256(str(meta.schema).encode() + str(meta.num_rows).encode()).hexdigest()[:16]
    return {"path": str(Path(path).resolve()), "rows": meta.num_rows, "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "schema": digest}


def iter_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The snapshot in chunks of ``chunk_rows`` rows (the last one shorter), as frames."""
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        yield pa.Table.from_batches([batch]).to_pandas()


def resolve_workers(workers: int, n_chunks: int) -> int:
    """0 = auto: one per core, never more than there are chunks."""
    if workers < 0:
        raise ValueError(f"workers must be 0 (one per core) or a positive number of threads; got {workers}")
    wanted = workers or (os.cpu_count() or 1)
    return max(1, min(wanted, n_chunks))


def _part_path(work: Path, i: int) -> Path:
    return work / f"scores-{i:05d}.arrow"


def _write_ipc(table: pa.Table, path: Path | str, compression: str | None = None) -> None:
    """``table`` as an Arrow IPC file (pass 1's parts with LZ4; placed chunks uncompressed, so
    the job maps them without a copy)."""
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as ipc:
        ipc.write_table(table)


def _write_part(table: pa.Table, path: Path) -> None:
    write_atomic(path, lambda tmp: _write_ipc(table, tmp, compression="lz4"))


def _read_part(path: Path, columns: Iterable[str] | None = None) -> pa.Table:
    """An Arrow IPC file, memory-mapped; with ``columns``, only those of them it has (the
    others are neither read nor decompressed)."""
    with pa.memory_map(str(path)) as source:
        if columns is None:
            return pa.ipc.open_file(source).read_all()
        names = pa.ipc.open_file(source).schema.names
        wanted = [names.index(c) for c in columns if c in names]
        return pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=wanted)).read_all()


class _WorkerModels:
    """Each worker thread's own copy of the models (the calling thread uses the original)."""

    def __init__(self, models: ModelSet) -> None:
        self._models = models
        self._owner = threading.get_ident()
        self._local = threading.local()

    def get(self) -> ModelSet:
        if threading.get_ident() == self._owner:
            return self._models
        models = getattr(self._local, "models", None)
        if models is None:
            models = self._local.models = pickle.loads(pickle.dumps(self._models))
        return models


def _run_in_order(
    tasks: Iterable[Callable[[], T]],
    consume: Callable[[T], None],
    total: int,
    workers: int,
    phase: str,
    progress: Progress | None,
    pool: Callable[[], Executor] | None = None,
) -> None:
    """Run the chunk tasks, ``workers`` at a time (inline for one), and hand each result to
    ``consume`` in the order of the tasks, reporting progress.

    ``pool`` makes the executor (default: ``workers`` threads); a process pool needs tasks
    that pickle. At most ``2 x workers`` tasks are in flight (each holds a chunk), so memory
    stays bounded; the first error cancels what has not started and is raised once the
    running tasks end.
    """
    done = 0

    def take(result: T) -> None:
        nonlocal done
        consume(result)
        done += 1
        if progress:
            progress(phase, done, total)

    if workers == 1:
        for task in tasks:
            take(task())
        return
    make_pool = pool or functools.partial(ThreadPoolExecutor, workers, thread_name_prefix=f"crmscore-{phase}")
    with make_pool() as executor:
        pending: deque[Future[T]] = deque()
        try:
            for task in tasks:
                if len(pending) >= 2 * workers:
                    take(pending.popleft().result())
                pending.append(executor.submit(task))
            while pending:
                take(pending.popleft().result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


@dataclass(frozen=True)
class _Placement:
    """Pass 2 on chunk ``i``: everything it needs, picklable for the worker processes."""

    work: Path
    policy: Policy
    cutoffs: Cutoffs
    reasons: ReasonsMode
    threads: int
    models: ModelSet | None  # only reasons="actions" needs them (TreeSHAP)

    def __call__(self, i: int, features: pd.DataFrame | None) -> pa.Table:
        # text as Arrow-backed strings, the dtype normalise writes: not converted again
        scores = _read_part(_part_path(self.work, i)).to_pandas(types_mapper=ARROW_STRINGS.get)
        placed = place_chunk(self.models, scores, self.policy, self.cutoffs, self.reasons, features,
                             num_threads=self.threads)
        return to_arrow(placed)


_placement: _Placement | None = None  # a worker process's, set once by its initializer


def _start_placer(placement: bytes) -> None:
    global _placement
    _placement = pickle.loads(placement)


def _place_in_worker(i: int, features: pd.DataFrame | None) -> Path:
    """Place chunk ``i`` and hand it over as an Arrow IPC file in the work folder: the job
    process maps it without a copy, where a pickled table through a pipe cost it ~0.3 CPU-s
    a chunk of 100k (three copies of ~100 MB), a third of what placing the chunk costs."""
    assert _placement is not None, "a placement worker runs only after _start_placer"
    path = _placement.work / f"placed-{i:05d}.arrow"
    _write_ipc(_placement(i, features), path)
    return path


def _read_placed(path: Path) -> pa.Table:
    """A worker's placed chunk, mapped, not read; the file is removed (the mapping keeps it)."""
    table = _read_part(path)
    path.unlink()
    return table


def _forkserver() -> multiprocessing.context.BaseContext:
    """The forkserver context, its server started now: it imports crmscore (seconds) while
    pass 1 runs, instead of between the passes. One server per job process, reused. Where
    there is no forkserver (Windows), fresh interpreters (``spawn``)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # imported once, in the server, not per worker
    multiprocessing.forkserver.ensure_running()
    return context


def _placement_pool(placement: _Placement, workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=_forkserver(), initializer=_start_placer,
                               initargs=(pickle.dumps(placement),))


def _nothing() -> None:
    """The task of a part a previous run finished."""


def _ignore(_: object) -> None:
    """Pass 1's tasks write their part themselves: nothing to consume."""


class _OrderedWriter:
    """The output file, written chunk by chunk: the first chunk's schema (with the cut-offs and
    policy in its metadata) for all; a chunk whose types differ is cast to it."""

    def __init__(self, path: Path, cutoffs: Cutoffs, policy: Policy) -> None:
        self.path, self.cutoffs, self.policy = path, cutoffs, policy
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, placed: pa.Table | Path) -> None:
        """Append a placed chunk: a table, or a worker's IPC file (removed once read)."""
        table = placed if isinstance(placed, pa.Table) else _read_placed(placed)
        if self._writer is None:
            self._schema = with_metadata(table.schema.empty_table(), self.cutoffs, self.policy).schema
            self._writer = pq.ParquetWriter(self.path, self._schema, compression="zstd",
                                            use_dictionary=dictionary_columns(self._schema))
        assert self._schema is not None
        if not table.schema.equals(self._schema, check_metadata=False):
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def __enter__(self) -> _OrderedWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if exc_type is not None:  # a failed pass leaves no half-written file behind
                self.path.unlink(missing_ok=True)


def write_error(exc: OSError, out_path: Path, hidden: Iterable[Path]) -> BatchError:
    """The error for a failed write of a job writing ``out_path`` (both engines).

    A failure in one of the job's ``hidden`` paths beside the output (its work folder or
    temporary output) names the folder the user chose and can act on, and keeps the
    underlying error (which file, and why) after it.
    """
    failed = Path(exc.filename) if isinstance(exc.filename, str | os.PathLike) else None
    if failed is not None and any(failed == h or h in failed.parents for h in hidden):
        return BatchError(f"batch scoring could not write in the output folder {out_path.parent}: {exc}; "
                          f"nothing was written to {out_path}")
    where = exc.filename or out_path
    return BatchError(f"batch scoring could not write {where}: {exc.strerror or exc}; nothing was written to {out_path}")


def _prepare_workdir(work: Path, manifest: dict) -> None:
    path = work / "manifest.json"
    if work.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous == manifest:
            done = len(list(work.glob("scores-*.arrow")))
            logger.info("resuming: %d finished chunk(s) in %s", done, work)
            return
        logger.warning("discarding unfinished work of another job in %s", work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tmp = work / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)


def run_local(
    snapshot_path: Path,
    out_path: Path,
    models: ModelSet,
    policy: Policy,
    *,
    reasons: ReasonsMode = ReasonsMode.ACTIONS,
    chunk_rows: int = 100_000,
    num_threads: int = 0,
    workers: int = 0,
    progress: Progress | None = None,
) -> Cutoffs:
    """Score every customer of the snapshot into ``out_path`` (one Parquet file).

    Parameters
    ----------
    chunk_rows : int
        Customers per chunk (and per part file): bounds memory.
    num_threads : int
        Threads for LightGBM in all (0 = one per core), shared by the workers.
    workers : int
        Chunks processed at a time (0 = one per core, at most the number of chunks). The
        output does not depend on it (a test holds that).

    Returns the resolved cut-offs. Raises :class:`BatchError` on a disk or permission error,
    leaving no file at ``out_path``.
    """
    snapshot_path, out_path = Path(snapshot_path), Path(out_path)
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be a positive number of rows; got {chunk_rows}")
    total_rows = pq.ParquetFile(snapshot_path).metadata.num_rows
    n_chunks = max(1, -(-total_rows // chunk_rows))
    workers = resolve_workers(workers, n_chunks)
    threads = max(1, (num_threads or os.cpu_count() or 1) // workers)
    own = _WorkerModels(models)
    work = out_path.parent / f".{out_path.name}.work"
    tmp_out = out_path.parent / f".{out_path.name}.tmp"  # the output until every chunk is in
    manifest = {
        "snapshot": snapshot_identity(snapshot_path),
        "chunk_rows": chunk_rows,
        "versions": {k.value: v for k, v in models.versions.items()},
        "policy": policy.label,
        "reasons": reasons.value,
        "parts": PARTS_FORMAT,
    }
    snapshot_schema = pq.read_schema(snapshot_path)
    carry = carried_columns(policy, snapshot_schema.names)
    for column in carry[1]:
        logger.warning("policy flag column %r is not in the snapshot: that flag is False for every customer", column)
    as_of = (snapshot_schema.metadata or {}).get(AS_OF_KEY)
    if workers > 1:
        _forkserver()  # pass 2's worker processes: warm up in the background
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _prepare_workdir(work, manifest)
        # Pass 1: scores.
        def score_part(chunk: pd.DataFrame, part: Path) -> None:
            if as_of is not None and "as_of" not in chunk.columns:
                chunk.insert(1, "as_of", pd.Timestamp(as_of.decode()))
            scored = score_chunk(own.get(), chunk, reasons, carry=carry, num_threads=threads)
            _write_part(to_arrow(scored), part)

        def score_tasks() -> Iterator[Callable[[], None]]:
            for i, chunk in enumerate(iter_chunks(snapshot_path, chunk_rows)):
                part = _part_path(work, i)
                yield _nothing if part.exists() else functools.partial(score_part, chunk, part)

        _run_in_order(score_tasks(), _ignore, n_chunks, workers, "score", progress)
        # Cut-offs, once, on the whole portfolio.
        cutoffs_file = work / "cutoffs.json"
        if cutoffs_file.exists():
            cutoffs = Cutoffs.model_validate_json(cutoffs_file.read_text())
        else:
            portfolio = pd.concat([_read_part(_part_path(work, i), CUTOFF_COLUMNS).to_pandas() for i in range(n_chunks)],
                                  ignore_index=True)
            cutoffs = resolve_cutoffs(policy, portfolio)
            tmp = work / "cutoffs.json.tmp"
            tmp.write_text(cutoffs.model_dump_json())
            os.replace(tmp, cutoffs_file)
        # Pass 2: portfolio placement (and reasons for triggered actions), streamed in chunk
        # order into the output's temporary file: placed chunks are not kept as parts, so a
        # run killed in this pass places again from the scores (seconds, against the minutes
        # of pass 1), and the output is written once instead of written, read and rewritten.
        wants_models = reasons is ReasonsMode.ACTIONS
        placement = _Placement(work, policy, cutoffs, reasons, threads, models if wants_models else None)
        place = placement if workers == 1 else _place_in_worker

        def place_tasks() -> Iterator[Callable[[], pa.Table | Path]]:
            snapshot_chunks = iter_chunks(snapshot_path, chunk_rows) if wants_models else None
            for i in range(n_chunks):
                features = next(snapshot_chunks) if snapshot_chunks is not None else None
                yield functools.partial(place, i, features)

        with _OrderedWriter(tmp_out, cutoffs, policy) as writer:
            _run_in_order(place_tasks(), writer.write, n_chunks, workers, "place", progress,
                          pool=functools.partial(_placement_pool, placement, workers))
        os.replace(tmp_out, out_path)
        shutil.rmtree(work, ignore_errors=True)
    except OSError as exc:
        try:
            tmp_out.unlink(missing_ok=True)
        except OSError:
            pass
        raise write_error(exc, out_path, hidden=(work, tmp_out)) from exc
    logger.info("scored %d customers into %s", total_rows, out_path)
    return cutoffs
