"""Batch scoring benchmark: the whole base end to end against raw ``Booster.predict``, in one run.

Goals (../shared/BENCHMARKS.md "Speed", issue 6), on 2 cores:

* ``crmscore score --reasons none`` end to end (Parquet snapshot in -> four models + CLV +
  quadrant -> Parquet out) at >= 0.6 x the raw ``lightgbm.Booster.predict`` throughput of the
  same four boosters on the numpy matrices they read, measured in the same run (2 threads);
* 1M customers in <= 45 s.

What the run does:

1. prepares (and caches in ``--work``, so a rerun skips it): the four models trained with the
   default ``TrainConfig`` on a modest synthetic base (``--train-customers``, 20k) and promoted
   in a private MLflow home; a ``--customers`` (1M) synthetic base and its feature snapshot at
   2025-01-01 (no labels: the day after the data ends, as a nightly run would see it);
2. anchor: ``Booster.predict`` of the four champion boosters on the matrices they read
   (propensity on its expanded (customer, category) matrix, built beforehand and not timed),
   on ``--anchor-customers`` customers of the snapshot, 1 and 2 threads, best of ``--repeat``;
   throughput in customers/s with all four models per customer. It runs before and after the
   end-to-end run and the ratio uses the mean of the two (the load of a shared machine drifts);
3. crmscore: ``score_base(..., reasons="none")`` on the whole snapshot in a fresh process (its
   peak RSS is the job's), with the default workers (one chunk per core at a time, LightGBM on
   one thread each); models are loaded from the registry first and timed apart;
4. where the time goes: the same job again, one chunk at a time (``workers=1``, LightGBM on
   2 threads: the stage timers would overlap otherwise), with timers around the library's
   stages (read, encode, expand, predict, placement, writes), on the whole snapshot: the first chunk alone
   pays for first touches of fresh memory, several times the steady cost on these VMs. Its
   Booster.predict seconds / wall seconds is the same ratio measured inside one process;
5. reason codes: ``compute_reasons`` (TreeSHAP + formatting, all four models) on
   ``--reasons-customers`` customers; then what ``--reasons actions`` adds on the whole base:
   measured when the estimate (customers with a triggered action / reasons throughput) fits in
   ``--actions-budget`` seconds, else extrapolated (and the table says so).

Every measurement runs in its own fresh Python. The machines are shared: the load average at
the start and end is recorded beside the figures.

Run: .venv/bin/python benchmarks/batch.py [--customers 1000000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, run_child, write_json  # noqa: E402

AS_OF = "2025-01-01"
HORIZON_DAYS = 90
GOAL_RATIO = 0.6
GOAL_1M_S = 45.0
BASE_SEED = 1  # the same base as benchmarks/generate.py and features.py
TRAIN_SEED = 7

# --- preparation (cached in --work) ----------------------------------------------------------

GENERATE = """
import json, time
from crmscore.features.synthetic import generate_base, write_synthetic_base
t = time.perf_counter()
base = generate_base({n}, seed={seed})
gen = time.perf_counter() - t
write_synthetic_base(base, {path!r})
print(json.dumps({{"generate_s": round(gen, 2), "rows": {{k: v.num_rows for k, v in base.tables.items()}}}}))
"""

SNAPSHOT = """
import json, time
from crmscore.features.io import write_snapshot
from crmscore.features.synthetic import load_synthetic_base
from crmscore.features.pipeline import build_snapshot
base = load_synthetic_base({base!r}).to_base()
t = time.perf_counter()
snap = build_snapshot(base, {as_of!r}, {horizon}, with_labels=False)
built = time.perf_counter() - t
write_snapshot(snap, {as_of!r}, {path!r})
print(json.dumps({{"snapshot_s": round(built, 2), "rows": len(snap), "columns": snap.shape[1]}}))
"""

# LightGBM settings are the defaults except the thread count: one thread keeps this preparation
# (not a measurement) from crawling when other work shares the two cores (see docs/benchmarks.md).
TRAIN = """
import json, os, time
from pathlib import Path
os.environ["CRMSCORE_HOME"] = {home!r}
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + {home!r} + "/mlflow.db"
from crmscore.bundle import ModelKind
from crmscore.features.synthetic import generate_base, write_synthetic_base
from crmscore.training.config import LightGBMSettings, TrainConfig
from crmscore.training.jobs import promote_job, train_job
write_synthetic_base(generate_base({n}, seed={seed}), {base!r})
config = TrainConfig(lightgbm=LightGBMSettings(num_threads=1))
t = time.perf_counter()
trained = train_job(Path({base!r}), list(ModelKind), config, home=Path({home!r})).models
promote_job(list(ModelKind), config, home=Path({home!r}))
print(json.dumps({{"train_s": round(time.perf_counter() - t, 1),
    "trees": {{m.kind.value: m.bundle.booster.num_trees() for m in trained}}}}))
