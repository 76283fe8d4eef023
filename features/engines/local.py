"""The local engine: customers in chunks by a stable hash of their id, on a thread pool.

The base is encoded once: every event's customer becomes an integer code, its row in the
sorted ids of the customers known at T (one hash lookup per run of equal ids, over row blocks
on ``n_jobs`` threads); product categories become a categorical; events the snapshot never
reads (after T, or after T + H with labels, or of unknown customers) are marked out.
Customers are split into ``ceil(n / chunk_customers)`` buckets by a stable hash of their id;
each bucket's rows are gathered, with the codes standing in for the ids, and handed to the
pure function Spark runs too (``SnapshotPlan.compute``). About ``2 * n_jobs`` chunks exist
at a time, so the working memory is bounded by the chunk size, not the base.

Threads, not processes: the expensive steps run in C without the GIL (Arrow kernels; numpy's
``bincount``, ``nonzero``, fancy indexing and sorts release it: numpy PRs #163, #4475, #4497),
and a process pool would pickle every chunk's frames both ways. (The speed-up of the second
thread could not be measured on the shared development machine, whose second core was busy:
a plain two-thread ``np.sort`` gained nothing there either.)
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crmscore.features.io import Base
from crmscore.features.schema import INTERACTION_KINDS
from crmscore.features.transforms import (
    EVENT_COLUMNS,
    NAT_NS,
    RUN_SHARE,
    SnapshotPlan,
    as_of_ns,
    category_codes,
    compute_core_rfm,
    customer_positions,
    run_heads,
    run_starts,
    to_ns,
)

logger = logging.getLogger(__name__)

#: up to this many buckets, a chunk finds its rows by one scan of the bucket column;
#: beyond, rows are grouped once by a sort
FEW_BUCKETS = 32
#: columns shorter than this are encoded on one thread
PARALLEL_MIN_ROWS = 1_000_000


def bucket_of(customer_ids: pd.Series, n_buckets: int) -> np.ndarray:
    """Stable bucket 0 .. n_buckets-1 of each customer id, the same in every process and run.

    pandas' ``hash_array`` is SipHash with a fixed key, so a customer lands in the same
    bucket on every machine.
    """
    if n_buckets == 1:
        return np.zeros(len(customer_ids), dtype=np.int64)
    hashed = pd.util.hash_array(customer_ids.to_numpy(dtype=object), categorize=False)
    return (hashed % np.uint64(n_buckets)).astype(np.int64)


def _arrow(values: pd.Series) -> pa.ChunkedArray:
    array = values.array
    if hasattr(array, "__arrow_array__"):
        return pa.chunked_array(array.__arrow_array__())
    return pa.chunked_array([pa.array(values.to_numpy(dtype=object), pa.string())])


def _bucket_dtype(n_buckets: int) -> type[np.integer]:
    return np.int8 if n_buckets < 127 else np.int16 if n_buckets < 2**15 - 1 else np.int64


def _block_positions(ids: pd.Series, universe: pd.Series, edges: np.ndarray,
                     pool: ThreadPoolExecutor, n_jobs: int) -> list[Callable[[], np.ndarray]]:
    """Positions of ``ids`` in ``universe``, block by block (rows ``edges[i]:edges[i+1]``).

    Runs of equal ids (a log grouped by customer) are found per block in parallel and their
    first ids looked up in one call, so the hash table of ``universe`` is built once. Returns
    one function per block that expands its positions, so a block's array is only
    materialised when the block is worked on.
    """
    n = len(ids)
    spans = list(zip(edges[:-1], edges[1:], strict=True))
    blocks = [_arrow(ids.iloc[a:b]) for a, b in spans]
    starts = list(pool.map(run_starts, blocks))
    if sum(s.size for s in starts) > RUN_SHARE * n:
        # Not grouped by customer: look every id up, in one block per thread (each lookup
        # builds the hash table of ``universe`` again, so few and large blocks).
        halves = np.linspace(0, n, n_jobs + 1).astype(int)
        codes = np.concatenate(list(pool.map(
            lambda ab: customer_positions(ids.iloc[ab[0]:ab[1]], universe),
            zip(halves[:-1], halves[1:], strict=True))))
        return [lambda a=a, b=b: codes[a:b] for a, b in spans]
    heads = list(pool.map(run_heads, blocks, starts))
    head_pos = customer_positions(pd.Series(pd.array(pa.chunked_array(heads), dtype=ids.dtype)), universe)
    offsets = np.cumsum([0] + [s.size for s in starts])

    def expand(i: int) -> Callable[[], np.ndarray]:
        lengths = np.diff(np.append(starts[i], len(blocks[i])))
        return lambda: np.repeat(head_pos[offsets[i]:offsets[i + 1]], lengths)

    return [expand(i) for i in range(len(blocks))]


def _positions(ids: pd.Series, universe: pd.Series, n_jobs: int) -> np.ndarray:
    """:func:`customer_positions` of a long column, on ``n_jobs`` threads."""
    n = len(ids)
    if n_jobs == 1 or n < PARALLEL_MIN_ROWS or pd.api.types.is_integer_dtype(ids.dtype):
        return customer_positions(ids, universe)
    edges = np.linspace(0, n, 2 * n_jobs + 1).astype(int)
    with ThreadPoolExecutor(n_jobs) as pool:
        parts = _block_positions(ids, universe, edges, pool, n_jobs)
        return np.concatenate(list(pool.map(lambda expand: expand(), parts)))


def group_rows(row_bucket: np.ndarray, n_buckets: int) -> list[np.ndarray]:
    """Row indices of each bucket, in row order; rows with bucket -1 are left out."""
    key = np.where(row_bucket >= 0, row_bucket, n_buckets).astype(_bucket_dtype(n_buckets + 1))
    order = np.argsort(key, kind="stable")  # a radix sort for 8- and 16-bit keys
    counts = np.bincount(key, minlength=n_buckets + 1)
    return np.split(order, np.cumsum(counts)[:-1])[:n_buckets]


@dataclass
class EncodedTable:
    """One event table, encoded for chunking.

    ``columns`` maps each column to an array (numpy or pandas extension array), the customer
    column being their integer ``codes``; ``row_bucket`` is each row's bucket, -1 for rows
    the snapshot does not read.
    """

    codes: np.ndarray
    columns: dict[str, Any]
    row_bucket: np.ndarray
    n_buckets: int
    groups: list[np.ndarray] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.n_buckets > FEW_BUCKETS:
            self.groups = group_rows(self.row_bucket, self.n_buckets)

    def rows(self, bucket: int) -> np.ndarray | None:
        """Row indices of a bucket, in row order; None for every row."""
        if self.groups is not None:
            return self.groups[bucket]
        selected = self.row_bucket == bucket
        return None if selected.all() else np.flatnonzero(selected)

    def chunk(self, bucket: int) -> pd.DataFrame:
        rows = self.rows(bucket)

        def take(values: Any) -> Any:
            if rows is None:
                return values
            return values[rows] if isinstance(values, np.ndarray) else values.take(rows)

        data = {"customer_id": take(self.codes)} | {n: take(v) for n, v in self.columns.items()}
        return pd.DataFrame(data, copy=False)


@dataclass
class EncodedBase:
    """A base prepared for chunked computation.

    Attributes
    ----------
    ids : pyarrow.Array
        The known customers' ids; a code is a position in it.
    customers : DataFrame
        The known customers in code order, ``customer_id`` holding their code.
    customer_rows : list of ndarray
        Rows of ``customers`` in each bucket.
    tables : dict of str to EncodedTable
    """

    ids: pa.Array
    customers: pd.DataFrame
    customer_rows: list[np.ndarray]
    tables: dict[str, EncodedTable]

    @property
    def n_buckets(self) -> int:
        return len(self.customer_rows)

    def chunk(self, bucket: int) -> dict[str, pd.DataFrame]:
        """The tables of one bucket's customers, as the pure function takes them."""
        rows = self.customer_rows[bucket]
        customers = self.customers if rows.size == len(self.customers) else self.customers.iloc[rows]
        return {"customers": customers} | {n: t.chunk(bucket) for n, t in self.tables.items()}

    def decode(self, codes: np.ndarray) -> pd.Series:
        """Customer ids of codes, as ``string[pyarrow]``."""
        return pd.Series(pd.array(self.ids.take(pa.array(codes)), dtype="string[pyarrow]"))


