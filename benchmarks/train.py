"""Training benchmark: all four models on a 1M-customer synthetic base, timed stage by stage.

Goal (../shared/BENCHMARKS.md "Speed", issue 4): ``crmscore train --kind all`` on 1M customers
in <= 10 minutes on 2 cores, with the default ``TrainConfig`` (12 monthly training snapshots
plus the out-of-time test snapshot, ``max_train_rows`` 1.5M, LightGBM defaults).

The run calls ``crmscore.training.jobs.train_job`` then ``promote_job`` exactly as the CLI does,
in a fresh Python with a private MLflow home (SQLite + local artefacts). Timers wrap the library
functions the job looks up at call time, so the stages below are the job's own:

* load + validate the base (``validate.load_base``);
* the customer samples (``split.training_sample``, ``split.evaluation_sample``): on 1M
  customers the snapshots are built for a seeded sample of customers whose training rows fill
  ``max_train_rows``, the test snapshot for ``TEST_MAX_CUSTOMERS`` (200k) customers, the truth
  for ``TRUTH_MAX_CUSTOMERS`` (20k) of them; the table prints what the runs logged;
* features: restricting the base to each sample (``pipeline.restrict_base``), each of the 13
  snapshots (``pipeline.build_snapshot``) and their stacking (``pipeline.build_training_frame``,
  then one ``concat`` of the training and test frames inside ``prepare_training_data``);
* the synthetic truth for the oracle ratios (``jobs.load_truth``), see below;
* the data fingerprint logged with every run (``tracking.frame_fingerprint``);
* the train/validation/test split (``TrainingData.split``: once, reused by every kind);
* per kind: the propensity row sample, the LightGBM fit (``fit_bundle``), the scikit-learn
  baseline (``fit_baseline``), the evaluation on the test sample (``evaluate_bundle``) and
  MLflow logging + registration (``tracking.log_run``);
* promotion (``promote_job``).

When the default run cannot finish (the memory guard below, or an error), the job runs again
with ``--fallback-snapshots`` (6) training snapshots: the fits are still capped at
``max_train_rows`` rows, so their times stand for the default's, and the report keeps
both runs.

Each stage records wall seconds, CPU seconds of the process (user + system: below the wall
time x threads, the process waited for the cores) and the peak RSS while it ran (sampled every
0.25 s). A guard aborts the run, reporting what it measured so far, if the machine's available
memory falls below ``--min-free-gb``, so a run that cannot fit does not take other work with it.

The truth: ``load_truth`` computes the generator's true probabilities for the test customers
(``synthetic.compute_truth``: 200 Monte Carlo continuations of every (customer, category),
about 1 ms per customer), now for the job's truth sample only. By default (``--truth
library``) the job runs as the CLI does, truth included; ``--truth measure`` runs it without
the truth and times ``compute_truth`` apart on ``--truth-customers`` customers.

Run: .venv/bin/python benchmarks/train.py [--customers 1000000] [--work DIR] [--threads 0]
(the base is shared with benchmarks/batch.py in ``--work`` and generated when absent).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, run_child, write_json  # noqa: E402
from batch import ensure_base  # noqa: E402

GOAL_S = 600.0

TRAIN = r"""
import collections, functools, json, os, resource, sys, threading, time, traceback
from pathlib import Path
os.environ["CRMSCORE_HOME"] = {home!r}
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + {home!r} + "/mlflow.db"
PAGE = os.sysconf("SC_PAGE_SIZE")
T0 = time.perf_counter()
samples = []  # (seconds since start, RSS MB)
stages = []   # dicts: name, kind, start, end, wall_s, cpu_s
aborted = []

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20

def available_gb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")