"""


def ensure_base(work: Path, customers: int, seed: int = BASE_SEED) -> tuple[Path, dict | None]:
    """The ``customers`` synthetic base (seed 1 unless told) written in ``work``; generated when absent."""
    path = work / f"base-{customers}-seed{seed}"
    if (path / "_truth" / "traits.parquet").is_file():
        return path, None
    print(f"generating a {customers:,}-customer base in {path} ...", flush=True)
    return path, run_child(GENERATE.format(n=customers, seed=seed, path=str(path)))


def prepare(work: Path, customers: int, train_customers: int) -> dict:
    """Registry with four champions, the big base and its snapshot; reused when present."""
    work.mkdir(parents=True, exist_ok=True)
    info: dict = {"work": str(work)}
    home = work / f"home-train{train_customers}"
    marker = home / "trained.json"
    if marker.is_file():
        info["train"] = json.loads(marker.read_text())
    else:
        print(f"training the four models on {train_customers:,} customers into {home} ...", flush=True)
        if home.exists():
            import shutil

            shutil.rmtree(home)
        home.mkdir(parents=True)
        info["train"] = run_child(TRAIN.format(home=str(home), n=train_customers, seed=TRAIN_SEED,
                                               base=str(work / f"train-base-{train_customers}")))
        marker.write_text(json.dumps(info["train"]))
    info["home"] = str(home)
    base, generated = ensure_base(work, customers)
    info["base"], info["generate"] = str(base), generated
    snapshot = work / f"snapshot-{customers}-{AS_OF}.parquet"
    if not snapshot.is_file():
        print(f"building the {AS_OF} snapshot of {customers:,} customers ...", flush=True)
        info["snapshot_build"] = run_child(SNAPSHOT.format(base=str(base), as_of=AS_OF, horizon=HORIZON_DAYS,
                                                           path=str(snapshot)))
    info["snapshot"] = str(snapshot)
    return info


# --- measurements (each in a fresh Python) ---------------------------------------------------

SETUP = """
import json, os, time
from pathlib import Path
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + {home!r} + "/mlflow.db"
import resource
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
def self_peak_mb():  # this process only (run_child's figure is the max over all children so far)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def tree_cpu_s():
    # this process and its children: pass 2's worker processes are children of the job's
    # forkserver, which reaps them, so they count in its children's times
    import psutil
    total = cpu_s()
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total
from crmscore.bundle import ModelKind, setup_tracking
from crmscore.serving.batch.job import load_champions, score_base
setup_tracking(Path({home!r}))
t = time.perf_counter()
models = load_champions()
load_s = time.perf_counter() - t
def head(path, n):
    batches, got = [], 0
    for b in pq.ParquetFile(path).iter_batches(batch_size=min(n, 65_536)):
        batches.append(b)
        got += b.num_rows
        if got >= n:
            break
    return pa.Table.from_batches(batches).slice(0, n).to_pandas()