_TIME_COLUMNS = {"transactions": "ts", "invoices": "issue_date", "interactions": "ts"}


def encode_base(
    base: Base,
    as_of_ns: int,
    end_ns: int,
    *,
    chunk_customers: int,
    n_jobs: int,
    categories: tuple[str, ...] | None = None,
    tables: Mapping[str, tuple[str, ...]] | None = None,
) -> EncodedBase:
    """Encode ``base`` for chunks of at most about ``chunk_customers`` known customers.

    Parameters
    ----------
    as_of_ns : int
        T, ns: customers with ``signup_date < T`` are known; interactions (read for
        features only) are kept before T.
    end_ns : int
        Transactions and invoices issued at or after this time are left out (T + H with
        labels, else T).
    categories : tuple of str, optional
        When given, ``product_category`` becomes a categorical over them.
    tables : mapping of str to tuple of str, optional
        Which event tables and columns to keep (default: those the snapshot reads).
    """
    signup = to_ns(base.customers["signup_date"])
    known = base.customers.iloc[np.flatnonzero(signup < as_of_ns)]
    ids = _arrow(known["customer_id"])
    order = pc.sort_indices(ids).to_numpy()  # codes follow the ids' order
    known = known.iloc[order].reset_index(drop=True)
    ids = ids.take(pa.array(order)).combine_chunks()
    n_buckets = max(1, math.ceil(len(known) / chunk_customers))
    bucket = bucket_of(known["customer_id"], n_buckets)
    universe = pd.Series(pd.array(ids, dtype="string[pyarrow]"))
    customers = known.assign(customer_id=np.arange(len(known), dtype=np.int64))

    limits = {"transactions": end_ns, "invoices": end_ns, "interactions": as_of_ns}
    wanted = tables if tables is not None else EVENT_COLUMNS
    levels = {"kind": INTERACTION_KINDS} | ({"product_category": categories} if categories else {})
    encoded: dict[str, EncodedTable] = {}
    for name, frame in base.tables().items():
        if name == "customers" or name not in wanted:
            continue
        codes = _positions(frame["customer_id"], universe, n_jobs)
        keep = (codes >= 0) & (to_ns(frame[_TIME_COLUMNS[name]]) < limits[name])
        row_bucket = np.where(keep, bucket.astype(_bucket_dtype(n_buckets))[codes], -1)
        columns: dict[str, Any] = {}
        for col in wanted[name]:
            values = frame[col]
            if col == "customer_id":
                continue
            if col in levels:  # a closed vocabulary: codes, looked up once here
                columns[col] = pd.Categorical.from_codes(
                    category_codes(values, levels[col]), categories=list(levels[col])
                )
            elif isinstance(values.dtype, np.dtype):
                columns[col] = values.to_numpy()
            else:  # e.g. order ids: one Arrow chunk, as takes across many chunks are slow
                columns[col] = pd.array(_arrow(values).combine_chunks(), dtype=values.dtype)
        encoded[name] = EncodedTable(codes=codes, columns=columns, row_bucket=row_bucket,
                                     n_buckets=n_buckets)
    return EncodedBase(ids=ids, customers=customers, customer_rows=group_rows(bucket, n_buckets),
                       tables=encoded)


