"""Feature engine benchmark: core RFM aggregates vs DuckDB, and the full snapshot at 1M customers.

Goals (../shared/BENCHMARKS.md, issue 3), on 2 cores:

* the project's local engine computing the core aggregate set of the transaction log
  (per customer: line count, revenue, margin, first and last purchase, 90-day revenue)
  in at most 1.5 x the time DuckDB takes for the same set, measured in the same run. The
  engine's row-block path is the one held to the goal; the same set through the snapshot's
  customer chunks, and both engines on the log in time order (customer ids interleaved
  rather than grouped by customer as the generator writes them), are reported alongside;
* the full snapshot (every feature family and the labels) for 1M customers in <= 60 s,
  with its peak memory reported.

The base is the synthetic generator's (1M customers, ~20M transactions), written to Parquet
once; each measurement runs in a fresh Python that reads it (``--base DIR`` reuses a written
base). Both sides start from the same in-memory pandas frames; each is run ``--repeat`` times
and the best time counts (the machines are shared: the median is reported too).

Run: .venv/bin/python benchmarks/features.py [--customers 1000000] [--base DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, run_child, write_json  # noqa: E402

AS_OF = "2024-10-01"  # a 90-day horizon ends on the data end, 2024-12-31: labels included
HORIZON_DAYS = 90

GENERATE = """
import json, time
from crmscore.features.synthetic import generate_base, write_synthetic_base
t = time.perf_counter()
base = generate_base({n}, seed=1)
gen = time.perf_counter() - t
write_synthetic_base(base, {path!r})
print(json.dumps({{"generate_s": round(gen, 2),
    "rows": {{k: v.num_rows for k, v in base.tables.items()}}}}))
"""

LOAD = """
import json, resource, statistics, time
from datetime import date
import pandas as pd, pyarrow as pa, pyarrow.parquet as pq
from crmscore.features.io import Base
S = pd.StringDtype("pyarrow")
def load(path):
    frames = {{}}
    for name in ("customers", "transactions", "invoices", "interactions"):
        table = pq.read_table(f"{{path}}/{{name}}.parquet")
        frames[name] = table.to_pandas(types_mapper={{pa.string(): S, pa.large_string(): S}}.get)
    return Base(**frames)
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
    return out, min(times), statistics.median(times)
base = load({path!r})
as_of = date.fromisoformat({as_of!r})
"""

CORE = LOAD + '''
import duckdb
import numpy as np
from crmscore.features.engines.local import run_core_rfm_local
QUERY = """
    SELECT customer_id,
           count(*) AS line_count,
           sum(revenue) AS revenue,
           sum(revenue - cost) AS margin,
           min(ts) AS first_ts,
           max(ts) AS last_ts,
           sum(CASE WHEN ts >= TIMESTAMP '{as_of}' - INTERVAL 90 DAY THEN revenue ELSE 0 END)
               AS revenue_90d
    FROM tx WHERE ts < TIMESTAMP '{as_of}'
    GROUP BY customer_id
"""
def same(duck, ours):
    d = duck.to_pandas().set_index("customer_id").sort_index()
    o = ours[ours["line_count"] > 0].set_index("customer_id").sort_index()
    return bool(d.index.astype(str).equals(o.index.astype(str))
        and np.array_equal(d["line_count"].to_numpy(), o["line_count"].to_numpy())
        and all(np.allclose(d[c].to_numpy(), o[c].to_numpy(), rtol=1e-9)
                for c in ("revenue", "margin", "revenue_90d"))
        and (d["first_ts"].to_numpy() == o["first_ts"].to_numpy()).all()
        and (d["last_ts"].to_numpy() == o["last_ts"].to_numpy()).all())
def measure(b, modes):
    con = duckdb.connect()
    con.register("tx", b.transactions)
    duck, best, median = timed(lambda: con.sql(QUERY).to_arrow_table(), {repeat})
    out = {{"duckdb_best_s": round(best, 3), "duckdb_median_s": round(median, 3)}}
    for mode in modes:
        ours, best, median = timed(lambda: run_core_rfm_local(b, as_of, by=mode, n_jobs=2), {repeat})
        out[f"engine_{{mode}}_best_s"] = round(best, 3)
        out[f"engine_{{mode}}_median_s"] = round(median, 3)
        out[f"engine_{{mode}}_same_result"] = same(duck, ours)
    con.close()
    return out
result = {{"duckdb_version": duckdb.__version__, "transactions": len(base.transactions)}}
# The log as generated: grouped by customer, in time order within a customer.
result["grouped"] = measure(base, ("rows", "customers"))
# The same log in time order (as a point-of-sale system writes it): ids interleave.
by_time = base.transactions.sort_values("ts", kind="stable").reset_index(drop=True)
result["time_ordered"] = measure(Base(customers=base.customers, transactions=by_time), ("rows",))
print(json.dumps(result))
'''

SNAPSHOT = LOAD + """
from crmscore.features.pipeline import build_snapshot
loaded_mb = rss_mb()
snap, best, median = timed(lambda: build_snapshot(base, as_of, {horizon}, n_jobs=2), 1)
print(json.dumps({{"snapshot_s": round(best, 2), "rows": len(snap), "columns": snap.shape[1],
    "labels": int(sum(c.startswith("label_") for c in snap.columns)),
    "rss_after_load_mb": round(loaded_mb, 1), "peak_rss_self_mb": round(rss_mb(), 1),
    "snapshot_frame_mb": round(snap.memory_usage(deep=True).sum() / 2**20, 1)}}))
