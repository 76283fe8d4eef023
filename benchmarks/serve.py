"""Online scoring benchmark: ``crmscore serve`` against ``mlflow models serve``, in one run.

Goal (../shared/BENCHMARKS.md, issue 7): one customer's full payload (four models, CLV,
quadrant, actions, reason codes) over HTTP at >= 20x the requests/s of ``mlflow models serve``
serving the churn model alone, and p99 <= 15 ms at 8 connections; 1 uvicorn worker each.

The run prepares its own registry and data (a synthetic base, the four models trained and
promoted, a feature snapshot, a batch scoring with reason codes for every customer, an API
key), then starts each server in its own process on 127.0.0.1 and drives it with the same
load generator: a bounded asyncio HTTP/1.1 keep-alive client (raw sockets, no HTTP library,
so it costs as little CPU as a Python client can), 1 and 8 connections, a fixed duration
each after a warm-up. Requests cycle over shuffled customers of the snapshot:

* ``mlflow``: ``POST /invocations`` with one customer's features (``dataframe_split``);
* ``crmscore``: ``GET /v1/customers/{id}/scores`` with an API key (the full payload, reasons
  from the batch scoring);
* ``crmscore, reasons on demand``: the same without a batch scoring, so every request
  computes its reason codes (TreeSHAP) as a customer missing from the batch would.

The machine has 2 cores and the load generator runs on them too: its CPU use is measured
and printed beside each figure (the servers' too), so the numbers can be read for what
they are. Results: a table on stdout and ``benchmarks/results/serve.json``.

Run: .venv/bin/python benchmarks/serve.py [--customers 5000] [--duration 10] [--workdir DIR]
(``--workdir`` keeps the prepared registry and data for the next run.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402

AS_OF = date(2025, 1, 1)
GOAL_RATIO = 20.0
GOAL_P99_MS = 15.0
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Prepared:
    home: Path
    snapshot_path: Path
    scores_path: Path
    keys_file: Path
    reader_key: str
    customers: int


# --- preparation ---------------------------------------------------------------------------


def prepare(workdir: Path, customers: int) -> Prepared:
    """Registry, snapshot, batch scoring and a key in ``workdir`` (reused when complete)."""
    marker = workdir / "prepared.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("customers") == customers:
            print(f"reusing the registry and data prepared in {workdir}")
            return Prepared(Path(info["home"]), Path(info["snapshot_path"]), Path(info["scores_path"]),
                            Path(info["keys_file"]), info["reader_key"], customers)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    home.mkdir()
    os.environ["CRMSCORE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"

    from crmscore.bundle import ModelKind
    from crmscore.features.io import write_snapshot
    from crmscore.features.pipeline import build_snapshot
    from crmscore.features.synthetic import generate_base, write_synthetic_base
    from crmscore.serving.batch.job import score_base
    from crmscore.serving.security import create_key
    from crmscore.training.config import TrainConfig
    from crmscore.training.jobs import promote_job, train_job

    t = time.perf_counter()
    synthetic = generate_base(customers, seed=3)
    base_path = workdir / "base"
    write_synthetic_base(synthetic, base_path)
    config = TrainConfig(train_snapshots=6)
    print(f"training the four models on {customers:,} customers ...", flush=True)
    train_job(base_path, list(ModelKind), config, home=home)
    promote_job(list(ModelKind), config, home=home)
    snapshot_path = workdir / "snapshot.parquet"
    write_snapshot(build_snapshot(synthetic.to_base(), AS_OF, 90, with_labels=False), AS_OF, snapshot_path)
    print("batch scoring with reason codes for every customer ...", flush=True)
    scores_path = workdir / "scores.parquet"
    score_base(snapshot_path, scores_path, reasons="all")
    keys_file = workdir / "keys.json"
    reader_key = create_key("reader", keys_file)
    print(f"prepared in {time.perf_counter() - t:.0f} s", flush=True)
    marker.write_text(json.dumps({"customers": customers, "home": str(home), "snapshot_path": str(snapshot_path),
                                  "scores_path": str(scores_path), "keys_file": str(keys_file),
                                  "reader_key": reader_key}))
    return Prepared(home, snapshot_path, scores_path, keys_file, reader_key, customers)


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")


def server_env(prep: Prepared) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{prep.home / 'mlflow.db'}"
    env["CRMSCORE_HOME"] = str(prep.home)
    # mlflow starts `uvicorn` by name: the environment's scripts must be on the PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start_mlflow(prep: Prepared, port: int, log: Path) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow), "models", "serve", "-m", "models:/crm-churn@champion", "--env-manager", "local",
           "-p", str(port), "-h", HOST, "-w", "1"]
    proc = subprocess.Popen(cmd, env=server_env(prep), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_http(f"http://{HOST}:{port}/ping", 120, proc)
    return proc


CRMSCORE_SERVER = """
from pathlib import Path
from crmscore.serving.api.app import run_server
from crmscore.serving.settings import ServingSettings
settings = ServingSettings(home=Path({home!r}), snapshot_path=Path({snapshot!r}), scores_path={scores},
                           keys_file=Path({keys!r}))