"""

ANCHOR = SETUP + """
X = models.encode(head({snapshot!r}, {n}))
matrices = {{}}
for kind, bundle in models.bundles.items():
    Xk = np.ascontiguousarray(X[:, models.index[kind]])
    matrices[kind.value] = np.ascontiguousarray(bundle.expand(Xk))
out = {{"customers": X.shape[0], "trees": {{k.value: b.booster.num_trees() for k, b in models.bundles.items()}},
       "matrix_rows": {{k: m.shape[0] for k, m in matrices.items()}},
       "features": {{k: m.shape[1] for k, m in matrices.items()}}}}
for threads in (1, 2):
    per_kind = {{}}
    for kind, bundle in models.bundles.items():
        Z = matrices[kind.value]
        bundle.booster.predict(Z[:1000], num_threads=threads)  # warm-up
        times = []
        for _ in range({repeat}):
            t = time.perf_counter()
            bundle.booster.predict(Z, num_threads=threads)
            times.append(time.perf_counter() - t)
        per_kind[kind.value] = min(times)
    out[f"threads_{{threads}}"] = {{"seconds_per_kind": {{k: round(v, 3) for k, v in per_kind.items()}},
        "seconds": round(sum(per_kind.values()), 3),
        "customers_per_s": round(X.shape[0] / sum(per_kind.values()), 1)}}
print(json.dumps(out))
"""

END_TO_END = SETUP + """
import tempfile
with tempfile.TemporaryDirectory(dir={work!r}) as tmp:
    out_path = Path(tmp) / "scores.parquet"
    t, c = time.perf_counter(), tree_cpu_s()
    result = score_base(Path({snapshot!r}), out_path, models=models, reasons={reasons!r}, chunk_rows={chunk_rows})
    wall, cpu = time.perf_counter() - t, tree_cpu_s() - c
    table = pq.read_table(out_path, columns=["action_codes"])
    codes = table.column("action_codes").to_pandas().fillna("").astype(str)
    from crmscore.serving.batch.chunks import TRIGGERED_ACTIONS
    triggered = np.zeros(len(codes), dtype=bool)
    for code in TRIGGERED_ACTIONS:
        triggered |= codes.str.contains(code, regex=False).to_numpy()
    print(json.dumps({{"seconds": round(wall, 2), "cpu_s": round(cpu, 1), "rows": table.num_rows, "load_models_s": round(load_s, 2),
        "output_mb": round(out_path.stat().st_size / 2**20, 1), "triggered_action_customers": int(triggered.sum()),
        "columns": len(pq.read_schema(out_path).names), "self_peak_rss_mb": self_peak_mb()}}))
"""

# The same job with timers around the library's stages (the whole snapshot by default: the
# first chunk alone pays for first touches of fresh memory, several times the steady cost on
# these VMs). Timers wrap module attributes the job looks up at call time; nested stages are
# reported exclusive of what they contain (see breakdown()).
BREAKDOWN = SETUP + """
import tempfile, functools, collections
import lightgbm as lgb
import crmscore.serving.batch.local as local
import crmscore.serving.batch.chunks as chunks
import crmscore.serving.scoring as scoring
from crmscore.bundle import ModelBundle
from crmscore.features.io import write_snapshot
totals = collections.defaultdict(float)
def timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            totals[name] += time.perf_counter() - t
    return wrapper
def timed_iter(name, fn):
    def wrapper(*a, **k):
        it = fn(*a, **k)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                totals[name] += time.perf_counter() - t
                return
            totals[name] += time.perf_counter() - t
            yield item
    return wrapper
