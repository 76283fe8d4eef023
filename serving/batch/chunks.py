"""What batch scoring does to one chunk of customers: the same functions on both engines.

Scoring the whole base takes two passes because Buttle's portfolio cut-offs are portfolio
relative (e.g. "future potential above the median"):

1. :func:`score_chunk`: features -> every model score (and, with ``reasons="all"``, reason codes);
2. the cut-offs are resolved once on all scores (:func:`crmscore.serving.portfolio.resolve_cutoffs`);
3. :func:`place_chunk`: scores -> quadrant, flags, actions; with ``reasons="actions"`` the
   reason codes of the customers who get a triggered action (the ones a front end shows).

Reason codes cost far more than scores (TreeSHAP, ../shared/BENCHMARKS.md), hence the modes.
"""

from __future__ import annotations

import json
from enum import StrEnum

import numpy as np
import pandas as pd
import pyarrow as pa

from crmscore.bundle import ModelKind
from crmscore.serving.policy import Cutoffs, Policy
from crmscore.serving.portfolio import assign_portfolio
from crmscore.serving.scoring import (
    ModelSet,
    compute_reasons,
    reasons_columns,
    score_matrix,
    scores_frame,
)

#: actions that are triggered by a score (not just the quadrant's primary action)
TRIGGERED_ACTIONS = ("retention_offer", "cross_sell", "credit_review", "require_prepayment", "review_strategic_account")
REASON_COLUMNS = [f"reasons_{k.value}" for k in ModelKind]
CUTOFFS_KEY = b"crmscore.cutoffs"
#: in a folder output (Spark), the cut-offs and policy live in this file beside the parts
SIDECAR = "_crmscore.json"
POLICY_KEY = b"crmscore.policy"


class ReasonsMode(StrEnum):
    ALL = "all"
    ACTIONS = "actions"
    NONE = "none"

    @classmethod
    def parse(cls, value: str) -> ReasonsMode:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"reasons must be one of all, actions, none; got {value!r}") from None


#: customer attributes carried from the snapshot into the scores, for reports and filters
CARRIED = ("segment", "region", "acquisition_channel")


def carried_columns(policy: Policy, snapshot_columns: list[str]) -> tuple[list[str], list[str]]:
    """(attribute columns to carry into the scores, policy flag columns the snapshot lacks)."""
    flags = [f.column for f in policy.flags]
    present = [c for c in dict.fromkeys([*CARRIED, *flags]) if c in snapshot_columns]
    return present, [c for c in flags if c not in snapshot_columns]


def score_chunk(
    models: ModelSet,
    snapshot: pd.DataFrame,
    reasons: ReasonsMode,
    *,
    carry: tuple[list[str], list[str]] = ([], []),
    num_threads: int = 0,
) -> pd.DataFrame:
    """Pass 1 on a chunk of the snapshot: model scores, plus reasons when ``reasons="all"``.

    ``carry``: attribute columns copied from the snapshot, and absent flag columns set to
    False (:func:`carried_columns`; the job warns once about those, not every chunk).
    """
    X = models.encode(snapshot)
    frame = scores_frame(models, snapshot, X, score_matrix(models, X, num_threads=num_threads))
    present, absent = carry
    for column in present:
        frame[column] = snapshot[column].to_numpy()
    for column in absent:
        frame[column] = False
    if reasons is ReasonsMode.ALL:
        for name, values in reasons_columns(compute_reasons(models, X, num_threads=num_threads)).items():
            frame[name] = values
    else:
        for name in REASON_COLUMNS:
            frame[name] = None
    return normalise(frame)


def place_chunk(
    models: ModelSet | None,
    scores: pd.DataFrame,
    policy: Policy,
    cutoffs: Cutoffs,
    reasons: ReasonsMode,
    snapshot: pd.DataFrame | None = None,
    *,
    num_threads: int = 0,
) -> pd.DataFrame:
    """Pass 2 on a chunk: portfolio placement, and reasons of triggered-action customers.

    ``models`` and ``snapshot`` (the same customers' features in the same order) are needed
    only with ``reasons="actions"``.
    """
    placed = assign_portfolio(scores.reset_index(drop=True), policy, cutoffs)
    if reasons is ReasonsMode.ACTIONS and len(placed):
        if snapshot is None or models is None:
            raise ValueError("reasons='actions' needs the models and the snapshot rows of the chunk")
        codes = placed["action_codes"].fillna("").astype(str)
        wanted = np.zeros(len(placed), dtype=bool)
        for code in TRIGGERED_ACTIONS:
            wanted |= codes.str.contains(code, regex=False).to_numpy()
        rows = np.flatnonzero(wanted)
        if rows.size:
            ids = snapshot["customer_id"].astype(str).to_numpy()
            if not np.array_equal(ids, placed["customer_id"].to_numpy()):
                raise ValueError("snapshot and scores chunks are not aligned by customer_id")
            X = models.encode(snapshot.iloc[rows])
            for name, values in reasons_columns(compute_reasons(models, X, num_threads=num_threads)).items():
                column = placed[name].astype(object).to_numpy(copy=True)
                column[rows] = values
                placed[name] = column
    # Columns the portfolio reorders: reasons last, a stable order for every engine.
    ordered = [c for c in placed.columns if c not in REASON_COLUMNS] + REASON_COLUMNS
    return normalise(placed[ordered])