def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def report(extra):
    now = time.perf_counter() - T0
    unfinished = [{{"name": n, "start": round(t - T0, 2), "wall_s": round(now - (t - T0), 2)}} for n, t in open_stages]
    print(json.dumps({{"stages": stages, "unfinished": unfinished, "rss_samples": samples[::4],
                      "aborted": aborted[0] if aborted else None,
                      "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "total_s": round(time.perf_counter() - T0, 1), **extra}}), flush=True)

def watch():
    while True:
        samples.append((round(time.perf_counter() - T0, 2), round(rss_mb(), 1)))
        free = available_gb()
        if free < {min_free_gb}:
            where = open_stages[-1][0] if open_stages else "set-up"
            aborted.append(f"available memory fell to {{free:.1f}} GB at {{rss_mb() / 1024:.1f}} GB RSS "
                           f"during {{where}}: stopped to protect other work")
            report({{}})
            os._exit(0)
        time.sleep(0.25)

open_stages = []
def timed(name, fn, kind_of=None):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        kind = kind_of(a, k) if kind_of else None
        label = f"{{name}} ({{kind}})" if kind else name
        t, c = time.perf_counter(), cpu_s()
        open_stages.append((label, t))
        try:
            return fn(*a, **k)
        finally:
            end = time.perf_counter()
            stages.append({{"name": name, "kind": kind, "start": round(t - T0, 2), "end": round(end - T0, 2),
                           "wall_s": round(end - t, 2), "cpu_s": round(cpu_s() - c, 2)}})
            open_stages.pop()
    return wrapper

threading.Thread(target=watch, daemon=True).start()
from crmscore.bundle import ModelKind
import crmscore.features.pipeline as pipeline
import crmscore.features.validate as validate
import crmscore.training.jobs as jobs
import crmscore.training.tracking as tracking
from crmscore.training.config import LightGBMSettings, TrainConfig

def first_kind(a, k):
    return (a[0] if a else k["kind"]).value

def bundle_kind(a, k):
    return (a[0] if a else k["bundle"]).kind.value

validate.load_base = timed("load + validate base", validate.load_base)
jobs.prepare_training_data = timed("prepare_training_data", jobs.prepare_training_data)
jobs.training_sample = timed("draw the samples", jobs.training_sample)
jobs.evaluation_sample = timed("draw the samples", jobs.evaluation_sample)
pipeline.restrict_base = timed("restrict the base to a sample", pipeline.restrict_base)
pipeline.build_snapshot = timed("snapshot", pipeline.build_snapshot, lambda a, k: str(a[1]))
pipeline.build_training_frame = timed("features: snapshots stacked", pipeline.build_training_frame)
tracking.frame_fingerprint = timed("data fingerprint", tracking.frame_fingerprint)
jobs.TrainingData.split = timed("split", jobs.TrainingData.split)
jobs.fit_kind = timed("fit_kind", jobs.fit_kind, first_kind)
jobs.fit_bundle = timed("fit (LightGBM + calibration)", jobs.fit_bundle, first_kind)
jobs.fit_baseline = timed("baseline (scikit-learn)", jobs.fit_baseline, first_kind)
jobs.evaluate_bundle = timed("evaluate on test", jobs.evaluate_bundle, bundle_kind)
tracking.log_run = timed("MLflow log + register", tracking.log_run, bundle_kind)
if {skip_truth!r}:
    jobs.load_truth = timed("truth (skipped)", lambda *a, **k: None)
else:
    jobs.load_truth = timed("truth (compute_truth)", jobs.load_truth)

settings = {{}} if {threads} == 0 else {{"lightgbm": LightGBMSettings(num_threads={threads})}}
config = TrainConfig(**settings) if {snapshots} is None else TrainConfig(train_snapshots={snapshots}, **settings)
extra = {{}}
try:
    trained = timed("train_job", jobs.train_job)(Path({base!r}), list(ModelKind), config, home=Path({home!r})).models
    import mlflow
    run = mlflow.get_run(trained[0].run.run_id)
    extra["sampling"] = {{
        "tags": {{k: v for k, v in run.data.tags.items() if k.startswith("crmscore.data.sample.")}},
        "params": {{k: v for k, v in run.data.params.items()
                    if k.endswith(("_customers", "_sampled")) or k == "sample_seed"}},
    }}
    extra["models"] = {{m.kind.value: {{"trees": m.bundle.booster.num_trees(), "train_rows": m.bundle.info.get("train_rows"),
                                       "metrics": {{k: round(v, 4) for k, v in m.evaluation.metrics.items()
                                                   if k in ("auc", "ece", "mean_auc", "mean_ece", "rmse", "spearman",
                                                            "baseline_auc", "baseline_rmse", "oracle_auc_ratio",
                                                            "oracle_mean_auc_ratio", "oracle_min_auc_ratio",
                                                            "oracle_rmse_ratio")}}}}
                       for m in trained}}
    timed("promote_job", jobs.promote_job)(list(ModelKind), config, home=Path({home!r}))
except BaseException as exc:
    extra["error"] = f"{{type(exc).__name__}}: {{exc}}"
    extra["traceback"] = traceback.format_exc()[-3000:]
report(extra)
"""

TRUTH = """
import json, resource, time
from datetime import date
from crmscore.features import synthetic
base = synthetic.generate_base({n}, seed=1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
truth = synthetic.compute_truth(base, date.fromisoformat({as_of!r}), {horizon})
print(json.dumps({{"customers": {n}, "known": len(truth), "seconds": round(time.perf_counter() - t, 2),
    "rss_before_mb": round(before, 1),
    "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}}))
"""


def run_train(args: argparse.Namespace, base: Path, snapshots: int | None) -> dict:
    """One ``train_job`` + ``promote_job`` in a fresh Python; its stages with their peak RSS."""
    with tempfile.TemporaryDirectory(dir=args.work, prefix="train-home-") as home:
        result = run_child(TRAIN.format(home=home, base=str(base), threads=args.threads, snapshots=snapshots,
                                        skip_truth=args.truth == "measure", min_free_gb=args.min_free_gb))
    samples = result["rss_samples"]

    def peak(start: float, end: float) -> float:
        inside = [m for t, m in samples if start <= t <= end]
        return max(inside) if inside else float("nan")

    result["stages"] = sorted(({**s, "peak_rss_mb": peak(s["start"], s["end"])} for s in result["stages"]),
                              key=lambda s: s["start"])
    result["train_snapshots"] = 12 if snapshots is None else snapshots
    return result


def rows_of(result: dict, args: argparse.Namespace) -> list[tuple[str, str]]:
    stages = result["stages"]

    def pick(name: str, kind: str | None = None) -> list[dict]:
        return [s for s in stages if s["name"] == name and (kind is None or s["kind"] == kind)]

    def total(name: str, kind: str | None = None) -> float:
        return sum(s["wall_s"] for s in pick(name, kind))

    def peak(name: str, kind: str | None = None) -> float:
        return max((s["peak_rss_mb"] for s in pick(name, kind)), default=float("nan"))

    snaps = pick("snapshot")
    restrict = total("restrict the base to a sample")
    stacked = total("features: snapshots stacked") - sum(s["wall_s"] for s in snaps) - restrict
    truth_s = total("truth (compute_truth)")
    prepare_rest = (total("prepare_training_data") - total("load + validate base") - total("draw the samples")
                    - total("features: snapshots stacked") - truth_s)
    sampling = result.get("sampling") or {}
    rows = [
        ("load + validate base (s)", f"{total('load + validate base'):.1f}"),
        ("draw the customer samples (s)", f"{total('draw the samples'):.1f}"),
        *[(f"  sample: {k.removeprefix('crmscore.data.sample.')}", v) for k, v in (sampling.get("tags") or {}).items()],
        ("restrict the base to the samples (s, calls)", f"{restrict:.1f}, {len(pick('restrict the base to a sample'))}"),
        (f"features: {len(snaps)} snapshots (s)", f"{sum(s['wall_s'] for s in snaps):.1f}"
         + (f"  ({min(s['wall_s'] for s in snaps):.1f}-{max(s['wall_s'] for s in snaps):.1f} each)" if snaps else "")),
        ("  + stacking (concat) (s); peak RSS (MB)", f"{stacked:.1f}; {peak('features: snapshots stacked'):.0f}"),
        ("truth (s)", f"{truth_s:.1f}" + (f"  ({sampling['params'].get('truth_customers')} customers)"
                                           if sampling.get("params") else "")
         if args.truth == "library" else "skipped (see below)"),
        ("rest of prepare_training_data (s)", f"{prepare_rest:.1f}  (feature set, training + test concat)"),
        ("data fingerprint (s)", f"{total('data fingerprint'):.1f}"),
        ("train/validation/test split (s, calls); peak RSS (MB)",
         f"{total('split'):.1f}, {len(pick('split'))}; {peak('split'):.0f}"),
    ]
    for s in pick("fit_kind"):
        kind = s["kind"]
        parts = {"fit": total("fit (LightGBM + calibration)", kind), "baseline": total("baseline (scikit-learn)", kind),
                 "evaluate": total("evaluate on test", kind)}
        log = total("MLflow log + register", kind)
        model = (result.get("models") or {}).get(kind, {})
        fit_cpu = sum(x["cpu_s"] for x in pick("fit (LightGBM + calibration)", kind))
        rows += [
            (f"{kind} (s)", f"{s['wall_s'] + log:.1f}"
             + (f"  [{model.get('trees')} trees, {model.get('train_rows'):,} rows]" if model else "")),
            ("  split + sample", f"{s['wall_s'] - sum(parts.values()):.1f}"),  # split() cached after the first call
            ("  LightGBM fit + calibration (CPU s)", f"{parts['fit']:.1f} ({fit_cpu:.1f})"),
            ("  scikit-learn baseline", f"{parts['baseline']:.1f}"),
            ("  evaluate on the test sample", f"{parts['evaluate']:.1f}"),
            ("  MLflow log + register", f"{log:.1f}"),
            ("  peak RSS (MB)", f"{max(s['peak_rss_mb'], peak('MLflow log + register', kind)):.0f}"),
        ]
    for u in result.get("unfinished") or []:
        if u["name"] != "train_job":
            rows.append((f"unfinished: {u['name']} (s)", f"{u['wall_s']:.1f} when stopped"))
    failed = result.get("error") or result.get("aborted")
    job_s = total("train_job") if pick("train_job") else result["total_s"]
    rows += [
        ("promote (s)", f"{total('promote_job'):.1f}"),
        ("train_job total (s), goal <= 600",
         f"{job_s:.1f}  " + ("NOT FINISHED" if failed else ("met" if job_s <= GOAL_S else "MISSED"))
         + ("  (without the truth)" if args.truth == "measure" else "")),
        ("peak RSS (MB)", f"{result['self_peak_rss_mb']:.0f}"),
    ]
    if result.get("aborted"):
        rows.append(("ABORTED", result["aborted"]))
    if result.get("error"):
        rows.append(("ERROR", result["error"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "crmscore-bench",
                        help="cache folder holding the base (shared with batch.py, kept between runs)")
    parser.add_argument("--threads", type=int, default=0,
                        help="LightGBM num_threads (0 = the library default: every core from 100k rows)")
    parser.add_argument("--truth", choices=("measure", "library"), default="library",
                        help="library: the job as the CLI runs it (truth on its sample); measure: the job "
                             "without the synthetic truth, compute_truth timed apart")
    parser.add_argument("--truth-customers", type=int, default=10_000)
    parser.add_argument("--fallback-snapshots", type=int, default=6,
                        help="when the default run cannot finish, run again with this many training snapshots "
                             "(the fits still see max_train_rows rows) to time the fits; 0 = no fallback")
    parser.add_argument("--min-free-gb", type=float, default=2.0)
    args = parser.parse_args()

    load_start = os.getloadavg()
    args.work.mkdir(parents=True, exist_ok=True)
    base, generated = ensure_base(args.work, args.customers)
    truth = None
    if args.truth == "measure":
        print(f"compute_truth on {args.truth_customers:,} customers ...", flush=True)
        truth = run_child(TRUTH.format(n=args.truth_customers, as_of="2024-10-01", horizon=90))
    print(f"training the four models on {args.customers:,} customers, default TrainConfig ...", flush=True)
    runs = [run_train(args, base, None)]
    if (runs[0].get("aborted") or runs[0].get("error")) and args.fallback_snapshots:
        print(f"the default run did not finish; again with {args.fallback_snapshots} training snapshots ...", flush=True)
        runs.append(run_train(args, base, args.fallback_snapshots))
    load_end = os.getloadavg()

    rows = [
        ("customers", f"{args.customers:,}"),
        ("LightGBM threads", "library default (0)" if args.threads == 0 else str(args.threads)),
    ]
    for r in runs:
        rows.append((f"--- train_snapshots = {r['train_snapshots']} (+ 1 test snapshot)"
                     + ("" if r["train_snapshots"] == 12 else ", fallback"), ""))
        rows += [(f"  {k}", v) for k, v in rows_of(r, args)]
    if truth:
        scale = args.customers / truth["customers"]
        extra_mb = truth["self_peak_rss_mb"] - truth["rss_before_mb"]
        rows += [
            (f"compute_truth on {truth['customers']:,} customers (s; MB)", f"{truth['seconds']:.1f}; +{extra_mb:.0f}"),
            (f"  linear to {args.customers:,} (s; MB)", f"~{truth['seconds'] * scale:,.0f}; ~{extra_mb * scale:,.0f}  (EXTRAPOLATED)"),
        ]
    rows.append(("load average at start / end", f"{load_start[0]:.2f} / {load_end[0]:.2f}"))
    print_table("Training all four models", rows)

    def job_seconds(r: dict) -> float | None:
        done = [s["wall_s"] for s in r["stages"] if s["name"] == "train_job"]
        return done[0] if done else None

    path = write_json("train", {
        "customers": args.customers, "threads": args.threads, "truth_mode": args.truth, "base": str(base),
        "generate": generated,
        "runs": [{"train_snapshots": r["train_snapshots"], "train_job_s": job_seconds(r), "total_s": r["total_s"],
                  "sampling": r.get("sampling"),
                  "peak_rss_mb": r["self_peak_rss_mb"], "models": r.get("models"), "error": r.get("error"),
                  "traceback": r.get("traceback"), "aborted": r.get("aborted"), "unfinished": r.get("unfinished"),
                  "stages": r["stages"], "rss_samples": r["rss_samples"]} for r in runs],
        "truth": truth, "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]},
        "goals": {"train_job_s": GOAL_S},
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