local.iter_chunks = timed_iter("read_snapshot", local.iter_chunks)
local.score_chunk = timed("score_chunk", local.score_chunk)
local.place_chunk = timed("place_chunk", local.place_chunk)
local._write_part = timed("write_parts", local._write_part)
local.to_arrow = timed("to_arrow", local.to_arrow)
local.resolve_cutoffs = timed("resolve_cutoffs", local.resolve_cutoffs)
chunks.score_matrix = timed("score_matrix", chunks.score_matrix)
chunks.scores_frame = timed("scores_frame", chunks.scores_frame)
chunks.assign_portfolio = timed("assign_portfolio", chunks.assign_portfolio)
chunks.normalise = timed("normalise", chunks.normalise)
scoring.ModelSet.encode = timed("encode", scoring.ModelSet.encode)
ModelBundle.expand = timed("expand", ModelBundle.expand)
lgb.Booster.predict = timed("booster_predict", lgb.Booster.predict)
with tempfile.TemporaryDirectory(dir={work!r}) as tmp:
    snapshot = Path({snapshot!r})
    if {n} < pq.ParquetFile(snapshot).metadata.num_rows:
        snapshot = Path(tmp) / "head.parquet"
        write_snapshot(head({snapshot!r}, {n}), {as_of!r}, snapshot)
    customers = pq.ParquetFile(snapshot).metadata.num_rows
    out_path = Path(tmp) / "scores.parquet"
    t = time.perf_counter()
    score_base(snapshot, out_path, models=models, reasons="none", chunk_rows={chunk_rows}, workers=1)
    wall = time.perf_counter() - t
print(json.dumps({{"customers": customers, "seconds": round(wall, 3),
    "timers": {{k: round(v, 3) for k, v in totals.items()}}, "self_peak_rss_mb": self_peak_mb()}}))
"""

REASONS = SETUP + """
from crmscore.bundle import ModelBundle
from crmscore.serving.scoring import compute_reasons
X = models.encode(head({snapshot!r}, {n}))
shap = {{}}
original = ModelBundle.contributions
def contributions(self, *a, **k):
    t = time.perf_counter()
    try:
        return original(self, *a, **k)
    finally:
        shap[self.kind.value] = shap.get(self.kind.value, 0.0) + time.perf_counter() - t
ModelBundle.contributions = contributions
compute_reasons(models, X[:200], num_threads=2)  # warm-up
shap.clear()
t = time.perf_counter()
reasons = compute_reasons(models, X, num_threads=2)
wall = time.perf_counter() - t
print(json.dumps({{"customers": X.shape[0], "seconds": round(wall, 2),
    "treeshap_s": {{k: round(v, 2) for k, v in shap.items()}},
    "customers_per_s": round(X.shape[0] / wall, 1)}}))