run_server(settings, host={host!r}, port={port}, workers=1)
"""


def start_crmscore(prep: Prepared, port: int, log: Path, *, with_scores: bool = True) -> subprocess.Popen:
    code = CRMSCORE_SERVER.format(home=str(prep.home), snapshot=str(prep.snapshot_path),
                                  scores=f"Path({str(prep.scores_path)!r})" if with_scores else "None",
                                  keys=str(prep.keys_file), host=HOST, port=port)
    proc = subprocess.Popen([sys.executable, "-c", code], env=server_env(prep), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://{HOST}:{port}/health/ready", 180, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_by_process(session: int) -> dict[int, float]:
    """User + system CPU seconds of each process in a session, by pid (Linux)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # field 6 of stat: the session id
            out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def cpu_seconds(session: int) -> float:
    """User + system CPU time of every process in a session (the server and its workers; Linux)."""
    return sum(cpu_by_process(session).values())


# --- requests ------------------------------------------------------------------------------


def crmscore_requests(prep: Prepared, port: int, n: int = 2000) -> list[bytes]:
    import pyarrow.parquet as pq

    ids = pq.read_table(prep.snapshot_path, columns=["customer_id"])["customer_id"].to_pylist()
    random.Random(0).shuffle(ids)
    return [(f"GET /v1/customers/{cid}/scores HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
             f"X-API-Key: {prep.reader_key}\r\n\r\n").encode() for cid in ids[:n]]


