"""Synthetic base generation at scale: time and peak memory for N customers (default 1M).

Goal (issue 2): 1M customers (~20M transactions) in <= 60 s and <= 6 GB peak on 2 cores.
Run: .venv/bin/python benchmarks/generate.py [--customers 1000000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, run_child, write_json  # noqa: E402

CHILD = """
import json, tempfile, time
from crmscore.features.synthetic import generate_base, write_synthetic_base
t = time.perf_counter()
base = generate_base({n}, seed=1)
gen = time.perf_counter() - t
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    write_synthetic_base(base, d)
    write = time.perf_counter() - t
print(json.dumps({{"generate_s": round(gen, 2), "write_parquet_s": round(write, 2),
    "rows": {{k: v.num_rows for k, v in base.tables.items()}}}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()
    r = run_child(CHILD.format(n=args.customers))
    total = r["generate_s"] + r["write_parquet_s"]
    rows = [
        ("customers", f"{args.customers:,}"),
        *((f"{k} rows", f"{v:,}") for k, v in r["rows"].items()),
        ("generate (s)", f"{r['generate_s']:.1f}"),
        ("write Parquet (s)", f"{r['write_parquet_s']:.1f}"),
        ("total (s), goal <= 60", f"{total:.1f}  {'met' if total <= 60 else 'MISSED'}"),
        ("peak RSS (MB), goal <= 6144", f"{r['peak_rss_mb']:.0f}  {'met' if r['peak_rss_mb'] <= 6144 else 'MISSED'}"),
    ]
    print_table("Synthetic base generation", rows)
    path = write_json("generate", {"customers": args.customers, **r, "total_s": round(total, 2),
                                   "goals": {"total_s": 60, "peak_rss_mb": 6144}})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