ARROW_STRING = pd.StringDtype("pyarrow")


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Fixed Arrow-friendly dtypes so every chunk, and both engines, write one schema.

    Text becomes Arrow-backed strings (None for any missing value), booleans ``bool``,
    integers ``int64``, numbers ``float64``, ``as_of`` ``datetime64[ns]``. A column already
    Arrow-backed text (a part read back by pass 2) is kept as it is: converting it again
    would give the same values.
    """
    columns: dict[str, pd.Series] = {}
    for col in frame.columns:
        s = frame[col]
        if s.dtype == ARROW_STRING:
            columns[col] = s
        elif isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object or pd.api.types.is_string_dtype(s):
            columns[col] = _arrow_strings(s)
        elif pd.api.types.is_bool_dtype(s):
            columns[col] = s.astype(bool)
        elif pd.api.types.is_integer_dtype(s):
            columns[col] = s.astype(np.int64)
        elif pd.api.types.is_float_dtype(s):
            columns[col] = s.astype(np.float64)
        else:
            columns[col] = s
    # one frame built from the columns: assigning them one by one into a copy re-copies blocks
    out = pd.DataFrame(columns, index=frame.index, copy=False)
    if "as_of" in out.columns and out["as_of"].dtype != "datetime64[ns]":
        out["as_of"] = pd.to_datetime(out["as_of"]).astype("datetime64[ns]")
    return out


def _arrow_strings(s: pd.Series) -> pd.Series:
    """Text column -> Arrow-backed strings, missing values (None, NaN, NA) as nulls.

    Strings (and missing values) go to Arrow in one call; a column holding anything else
    (numbers, timestamps) takes the slower pandas conversion, which formats each value.
    """
    values = s.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        try:
            array = pa.array(values, type=pa.large_string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        else:
            return pd.Series(pd.arrays.ArrowStringArray(array), index=s.index, name=s.name)
    return s.astype(object).where(s.notna(), None).astype(ARROW_STRING)


def to_arrow(frame: pd.DataFrame, schema: pa.Schema | None = None) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    return table.replace_schema_metadata(None)


#: text columns with a value of its own per customer
PER_CUSTOMER_TEXT = frozenset(["customer_id", "actions", *REASON_COLUMNS])


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth a Parquet dictionary: text that repeats from customer to customer
    (quadrant, segment, action codes, model versions). Not numbers: a chunk's 100k distinct
    scores fit in one dictionary page, so Parquet would store a dictionary as large as the
    column and index it too (writing the output 40% slower, and larger)."""
    return [f.name for f in schema
            if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and f.name not in PER_CUSTOMER_TEXT]


def with_metadata(table: pa.Table, cutoffs: Cutoffs, policy: Policy) -> pa.Table:
    return table.replace_schema_metadata({
        CUTOFFS_KEY: cutoffs.model_dump_json().encode(),
        POLICY_KEY: policy.label.encode(),
    })


def read_cutoffs(path) -> Cutoffs | None:
    """The cut-offs a batch output was placed with: file metadata, or a folder's sidecar."""
    from pathlib import Path

    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        sidecar = path / SIDECAR
        if not sidecar.is_file():
            return None
        return Cutoffs.model_validate_json(json.dumps(json.loads(sidecar.read_text())["cutoffs"]))
    meta = pq.read_schema(path).metadata or {}
    if CUTOFFS_KEY not in meta:
        return None
    return Cutoffs.model_validate_json(meta[CUTOFFS_KEY])


def reasons_of(row_value: str | None) -> list[dict]:
    return [] if row_value is None else json.loads(row_value)