def mlflow_requests(prep: Prepared, port: int, n: int = 500) -> list[bytes]:
    import math

    import pyarrow.parquet as pq

    from crmscore.bundle import ModelKind, load_registered_bundle

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{prep.home / 'mlflow.db'}"
    bundle, _ = load_registered_bundle(ModelKind.CHURN)
    frame = pq.read_table(prep.snapshot_path).to_pandas()
    rows = frame.sample(n=min(n, len(frame)), random_state=0)[bundle.feature_names]
    out = []
    for values in rows.astype(object).itertuples(index=False):
        data = [None if isinstance(v, float) and math.isnan(v) else (v.item() if hasattr(v, "item") else v)
                for v in values]
        body = json.dumps({"dataframe_split": {"columns": bundle.feature_names, "data": [data]}}).encode()
        out.append((f"POST /invocations HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    return out


_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = _LENGTH.search(head)
    if match:
        await reader.readexactly(int(match.group(1)))
    else:  # chunked
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _connection(port: int, requests: list[bytes], start: int, deadline: float, latencies: list[float],
                      statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = start
    try:
        while time.perf_counter() < deadline:
            request = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            status = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _drive(port: int, requests: list[bytes], connections: int, seconds: float) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    step = len(requests) // connections
    await asyncio.gather(*(_connection(port, requests, k * step, deadline, latencies, statuses)
                           for k in range(connections)))
    return latencies, statuses


def drive(port: int, requests: list[bytes], connections: int, seconds: float, server_pid: int) -> dict:
    """Closed-loop load: ``connections`` keep-alive connections, each sending as fast as answered."""
    server_cpu0, cpu0, wall0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    latencies, statuses = asyncio.run(_drive(port, requests, connections, seconds))
    wall = time.perf_counter() - wall0
    server_cpu, cpu = cpu_seconds(server_pid) - server_cpu0, time.process_time() - cpu0
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    ok = statuses.get(200, 0)
    return {"connections": connections, "seconds": round(wall, 2), "requests": len(latencies),
            "non_200": len(latencies) - ok, "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "rps": round(len(latencies) / wall, 1), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": round(1000 * latencies[-1], 2),
            "server_cpu_cores": round(server_cpu / wall, 2), "loadgen_cpu_cores": round(cpu / wall, 2)}


def measure(name: str, proc: subprocess.Popen, port: int, requests: list[bytes], duration: float,
            warmup: float) -> list[dict]:
    drive(port, requests, 8, warmup, proc.pid)  # warm-up, not recorded
    results = []
    for connections in (1, 8):
        r = drive(port, requests, connections, duration, proc.pid)
        print(f"  {name:<30} {connections} conn: {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  "
              f"p99 {r['p99_ms']:7.2f} ms  non-200 {r['non_200']}  (server {r['server_cpu_cores']} cores, "
              f"load generator {r['loadgen_cpu_cores']} cores)", flush=True)
        results.append({"server": name, **r})
    return results


def check_crmscore(port: int, prep: Prepared) -> dict:
    import pyarrow.parquet as pq

    cid = pq.read_table(prep.snapshot_path, columns=["customer_id"])["customer_id"][0].as_py()
    req = urllib.request.Request(f"http://{HOST}:{port}/v1/customers/{cid}/scores",
                                 headers={"X-API-Key": prep.reader_key})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    payload = json.loads(body)
    assert all(payload["model_versions"].values()), payload["model_versions"]
    assert payload["reasons"] is not None and payload["portfolio"]["quadrant"]
    return {"payload_bytes": len(body), "reasons_source": payload["reasons_source"],
            "model_versions": payload["model_versions"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=5000, help="synthetic customers (default 5,000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server (default 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the prepared data here and reuse it")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crmscore-serve-bench-"))
    prep = prepare(workdir, args.customers)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    results: list[dict] = []
    checks: dict = {}
    print(f"\nload: {args.duration:.0f} s per figure after {args.warmup:.0f} s of warm-up; 127.0.0.1; 1 worker each")
    proc = start_mlflow(prep, port := free_port(), logs / "mlflow.log")
    try:
        results += measure("mlflow models serve (churn)", proc, port, mlflow_requests(prep, port), args.duration,
                           args.warmup)
    finally:
        stop(proc)
    proc = start_crmscore(prep, port := free_port(), logs / "crmscore.log")
    try:
        checks["crmscore"] = check_crmscore(port, prep)
        results += measure("crmscore serve (all four)", proc, port, crmscore_requests(prep, port), args.duration,
                           args.warmup)
    finally:
        stop(proc)
    proc = start_crmscore(prep, port := free_port(), logs / "crmscore-no-batch.log", with_scores=False)
    try:
        checks["crmscore_reasons_on_demand"] = check_crmscore(port, prep)
        results += measure("crmscore, reasons on demand", proc, port, crmscore_requests(prep, port),
                           args.duration / 2, args.warmup)
    finally:
        stop(proc)

    by = {(r["server"], r["connections"]): r for r in results}
    rows = []
    summary = {}
    for c in (1, 8):
        anchor = by[("mlflow models serve (churn)", c)]
        ours = by[("crmscore serve (all four)", c)]
        ratio = ours["rps"] / anchor["rps"] if anchor["rps"] else float("inf")
        summary[f"ratio_{c}conn"] = round(ratio, 1)
        rows.append((f"{c} conn: mlflow req/s, p50/p99 ms", f"{anchor['rps']:.0f}, {anchor['p50_ms']:.1f}/{anchor['p99_ms']:.1f}"))
        rows.append((f"{c} conn: crmscore req/s, p50/p99 ms", f"{ours['rps']:.0f}, {ours['p50_ms']:.1f}/{ours['p99_ms']:.1f}"))
        rows.append((f"{c} conn: ratio (goal >= {GOAL_RATIO:.0f}x)", f"{ratio:.1f}x  {'met' if ratio >= GOAL_RATIO else 'MISSED'}"))
        demand = by[("crmscore, reasons on demand", c)]
        rows.append((f"{c} conn: crmscore, reasons on demand", f"{demand['rps']:.0f} req/s, p50/p99 "
                     f"{demand['p50_ms']:.1f}/{demand['p99_ms']:.1f} ms"))
    p99 = by[("crmscore serve (all four)", 8)]["p99_ms"]
    summary["p99_8conn_ms"] = p99
    rows.append((f"crmscore p99 at 8 conn (goal <= {GOAL_P99_MS:.0f} ms)", f"{p99:.1f} ms  {'met' if p99 <= GOAL_P99_MS else 'MISSED'}"))
    errors = sum(r["non_200"] for r in results)
    rows.append(("non-200 responses, all runs", str(errors)))
    print_table("Online scoring: crmscore serve vs mlflow models serve (same run, same load generator)", rows)
    print("\nNote: 2 cores shared by the server and the load generator (a Python asyncio client); the\n"
          "'load generator' column above is the CPU it used, which the server could not.")
    path = write_json("serve", {
        "customers": prep.customers, "duration_s": args.duration, "warmup_s": args.warmup,
        "goals": {"ratio": GOAL_RATIO, "p99_8conn_ms": GOAL_P99_MS},
        "summary": summary, "checks": checks, "results": results,
        "load_generator": "asyncio raw-socket HTTP/1.1 keep-alive client, closed loop, in the benchmark process",
    })
    print(f"\nwrote {path}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
