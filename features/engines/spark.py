"""The Spark engine: the same pure feature function, per bucket of customers, on any cluster.

The four tables are packed into one long Spark frame: every row carries ``customer_id``,
its bucket (``pmod(xxhash64(customer_id), n_buckets)``: a *bucket of customers*, never a
single customer, because one pandas call per customer runs at ~100 customers/s), a table tag
and its row number, plus the columns of every table under a ``<table>__`` prefix (the other
tables' columns hold a neutral constant). ``groupBy(bucket).applyInPandas`` hands each bucket
to :class:`BucketFunction`, which unpacks the tables, restores their types, puts the rows
back in their original order (so floating-point sums add up in the same order as on the
local engine, bit for bit) and calls :meth:`SnapshotPlan.compute`.

Times travel as int64 nanoseconds (``NaT`` as its int64 value), so no session time zone can
shift them. ``applyInPandas`` loads a whole group into memory: ``chunk_customers`` sizes the
buckets. pyspark is imported inside the functions only: it is an optional extra.

Executors need ``crmscore`` importable (installed in their Python environment); on a local
master the workers run this interpreter.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crmscore.features.io import Base
from crmscore.features.transforms import SnapshotPlan, to_ns

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

BUCKET = "_bucket"
TABLE = "_table"
ROW = "_row"
SEP = "__"


def _import_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the spark engine needs pyspark, which is not installed: pip install 'crmscore[spark]'"
        ) from exc


def spark_session(master: str | None = None) -> SparkSession:
    """The running SparkSession, or a new one on ``master`` (default ``local[*]``).

    A new session gets Arrow transfers on; on a local master its Python workers run this
    interpreter (``PYSPARK_PYTHON``, unless already set), so they import the same ``crmscore``.
    """
    _import_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    url = master or "local[*]"
    builder = (
        SparkSession.builder.appName("crmscore-features")
        .master(url)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if url.startswith("local"):
        # PySpark reads the workers' interpreter from this variable when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.getOrCreate()


@dataclass(frozen=True)
class Column:
    """One packed column: its table, its name there and how it travels."""

    table: str
    name: str
    kind: str  # "string", "double", "long" (integers) or "time" (datetime as int64 ns)

    @property
    def packed(self) -> str:
        return f"{self.table}{SEP}{self.name}"


def _kind(values: pd.Series) -> str:
    dtype = values.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "time"
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        return "double"
    if pd.api.types.is_integer_dtype(dtype):
        # Nullable integers travel as doubles (the pure function reads numbers as float64).
        return "double" if isinstance(dtype, pd.api.extensions.ExtensionDtype) else "long"
    return "string"


def _prefilter(base: Base, plan: SnapshotPlan) -> dict[str, pd.DataFrame]:
    """The rows the snapshot can read, as on the local engine."""
    t, end = plan.as_of_ns, plan.end_ns
    customers = base.customers
    out = {"customers": customers[to_ns(customers["signup_date"]) < t]}
    limits = {"transactions": ("ts", end), "invoices": ("issue_date", end), "interactions": ("ts", t)}
    for name, frame in base.tables().items():
        if name in limits:
            column, limit = limits[name]
            out[name] = frame[to_ns(frame[column]) < limit]
    return out


def _to_packed(values: pd.Series, kind: str) -> Any:
    if kind == "time":
        return values.to_numpy(dtype="datetime64[ns]").view(np.int64)
    if kind == "double":
        return values.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    if kind == "long":
        return values.to_numpy(dtype=np.int64)
    return values.astype(object).where(values.notna(), None).to_numpy()


def _from_packed(values: pd.Series, kind: str) -> Any:
    if kind == "time":
        return values.to_numpy(dtype=np.int64).view("datetime64[ns]")
    if kind == "double":
        return values.to_numpy(dtype=np.float64)
    if kind == "long":
        return values.to_numpy(dtype=np.int64)
    return values.to_numpy(dtype=object)


def _spark_type(kind: str) -> Any:
    from pyspark.sql import types as T

    return {"string": T.StringType(), "double": T.DoubleType(), "long": T.LongType(),
            "time": T.LongType()}[kind]


def output_schema(plan: SnapshotPlan) -> Any:
    """The Spark schema of the snapshot columns (categoricals as strings)."""
    from pyspark.sql import types as T

    fields = [T.StructField("customer_id", T.StringType(), False)]
    for spec in plan.columns():
        kind = {"int64": "long", "float64": "double", "category": "string"}[spec.dtype]
        fields.append(T.StructField(spec.name, _spark_type(kind), True))
    return T.StructType(fields)


@dataclass(frozen=True)
class BucketFunction:
    """What ``applyInPandas`` runs per bucket: unpack, compute, convert for Spark.

    Attributes
    ----------
    plan : SnapshotPlan
    columns : tuple of Column
        The packed layout.
    tables : tuple of str
        Table names, in the order of their ``_table`` tag.
    """

    plan: SnapshotPlan
    columns: tuple[Column, ...]
    tables: tuple[str, ...]

    def unpack(self, packed: pd.DataFrame) -> dict[str, pd.DataFrame]:
        tag = packed[TABLE].to_numpy()
        out: dict[str, pd.DataFrame] = {}
        for code, name in enumerate(self.tables):
            rows = packed.iloc[np.flatnonzero(tag == code)]
            rows = rows.iloc[np.argsort(rows[ROW].to_numpy(), kind="stable")]
            data: dict[str, Any] = {
                "customer_id": pd.array(rows["customer_id"].to_numpy(dtype=object), dtype="string[pyarrow]")
            }
            for col in self.columns:
                if col.table == name:
                    values = _from_packed(rows[col.packed], col.kind)
                    data[col.name] = (pd.array(values, dtype="string[pyarrow]")
                                      if col.kind == "string" else values)
            out[name] = pd.DataFrame(data)
        return out

    def __call__(self, packed: pd.DataFrame) -> pd.DataFrame:
        frame = self.plan.compute(self.unpack(packed))
        data: dict[str, Any] = {"customer_id": frame["customer_id"].to_numpy(dtype=object)}
        for spec in self.plan.columns():
            values = frame[spec.name]
            if spec.dtype == "category":
                data[spec.name] = values.astype(object).where(values.notna(), None).to_numpy()
            else:
                data[spec.name] = values.to_numpy()
        return pd.DataFrame(data, copy=False)


def pack_base(
    spark: SparkSession, tables: dict[str, pd.DataFrame], n_buckets: int
) -> tuple[SparkDataFrame, tuple[Column, ...], tuple[str, ...]]:
    """One long Spark frame of every table, keyed by customer bucket.

    Returns
    -------
    packed : pyspark DataFrame
        Columns ``customer_id``, ``_bucket``, ``_table``, ``_row`` and every table's
        columns as ``<table>__<column>``.
    columns : tuple of Column
        The layout, for :class:`BucketFunction`.
    names : tuple of str
        Table names in the order of their ``_table`` tag.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    names = tuple(tables)
    layout = tuple(
        Column(name, col, _kind(frame[col]))
        for name, frame in tables.items()
        for col in frame.columns
        if col != "customer_id"
    )
    parts = []
    for code, name in enumerate(names):
        frame = tables[name]
        own = [c for c in layout if c.table == name]
        pdf = pd.DataFrame(
            {"customer_id": _to_packed(frame["customer_id"], "string"),
             ROW: np.arange(len(frame), dtype=np.int64)}
            | {c.packed: _to_packed(frame[c.name], c.kind) for c in own}
        )
        schema = T.StructType(
            [T.StructField("customer_id", T.StringType(), True), T.StructField(ROW, T.LongType(), False)]
            + [T.StructField(c.packed, _spark_type(c.kind), True) for c in own]
        )
        sdf = spark.createDataFrame(pdf, schema=schema)
        neutral = {"string": F.lit(None).cast("string"), "double": F.lit(0.0).cast("double"),
                   "long": F.lit(0).cast("long"), "time": F.lit(0).cast("long")}
        sdf = sdf.select(
            "customer_id",
            F.pmod(F.xxhash64("customer_id"), F.lit(n_buckets)).alias(BUCKET),
            F.lit(code).cast("int").alias(TABLE),
            ROW,
            *[F.col(c.packed) if c.table == name else neutral[c.kind].alias(c.packed) for c in layout],
        )
        parts.append(sdf)
    packed = parts[0]
    for part in parts[1:]:
        packed = packed.unionByName(part)
    return packed, layout, names


def run_spark(base: Base, plan: SnapshotPlan, *, master: str | None, chunk_customers: int) -> pd.DataFrame:
    """The snapshot of ``plan`` computed on Spark, collected to pandas (unsorted)."""
    spark = spark_session(master)
    tables = _prefilter(base, plan)
    n_known = len(tables["customers"])
    parallelism = spark.sparkContext.defaultParallelism
    n_buckets = max(1, min(n_known, max(math.ceil(n_known / chunk_customers), parallelism)))
    packed, layout, names = pack_base(spark, tables, n_buckets)
    logger.info("spark engine: %d customers in %d buckets", n_known, n_buckets)
    function = BucketFunction(plan=plan, columns=layout, tables=names)

    def compute_bucket(pdf: pd.DataFrame) -> pd.DataFrame:
        # A plain one-argument function: Spark counts a callable object's ``self`` as the
        # grouping-key argument.
        return function(pdf)

    result = packed.groupBy(BUCKET).applyInPandas(compute_bucket, schema=output_schema(plan))
    frame = result.toPandas()
    if frame.empty:  # no known customers: keep the columns
        frame = pd.DataFrame({f.name: pd.Series(dtype=object) for f in output_schema(plan).fields})
    return frame
