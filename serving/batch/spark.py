"""Batch scoring on Apache Spark: the local engine's chunk functions via ``mapInPandas``.

* The four bundles travel to the executors once, as a broadcast of their text payloads, and
  are rebuilt once per Python worker (cached by the payload's hash), not per batch.
* ``spark.sql.execution.arrow.maxRecordsPerBatch`` is the chunk size each pandas call sees.
* Pass 1 scores and carries the features along (for reason codes in pass 2); the portfolio
  cut-offs are resolved on the driver from the score columns; pass 2 places every customer.
* The output is a folder of Parquet files written to a temporary name and renamed into
  place when Spark has finished; ``_crmscore.json`` in it holds the cut-offs and policy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crmscore.bundle import ModelBundle, ModelKind
from crmscore.features.io import AS_OF_KEY
from crmscore.serving.batch.chunks import (
    SIDECAR,
    ReasonsMode,
    carried_columns,
    normalise,
    place_chunk,
    score_chunk,
    to_arrow,
)
from crmscore.serving.batch.local import CUTOFF_COLUMNS, BatchError, write_error
from crmscore.serving.policy import Cutoffs, Policy
from crmscore.serving.portfolio import resolve_cutoffs
from crmscore.serving.scoring import ModelSet

logger = logging.getLogger(__name__)

FEATURE_PREFIX = "__f__"
_MODELS: dict[str, ModelSet] = {}  # per Python worker: payload hash -> rebuilt models


def models_payload(models: ModelSet) -> dict:
    bundles = {k.value: b.to_payload() for k, b in models.bundles.items()}
    versions = {k.value: v for k, v in models.versions.items()}
    text = json.dumps([bundles, versions], sort_keys=True)
    return {"hash": hashlib.sha256(text.encode()).hexdigest(), "bundles": bundles, "versions": versions}


def models_from_payload(payload: dict) -> ModelSet:
    cached = _MODELS.get(payload["hash"])
    if cached is None:
        bundles = {ModelKind(k): ModelBundle.from_payload(v) for k, v in payload["bundles"].items()}
        versions = {ModelKind(k): v for k, v in payload["versions"].items()}
        cached = _MODELS[payload["hash"]] = ModelSet.from_bundles(bundles, versions)
    return cached


def _spark_schema(table: pa.Table):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(table.schema)


def run_spark(
    snapshot_path: Path,
    out_path: Path,
    models: ModelSet,
    policy: Policy,
    *,
    reasons: ReasonsMode = ReasonsMode.ACTIONS,
    master: str | None = None,
    chunk_rows: int = 10_000,
) -> Cutoffs:
    """Score a snapshot on Spark into the folder ``out_path``; return the cut-offs."""
    from crmscore.features.engines.spark import spark_session

    snapshot_path, out_path = Path(snapshot_path), Path(out_path)
    tmp = out_path.parent / f".{out_path.name}.spark-tmp"
    try:  # can the output be written? Asked before any Spark work, not after all of it
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tmp.rmdir()  # Spark makes it again, and refuses to write into an existing folder
    except OSError as exc:
        raise write_error(exc, out_path, hidden=(tmp,)) from exc
    spark = spark_session(master)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(max(1, min(chunk_rows, 50_000))))
    schema = pq.read_schema(snapshot_path)
    as_of = (schema.metadata or {}).get(AS_OF_KEY)
    carry = carried_columns(policy, schema.names)
    for column in carry[1]:
        logger.warning("policy flag column %r is not in the snapshot: that flag is False for every customer", column)
    broadcast = spark.sparkContext.broadcast(models_payload(models))
    keep_features = reasons is ReasonsMode.ACTIONS

    # Output schemas, from the same functions run here on the first rows.
    sample = next(pq.ParquetFile(snapshot_path).iter_batches(batch_size=8)).to_pandas()
    if as_of is not None and "as_of" not in sample.columns:
        sample.insert(1, "as_of", pd.Timestamp(as_of.decode()))
    sample_scores = score_chunk(models, sample, reasons, carry=carry)
    pass1_table = to_arrow(_with_features(sample_scores, sample) if keep_features else sample_scores)
    provisional = resolve_cutoffs(policy, sample_scores)
    final_table = to_arrow(place_chunk(models, sample_scores, policy, provisional, reasons, sample if keep_features else None))
    pass1_schema, final_schema = _spark_schema(pass1_table), _spark_schema(final_table)
    pass1_arrow, final_arrow = pass1_table.schema, final_table.schema
    as_of_text = None if as_of is None else as_of.decode()

    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ms = models_from_payload(broadcast.value)
        for snapshot in batches:
            if as_of_text is not None and "as_of" not in snapshot.columns:
                snapshot.insert(1, "as_of", pd.Timestamp(as_of_text))
            scores = score_chunk(ms, snapshot, reasons, carry=carry)
            out = _with_features(scores, snapshot) if keep_features else scores
            yield to_arrow(out, pass1_arrow).to_pandas()

    snapshot_df = spark.read.parquet(str(snapshot_path))
    pass1 = snapshot_df.mapInPandas(score_batches, schema=pass1_schema).persist()
    try:
        columns = [c for c in CUTOFF_COLUMNS if c in pass1.columns]
        cutoffs = resolve_cutoffs(policy, pass1.select(*columns).toPandas())
        score_names = list(sample_scores.columns)

        def place_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            ms = models_from_payload(broadcast.value)
            for frame in batches:
                scores = frame[score_names]
                features = None
                if keep_features:
                    features = frame[[c for c in frame.columns if c.startswith(FEATURE_PREFIX)]]
                    features = features.rename(columns=lambda c: c[len(FEATURE_PREFIX):])
                placed = place_chunk(ms, scores, policy, cutoffs, reasons, features)
                yield to_arrow(placed, final_arrow).to_pandas()

        final = pass1.mapInPandas(place_batches, schema=final_schema)
        try:
            final.write.mode("overwrite").parquet(str(tmp))
            (tmp / SIDECAR).write_text(json.dumps({"cutoffs": json.loads(cutoffs.model_dump_json()), "policy": policy.label}))
            if out_path.is_dir():
                shutil.rmtree(out_path)
            elif out_path.exists():
                out_path.unlink()
            os.replace(tmp, out_path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_error(exc, out_path, hidden=(tmp,)) from exc
        except Exception as exc:  # Spark's own write, in the JVM: a disk that fills, a folder locked
            shutil.rmtree(tmp, ignore_errors=True)
            failure = java_io_failure(exc)
            if failure is None:  # not the file system's doing: a bug, with its traceback
                raise
            raise BatchError(f"batch scoring could not write {out_path} on Spark: {failure}; "
                             f"nothing was written to {out_path}") from exc
    finally:
        pass1.unpersist()
    logger.info("spark engine scored the snapshot into %s", out_path)
    return cutoffs


def java_io_failure(exc: BaseException) -> str | None:
    """The innermost ``java.io.IOException`` behind a failed Spark action, as Java words it
    (``java.io.IOException: No space left on device``); None when no I/O failure is behind it."""
    from py4j.java_gateway import is_instance_of
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    throwable = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)  # Py4J's, pyspark's
    found = None
    for _ in range(32):  # a cause chain is short; never follow a cycle
        if gateway is None or throwable is None:
            break
        if is_instance_of(gateway, throwable, "java.io.IOException"):
            found = throwable
        throwable = throwable.getCause()
    return None if found is None else str(found.toString())


def _with_features(scores: pd.DataFrame, snapshot: pd.DataFrame) -> pd.DataFrame:
    features = normalise(snapshot.reset_index(drop=True)).add_prefix(FEATURE_PREFIX)
    return pd.concat([scores.reset_index(drop=True), features], axis=1)