"""


def _secs(d: dict, key: str) -> str:
    return f"{d[key + '_best_s']:.2f} / {d[key + '_median_s']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--base", type=Path, default=None,
                        help="a base folder to reuse, or to write the generated base to")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="crmscore-bench-") as tmp:
        path = args.base or Path(tmp) / "base"
        generated = None
        if not (path / "transactions.parquet").exists():
            generated = run_child(GENERATE.format(n=args.customers, path=str(path)))
        core = run_child(CORE.format(path=str(path), as_of=AS_OF, repeat=args.repeat))
        snap = run_child(SNAPSHOT.format(path=str(path), as_of=AS_OF, horizon=HORIZON_DAYS))

    g, t = core["grouped"], core["time_ordered"]
    ratio = g["engine_rows_best_s"] / g["duckdb_best_s"]
    ratio_customers = g["engine_customers_best_s"] / g["duckdb_best_s"]
    ratio_time = t["engine_rows_best_s"] / t["duckdb_best_s"]
    all_same = all(v for d in (g, t) for k, v in d.items() if k.endswith("same_result"))
    rows = [
        ("customers", f"{args.customers:,}"),
        ("transactions", f"{core['transactions']:,}"),
        ("as-of, horizon", f"{AS_OF}, {HORIZON_DAYS} days"),
        ("core set, log grouped by customer (s, best / median)", ""),
        (f"  DuckDB {core['duckdb_version']}", _secs(g, "duckdb")),
        ("  crmscore local engine, row blocks", _secs(g, "engine_rows")),
        ("  ratio, goal <= 1.5", f"{ratio:.2f}  {'met' if ratio <= 1.5 else 'MISSED'}"),
        ("  crmscore, customer chunks (the snapshot's path)", _secs(g, "engine_customers")),
        ("  ratio", f"{ratio_customers:.2f}"),
        ("core set, log in time order (s, best / median)", ""),
        ("  DuckDB", _secs(t, "duckdb")),
        ("  crmscore local engine, row blocks", _secs(t, "engine_rows")),
        ("  ratio", f"{ratio_time:.2f}"),
        ("same numbers as DuckDB in every run", str(all_same)),
        ("full snapshot (s), goal <= 60",
         f"{snap['snapshot_s']:.1f}  {'met' if snap['snapshot_s'] <= 60 else 'MISSED'}"),
        ("snapshot rows x columns (labels)", f"{snap['rows']:,} x {snap['columns']} ({snap['labels']})"),
        ("peak RSS of the snapshot process (MB)", f"{snap['peak_rss_self_mb']:.0f}"),
        ("  of which the loaded base (MB)", f"{snap['rss_after_load_mb']:.0f}"),
        ("snapshot frame (MB)", f"{snap['snapshot_frame_mb']:.0f}"),
    ]
    if generated:
        rows.insert(2, ("generate base (s)", f"{generated['generate_s']:.1f}"))
    print_table("Features: core aggregates vs DuckDB, full snapshot", rows)
    out = write_json("features", {
        "customers": args.customers, "as_of": AS_OF, "horizon_days": HORIZON_DAYS,
        "core": core, "core_ratio": round(ratio, 3),
        "core_ratio_customer_chunks": round(ratio_customers, 3),
        "core_ratio_time_ordered": round(ratio_time, 3),
        "snapshot": snap, "generate": generated,
        "goals": {"core_ratio": 1.5, "snapshot_s": 60},
    })
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