"""


def breakdown(timers: dict[str, float], wall: float) -> dict[str, float]:
    """Exclusive seconds per stage from the nested timers of BREAKDOWN."""
    t = {k: timers.get(k, 0.0) for k in ("read_snapshot", "score_chunk", "place_chunk", "write_parts", "to_arrow",
                                         "resolve_cutoffs", "score_matrix", "scores_frame", "assign_portfolio",
                                         "normalise", "encode", "expand", "booster_predict")}
    predict = t["booster_predict"]
    stages = {
        "read snapshot chunk (Parquet -> pandas)": t["read_snapshot"],
        "encode (frame -> union matrix)": t["encode"],
        "propensity expand (6 rows per customer)": t["expand"],
        "Booster.predict (4 boosters)": predict,
        "calibration, scorecard, CLV": t["score_matrix"] - t["expand"] - predict,
        "scores frame + normalise (pass 1)": t["score_chunk"] - t["encode"] - t["score_matrix"],
        "portfolio placement (assign_portfolio)": t["assign_portfolio"],
        "normalise (pass 2)": t["place_chunk"] - t["assign_portfolio"],
        "to Arrow + write parts (both passes)": t["write_parts"] + t["to_arrow"],
        "cut-offs (read scores, resolve)": t["resolve_cutoffs"],
    }
    stages["other (assemble output, manifest, ...)"] = wall - sum(stages.values())
    return {k: round(v, 3) for k, v in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--train-customers", type=int, default=20_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "crmscore-bench",
                        help="cache folder for the registry, base and snapshot (kept between runs)")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--anchor-customers", type=int, default=100_000)
    parser.add_argument("--breakdown-customers", type=int, default=None,
                        help="customers of the timed-stages run (default: the whole snapshot)")
    parser.add_argument("--reasons-customers", type=int, default=5_000)
    parser.add_argument("--actions-budget", type=float, default=300.0,
                        help="run --reasons actions on the whole base only if estimated to add at most this many seconds")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    load_start = os.getloadavg()
    started = time.perf_counter()
    info = prepare(args.work, args.customers, args.train_customers)
    common = {"home": info["home"], "snapshot": info["snapshot"], "work": str(args.work)}
    anchor_code = ANCHOR.format(**common, n=min(args.anchor_customers, args.customers), repeat=args.repeat)

    # The anchor runs before and after the end-to-end run and the two are averaged: the load
    # of a shared machine drifts within minutes.
    print("anchor: Booster.predict on the numpy matrices ...", flush=True)
    anchors = [run_child(anchor_code)]
    print("crmscore end to end, --reasons none ...", flush=True)
    e2e = run_child(END_TO_END.format(**common, reasons="none", chunk_rows=args.chunk_rows))
    print("anchor again ...", flush=True)
    anchors.append(run_child(anchor_code))
    print("end to end with stage timers ...", flush=True)
    timed = run_child(BREAKDOWN.format(**common, n=min(args.breakdown_customers or args.customers, args.customers),
                                       chunk_rows=args.chunk_rows, as_of=AS_OF))
    stages = breakdown(timed["timers"], timed["seconds"])
    print("reason codes ...", flush=True)
    reasons = run_child(REASONS.format(**common, n=min(args.reasons_customers, args.customers)))

    triggered = e2e["triggered_action_customers"]
    estimate_s = triggered / reasons["customers_per_s"]
    actions: dict = {"triggered_action_customers": triggered, "estimated_added_s": round(estimate_s, 1)}
    if estimate_s <= args.actions_budget:
        print(f"--reasons actions on the whole base (about {estimate_s:.0f} s more) ...", flush=True)
        run = run_child(END_TO_END.format(**common, reasons="actions", chunk_rows=args.chunk_rows))
        actions.update({"measured": True, "seconds": run["seconds"], "peak_rss_mb": run["self_peak_rss_mb"],
                        "added_s": round(run["seconds"] - e2e["seconds"], 1)})
    else:
        actions.update({"measured": False, "budget_s": args.actions_budget})
    load_end = os.getloadavg()

    n = e2e["rows"]
    e2e_rate = n / e2e["seconds"]
    raw = {t: sum(a[f"threads_{t}"]["customers_per_s"] for a in anchors) / len(anchors) for t in (1, 2)}
    ratio = e2e_rate / raw[2]
    per_million = e2e["seconds"] * 1_000_000 / n
    # The same comparison inside one process: the job's own Booster.predict calls (2 threads,
    # the same matrices) against the job's wall time. Immune to load drift between processes.
    in_run_ratio = timed["timers"]["booster_predict"] / timed["seconds"]
    shares = {k: v / timed["seconds"] for k, v in stages.items()}
    a0 = anchors[0]
    trees = a0["trees"]
    evaluations = sum(trees[k] * a0["matrix_rows"][k] / a0["customers"] for k in trees)
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    rows = [
        ("customers scored", f"{n:,} (snapshot at {AS_OF})"),
        ("models (trees)", ", ".join(f"{k} {v}" for k, v in trees.items())),
        ("tree evaluations per customer", f"{evaluations:,.0f} (propensity: 6 rows per customer)"),
        (f"anchor: Booster.predict, {a0['customers']:,} customers, before / after", ""),
        ("  1 thread (customers/s)", " / ".join(f"{a['threads_1']['customers_per_s']:,.0f}" for a in anchors)),
        ("  2 threads (customers/s)", " / ".join(f"{a['threads_2']['customers_per_s']:,.0f}" for a in anchors)),
        ("  2 threads, seconds per model (before)",
         ", ".join(f"{k} {v:.2f}" for k, v in a0["threads_2"]["seconds_per_kind"].items())),
        ("crmscore end to end, --reasons none", ""),
        ("  seconds", f"{e2e['seconds']:.1f}  (+ {e2e['load_models_s']:.1f} s loading the models; "
                      f"{e2e['cpu_s'] / e2e['seconds']:.2f} cores busy on average)"),
        ("  customers/s", f"{e2e_rate:,.0f}"),
        ("  ratio to 2-thread raw predict (mean of the two), goal >= 0.6", f"{ratio:.2f}  {verdict(ratio >= GOAL_RATIO)}"),
        ("  1M customers (s), goal <= 45", f"{per_million:.1f}  {verdict(per_million <= GOAL_1M_S)}"
                                            + ("" if n == 1_000_000 else " (scaled)")),
        ("  peak RSS of the scoring process (MB)", f"{e2e['self_peak_rss_mb']:.0f}"),
        ("  output (MB)", f"{e2e['output_mb']:.0f}"),
        (f"timed run ({timed['customers']:,} customers, one chunk at a time, {timed['seconds']:.1f} s): where the time goes", ""),
        *((f"  {k}", f"{v:6.2f} s  {shares[k]:5.1%}") for k, v in stages.items()),
        ("  in-run ratio: Booster.predict time / wall time", f"{in_run_ratio:.2f}  {verdict(in_run_ratio >= GOAL_RATIO)}"),
        ("reason codes (compute_reasons, 4 models, 2 threads)", ""),
        ("  customers/s", f"{reasons['customers_per_s']:,.0f}  ({reasons['customers']:,} in {reasons['seconds']:.1f} s)"),
        ("  of which TreeSHAP (s)", ", ".join(f"{k} {v:.1f}" for k, v in reasons["treeshap_s"].items())),
        ("  customers with a triggered action", f"{triggered:,} ({triggered / n:.1%})"),
        ("  --reasons actions adds (s)",
         f"{actions['added_s']:.0f}  (measured; {actions['seconds']:.0f} s in all)" if actions.get("measured")
         else f"~{estimate_s:,.0f}  (EXTRAPOLATED: {triggered:,} / {reasons['customers_per_s']:,.0f} per s; "
              f"not run, over the {args.actions_budget:.0f} s budget)"),
        ("load average at start / end", f"{load_start[0]:.2f} / {load_end[0]:.2f}"),
    ]
    print_table("Batch scoring: crmscore end to end vs raw Booster.predict", rows)
    path = write_json("batch", {
        "customers": args.customers, "train_customers": args.train_customers, "as_of": AS_OF,
        "chunk_rows": args.chunk_rows, "anchor": anchors, "anchor_customers_per_s": {f"threads_{t}": round(v, 1) for t, v in raw.items()},
        "end_to_end": e2e, "customers_per_s": round(e2e_rate, 1), "ratio_to_raw_2_threads": round(ratio, 3),
        "seconds_per_million": round(per_million, 1), "tree_evaluations_per_customer": round(evaluations),
        "timed_run": {"customers": timed["customers"], "seconds": timed["seconds"], "stages_s": stages,
                      "timers": timed["timers"], "peak_rss_mb": timed["self_peak_rss_mb"],
                      "in_run_ratio": round(in_run_ratio, 3)},
        "reasons": reasons, "reasons_actions": actions,
        "preparation": {k: info.get(k) for k in ("train", "generate", "snapshot_build")},
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]},
        "wall_s": round(time.perf_counter() - started, 1),
        "goals": {"ratio_to_raw_2_threads": GOAL_RATIO, "seconds_per_million": GOAL_1M_S},
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