def map_chunks(
    encoded: EncodedBase, compute: Callable[[dict[str, pd.DataFrame]], pd.DataFrame], n_jobs: int
) -> Iterator[pd.DataFrame]:
    """``compute`` on every bucket's tables, ``n_jobs`` at a time, results in bucket order."""
    if n_jobs == 1 or encoded.n_buckets == 1:
        for b in range(encoded.n_buckets):
            yield compute(encoded.chunk(b))
        return
    with ThreadPoolExecutor(n_jobs) as pool:
        # Submit only n_jobs ahead, so at most about 2 * n_jobs chunks exist at once.
        pending: deque[Future[pd.DataFrame]] = deque()
        for b in range(encoded.n_buckets):
            pending.append(pool.submit(lambda b=b: compute(encoded.chunk(b))))
            if len(pending) >= n_jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _gather(encoded: EncodedBase, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Chunk results in code order (= customer id order), codes turned back into ids."""
    codes = np.concatenate([p["customer_id"].to_numpy(dtype=np.int64) for p in parts])
    order = np.argsort(codes, kind="stable")
    columns: dict[str, Any] = {"customer_id": encoded.decode(codes[order]).array}
    for name in parts[0].columns[1:]:
        values = parts[0][name]
        if isinstance(values.dtype, pd.CategoricalDtype):
            joined = pd.Categorical.from_codes(
                np.concatenate([p[name].cat.codes.to_numpy() for p in parts]), dtype=values.dtype)
            columns[name] = joined.take(order)
        else:
            columns[name] = np.concatenate([p[name].to_numpy() for p in parts])[order]
    return pd.DataFrame(columns, copy=False)


def run_local(base: Base, plan: SnapshotPlan, *, chunk_customers: int, n_jobs: int) -> pd.DataFrame:
    """The snapshot of ``plan`` on the local engine, sorted by ``customer_id``."""
    encoded = encode_base(base, plan.as_of_ns, plan.end_ns, chunk_customers=chunk_customers,
                          n_jobs=n_jobs, categories=plan.categories)
    logger.info("local engine: %d customers in %d chunks on %d threads",
                len(encoded.customers), encoded.n_buckets, n_jobs)
    return _gather(encoded, list(map_chunks(encoded, plan.compute, n_jobs)))


def run_core_rfm_local(
    base: Base,
    as_of: date,
    *,
    by: str = "rows",
    n_jobs: int = 2,
    block_rows: int = 1_000_000,
    chunk_customers: int = 100_000,
) -> pd.DataFrame:
    """:func:`~crmscore.features.transforms.compute_core_rfm` of the whole base, locally.

    The benchmark's "project engine" side (../shared/BENCHMARKS.md). The core aggregates
    decompose over rows, so by default (``by="rows"``) the log is cut into blocks of at most
    ``block_rows`` rows, aggregated on ``n_jobs`` threads and merged (sums add up, first
    purchases take the minimum, last ones the maximum): memory is bounded by the block,
    and blocks small enough for the allocator to reuse their buffers run much faster than
    whole-column passes (fresh pages of a large allocation cost a page fault each).
    ``by="customers"`` runs them through the snapshot's customer chunks instead.

    Returns
    -------
    DataFrame
        One row per customer known at ``as_of``, in no particular order.
    """
    if by == "customers":
        t = as_of_ns(as_of)
        encoded = encode_base(base, t, t, chunk_customers=chunk_customers, n_jobs=n_jobs,
                              tables={"transactions": ("ts", "revenue", "cost")})
        return _gather(encoded, list(map_chunks(
            encoded, lambda tables: compute_core_rfm(tables, as_of), n_jobs)))
    if by != "rows":
        raise ValueError(f"by must be 'rows' or 'customers'; got {by!r}")
    t = as_of_ns(as_of)
    # Only the two columns the aggregates read: a take of every attribute would copy them all.
    customers = base.customers[["customer_id", "signup_date"]]
    customers = customers.iloc[np.flatnonzero(to_ns(customers["signup_date"]) < t)]
    n = len(customers)
    tx = base.transactions
    coded = customers.assign(customer_id=np.arange(n, dtype=np.int64))
    edges = np.linspace(0, len(tx), max(n_jobs, math.ceil(len(tx) / block_rows)) + 1).astype(int)

    def aggregate(block: tuple[int, int, Callable[[], np.ndarray]]) -> tuple[int, pd.DataFrame] | None:
        # A block reads only the customers its codes span: few, in a log grouped by customer.
        a, b, positions = block
        block_codes = positions()
        hi = int(block_codes.max(initial=-1))
        if hi < 0:
            return None
        lo = int(block_codes.min(where=block_codes >= 0, initial=hi))
        rows = {"customer_id": block_codes} | {c: tx[c].iloc[a:b] for c in ("ts", "revenue", "cost")}
        part = compute_core_rfm(
            {"customers": coded.iloc[lo:hi + 1], "transactions": pd.DataFrame(rows, copy=False)}, as_of
        )
        return lo, part

    total = {c: np.zeros(n) for c in ("revenue", "margin", "revenue_90d")}
    count = np.zeros(n, dtype=np.int64)
    first = np.full(n, np.iinfo(np.int64).max)
    last = np.full(n, NAT_NS)
    with ThreadPoolExecutor(n_jobs) as pool:
        positions = _block_positions(tx["customer_id"], customers["customer_id"], edges, pool, n_jobs)
        blocks = list(zip(edges[:-1], edges[1:], positions, strict=True))
        for result in pool.map(aggregate, blocks):  # merged in order, as they come
            if result is None:
                continue
            lo, part = result
            span = slice(lo, lo + len(part))
            count[span] += part["line_count"].to_numpy()
            for c, values in total.items():
                values[span] += part[c].to_numpy()
            f = part["first_ts"].to_numpy().view(np.int64)
            first[span] = np.minimum(first[span], np.where(f == NAT_NS, first[span], f))
            last[span] = np.maximum(last[span], part["last_ts"].to_numpy().view(np.int64))
    first[first == np.iinfo(np.int64).max] = NAT_NS
    return pd.DataFrame({
        "customer_id": customers["customer_id"].array,
        "line_count": count,
        "revenue": total["revenue"],
        "margin": total["margin"],
        "first_ts": first.view("datetime64[ns]"),
        "last_ts": last.view("datetime64[ns]"),
        "revenue_90d": total["revenue_90d"],
    }, copy=False)
