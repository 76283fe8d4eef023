"""Load with reloads, and overload: ``crmscore serve`` under a bounded load while
``POST /v1/admin/reload`` is called several times, then far past capacity (issue 8, property 2).

Goals: zero failed or 5xx requests during reloads, every response from one complete bundle
(its model versions are all of one champion set), p99 during reloads <= 1.5 x p99
without, server RSS growth over the run <= 10%; and at well past capacity the server refuses
quickly (503 from the in-flight limit, or 429/503) instead of queueing without bound.

The run prepares (or reuses, ``--workdir``) the registry and data of ``benchmarks/serve.py``,
then, before anything is timed, the two champion sets the reloads alternate between and the
batch scoring of the base with each (reasons for every customer, as ``crmscore score --reasons
all`` after a promotion): the first set is the champions of the preparation, the second a new
registered version of every model. It starts the server in its own process on 127.0.0.1 (1
uvicorn worker, default settings, ``scores_path`` a file of the work folder) and drives it over
loopback with the raw-socket keep-alive client of ``serve.py`` (httpx itself saturates a core
long before the server does): ``--connections`` closed loops, each request
``GET /v1/customers/{id}/scores`` cycling over shuffled customers; every 200 body is parsed and
its model versions checked against the two champion sets. Phases:

1. baseline, no reloads (``--duration`` seconds);
2. the same load while, every ``--reload-every`` seconds, the nightly flow runs: the other
   champion set is promoted in the registry (alias ``champion`` moved), its batch scoring is
   put in place at the server's ``scores_path`` (copied beside it, then ``os.replace``: the
   atomic rename ``crmscore score`` itself ends with), and an admin calls
   ``POST /v1/admin/reload``, which reads the champions, the snapshot and that file again
   (``--duration`` s);
3. overload: ``--overload`` concurrent clients for ``--overload-seconds``, after one more
   reload that puts the server back on the first set; closed loops, each sending again the
   instant it is answered (refused or not), so their latency is N / throughput (Little's law);
4. open-loop overload: requests arriving at ``--open-loop-factor`` times the baseline's
   throughput (Poisson), on up to ``--overload`` connections, for ``--overload-seconds``:
   how quickly the excess is refused, latency counted from each request's scheduled arrival.

Every response says where its reason codes came from (``reasons_source``): phase 2 reports,
per bundle served, its latency and how many responses computed reasons on demand (TreeSHAP,
tens of times the cost of a cached one); with the scores file matching each set, none should.

Results: a table on stdout and ``benchmarks/results/reload.json``.

Run: .venv/bin/python benchmarks/reload.py [--customers 2000] [--duration 60] [--workdir DIR]
     [--load-niceness N]  (the server's ``CRMSCORE_LOAD_NICENESS``; default: the server's default)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402
from serve import (  # noqa: E402
    HOST,
    Prepared,
    cpu_by_process,
    crmscore_requests,
    free_port,
    prepare,
    start_crmscore,
    stop,
)

GOAL_P99_RATIO = 1.5
#: the tick of the load generator's own lag monitor
LAG_TICK_S = 0.005
GOAL_RSS_GROWTH = 0.10
SECOND_CHAMPION_TAG = "crmscore.benchmark"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measured(server_pid: int, run: Callable[[], dict], seconds: float) -> dict:
    """Run a phase; add the CPU cores used by the server, its loader process and this process
    (the load generator, and the promotions and file copies of the nightly flow)."""
    before, own = cpu_by_process(server_pid), time.process_time()
    result = run()
    after, own = cpu_by_process(server_pid), time.process_time() - own
    used = {pid: t - before.get(pid, 0.0) for pid, t in after.items()}
    result["cpu_cores"] = {
        "server": round(used.pop(server_pid, 0.0) / seconds, 2),
        "loader_process": round(sum(used.values()) / seconds, 2),
        "load_generator": round(own / seconds, 2),
    }
    return result


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 keep-alive exchange over raw sockets (the client of serve.py, plus the body);
    the flag says the server closes the connection (``Connection: close``, e.g. uvicorn's 503
    past ``limit_concurrency``)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    match = _LENGTH.search(head)
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return int(head[9:12]), body, b"\r\nconnection: close" in head.lower()


async def _client_loop(port: int, requests: list[bytes], start: int, deadline: float,
                       record: dict, expected: list[dict], complete: list[dict]) -> None:
    """A closed loop on one keep-alive connection; every 200 body's versions are checked.

    ``complete``: the versions of each champion set (known before the load), one of which every
    response must carry whole; ``expected``: those of the bundles whose reload has answered so
    far (a response of a new bundle can arrive just before its reload's own answer: counted,
    not an error).
    """
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        record["errors"].append(type(exc).__name__)
        return
    i = start
    try:
        while time.monotonic() < deadline:
            request = requests[i % len(requests)]
            i += 1
            sent, t = time.monotonic(), time.perf_counter()
            try:
                status, body, closing = await _exchange(reader, writer, request)
                if closing:  # refused and closed: a client reconnects, as a real one would
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
            except (OSError, asyncio.IncompleteReadError) as exc:
                record["errors"].append(type(exc).__name__)
                return
            _record_response(record, status, body, (time.perf_counter() - t) * 1000, sent, expected, complete)
    finally:
        writer.close()


def _record_response(record: dict, status: int, body: bytes, ms: float, sent: float,
                     expected: list[dict], complete: list[dict]) -> None:
    """Count one response; a 200's body is parsed and its model versions checked."""
    record["codes"][status] = record["codes"].get(status, 0) + 1
    if status != 200:
        record["refused_ms"].append(ms)
        record["refused_sent"].append(sent)
        return
    record["latencies"].append(ms)
    record["sent"].append(sent)
    payload = json.loads(body)
    versions = payload["model_versions"]
    key = json.dumps(versions, sort_keys=True)
    record["by_versions"].setdefault(key, []).append(ms)
    if payload["reasons_source"] != "batch":  # reasons computed on demand (TreeSHAP)
        record["on_demand"][key] = record["on_demand"].get(key, 0) + 1
    if versions not in complete:
        record["inconsistent"] += 1
        if len(record["inconsistent_examples"]) < 5:
            record["inconsistent_examples"].append(versions)
    elif versions not in expected:
        record["before_reload_answer"] += 1


def _new_record() -> dict:
    return {"codes": {}, "latencies": [], "sent": [], "refused_ms": [], "refused_sent": [], "errors": [], "inconsistent": 0,
            "inconsistent_examples": [], "before_reload_answer": 0,
            "reloads": [], "reload_windows": [], "promotions": [], "by_versions": {}, "on_demand": {},
            "client_lag_ms": [], "load_average_start": load_average()}


async def _open_loop_phase(port: int, requests: list[bytes], rate: float, seconds: float, pool: int,
                           expected: list[dict], complete: list[dict], seed: int = 0) -> dict:
    """Open-loop load: requests arrive at ``rate`` per second (Poisson) whatever the server
    does, each on an idle one of ``pool`` keep-alive connections.

    A closed loop of N clients that send again the moment they are answered measures N divided
    by the server's throughput (Little's law), whatever the server does per request; arrivals
    at a fixed rate past capacity measure how quickly the excess is refused. Latency is counted
    from each request's scheduled arrival, so time spent waiting for a free connection (the
    client's queue) counts too: no coordinated omission.
    """
    import random

    record = _new_record()
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(pool):
        idle.put_nowait(await asyncio.open_connection(HOST, port))
    rng = random.Random(seed)
    inflight: set[asyncio.Task] = set()

    async def one(request: bytes, due: float) -> None:
        reader, writer = await idle.get()
        try:
            status, body, closing = await _exchange(reader, writer, request)
            ms = (time.perf_counter() - due) * 1000
            if closing:  # refused and closed: the connection is made again
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
        except (OSError, asyncio.IncompleteReadError) as exc:
            record["errors"].append(type(exc).__name__)
            writer.close()
            reader, writer = await asyncio.open_connection(HOST, port)
        else:
            _record_response(record, status, body, ms, time.monotonic() - ms / 1000, expected, complete)
        idle.put_nowait((reader, writer))

    start = time.perf_counter()
    record["start"] = time.monotonic()
    due, i = start, 0
    while due < start + seconds:
        while due <= time.perf_counter():  # every arrival due by now is sent now
            task = asyncio.create_task(one(requests[i % len(requests)], due))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            i += 1
            due += rng.expovariate(rate)
        wake = due
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        record["client_lag_ms"].append(max(0.0, time.perf_counter() - wake) * 1000)
    await asyncio.gather(*inflight)
    record["offered"] = i
    while not idle.empty():
        idle.get_nowait()[1].close()
    record["load_average_end"] = load_average()
    return record


async def _phase(port: int, requests: list[bytes], connections: int, seconds: float, expected: list[dict],
                 complete: list[dict], admin_key: str | None = None, reload_every: float = 0.0,
                 before_reload: Callable[[int], dict[str, str]] | None = None) -> dict:
    record = _new_record()
    deadline = time.monotonic() + seconds

    async def reloads() -> None:
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=120) as admin:
            while time.monotonic() + reload_every < deadline:
                await asyncio.sleep(reload_every)
                if before_reload is not None:  # promote, put its batch scoring in place
                    record["promotions"].append(await asyncio.to_thread(before_reload, len(record["reloads"])))
                t = time.monotonic()
                r = await admin.post("/v1/admin/reload", headers={"X-API-Key": admin_key})
                record["reload_windows"].append((t, time.monotonic()))
                record["reloads"].append({"status": r.status_code, "seconds": round(time.monotonic() - t, 2)})
                if r.status_code == 200:
                    expected.append(r.json()["model_versions"])

    async def client_lag() -> None:
        """How late the load generator's own loop wakes: a response waits that long to be read,
        and its latency counts it, though the server had answered."""
        lag = record["client_lag_ms"]
        while time.monotonic() < deadline:
            t = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            lag.append((time.perf_counter() - t - LAG_TICK_S) * 1000)

    step = max(1, len(requests) // connections)
    tasks = [_client_loop(port, requests, k * step, deadline, record, expected, complete) for k in range(connections)]
    tasks.append(client_lag())
    if admin_key:
        tasks.append(reloads())
    await asyncio.gather(*tasks)
    record["load_average_end"] = load_average()
    return record


def run_phase(client_loop: str, *args: Any, phase: Callable[..., Any] = _phase, **kwargs: Any) -> dict:
    """A phase (:func:`_phase` by default) on a fresh event loop of the load generator:
    ``asyncio``'s own or uvloop's."""
    factory = None
    if client_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(phase(*args, **kwargs))


def _split_by_reloads(record: dict) -> tuple[list[float], list[float]]:
    """Served latencies of requests that overlapped a reload (from its POST to its answer:
    the build in the loader process, then the unpickling, warm-up and swap in the server),
    and of the others."""
    windows = sorted(record["reload_windows"])
    inside, outside = [], []
    for sent, ms in zip(record["sent"], record["latencies"], strict=True):
        done = sent + ms / 1000
        overlaps = any(start < done and sent < end for start, end in windows)
        (inside if overlaps else outside).append(ms)
    return inside, outside


def summarise(record: dict, seconds: float) -> dict:
    total = sum(record["codes"].values())
    inside, outside = _split_by_reloads(record)
    five = sum(n for code, n in record["codes"].items() if code >= 500)
    return {
        "requests": total,
        "requests_per_s": round(total / seconds, 1),
        "status_counts": {str(k): v for k, v in sorted(record["codes"].items())},
        "failed": len(record["errors"]),
        "status_5xx": five,
        "inconsistent_versions": record["inconsistent"],
        "inconsistent_examples": record["inconsistent_examples"],
        "served_before_their_reload_answered": record["before_reload_answer"],
        "p50_ms": round(percentile(record["latencies"], 0.50), 2),
        "p99_ms": round(percentile(record["latencies"], 0.99), 2),
        "max_ms": round(max(record["latencies"], default=float("nan")), 2),
        "refused_share": round((total - len(record["latencies"])) / total, 4) if total else None,
        "refused_p99_ms": round(percentile(record["refused_ms"], 0.99), 2) if record["refused_ms"] else None,
        # served latency per bundle (model versions), and how many of its responses computed
        # their reasons on demand (none while the scores file matches the champions)
        "by_versions": {k: {"requests": len(v), "p50_ms": round(percentile(v, 0.50), 2),
                            "p99_ms": round(percentile(v, 0.99), 2),
                            "reasons_on_demand": record["on_demand"].get(k, 0)}
                        for k, v in sorted(record["by_versions"].items())},
        "reasons_on_demand": sum(record["on_demand"].values()),
        # what the p99 is made of: requests that overlapped a reload, and the rest
        "overlapping_a_reload": {"requests": len(inside), "p50_ms": round(percentile(inside, 0.50), 2),
                                 "p99_ms": round(percentile(inside, 0.99), 2)},
        "between_reloads": {"requests": len(outside), "p50_ms": round(percentile(outside, 0.50), 2),
                            "p99_ms": round(percentile(outside, 0.99), 2)},
        "reloads": record["reloads"],
        "promotions": record["promotions"],
        "load_average_start": record["load_average_start"],
        "load_average_end": record["load_average_end"],
        "client_loop_lag_p50_ms": round(percentile(record["client_lag_ms"], 0.50), 2),
        "client_loop_lag_p99_ms": round(percentile(record["client_lag_ms"], 0.99), 2),
    }


# --- the nightly flow: champion sets and their batch scoring -------------------------------------


@dataclass(frozen=True)
class ChampionSet:
    """Champions to promote together, and the batch scoring of the base made with them."""

    versions: dict[str, str]  # registered model name -> version
    scores_path: Path


def _file_versions(scores_path: Path) -> dict[str, str]:
    """Registered name -> model version recorded in a batch scoring file (one per model)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from crmscore.bundle import ModelKind

    table = pq.read_table(scores_path, columns=[f"model_version_{k.value}" for k in ModelKind])
    out = {}
    for kind in ModelKind:
        values = [v for v in pc.unique(table[f"model_version_{kind.value}"]).to_pylist() if v]
        if len(values) != 1:
            raise RuntimeError(f"{scores_path}: model_version_{kind.value} must hold one version; got {values}")
        out[kind.registered_name] = str(values[0])
    return out


def prepare_champion_sets(prep: Prepared, workdir: Path) -> tuple[list[ChampionSet], Callable[[ChampionSet], None]]:
    """The two champion sets of the reloads, each with its batch scoring, and how to promote one.

    The first set is what the preparation promoted and batch-scored (its versions are read from
    that scores file, so an interrupted earlier run cannot mislabel them). The second is a new
    registered version of each model (of the same run's model: registering a retrained one
    would only add training time to the run), promoted and batch-scored here with reasons for
    every customer, as ``crmscore promote`` and ``crmscore score --reasons all`` would; both
    are recorded in ``workdir`` and reused by the next run. Promotion moves alias
    ``champion``, as ``crmscore promote`` does; the champions are left on the first set.
    """
    import mlflow
    from mlflow import MlflowClient

    from crmscore.bundle import ModelKind
    from crmscore.serving.batch.job import score_base

    uri = f"sqlite:///{prep.home / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri  # score_base's models come from this registry
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    mlflow.set_tracking_uri(uri)  # the new version's source is a logged model, looked up in this store
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def promote(champions: ChampionSet) -> None:
        for name, version in champions.versions.items():
            client.set_registered_model_alias(name, "champion", version)

    first = ChampionSet(_file_versions(prep.scores_path), prep.scores_path)
    record = workdir / "champion-sets.json"
    second: ChampionSet | None = None
    if record.exists():
        saved = json.loads(record.read_text())
        candidate = ChampionSet(saved["versions"], Path(saved["scores_path"]))
        if saved.get("first") == first.versions and candidate.scores_path.exists():
            second = candidate
    if second is None:
        versions = {}
        for kind in ModelKind:
            name = kind.registered_name
            model = client.get_model_version(name, first.versions[name])
            new = client.create_model_version(name, model.source, run_id=model.run_id,
                                              tags={SECOND_CHAMPION_TAG: "reload: a second champion"},
                                              model_id=getattr(model, "model_id", None))
            versions[name] = str(new.version)
        second = ChampionSet(versions, workdir / "scores-second-champions.parquet")
        promote(second)
        try:
            t = time.perf_counter()
            print("batch scoring the base with the second champions (reasons for every customer) ...", flush=True)
            score_base(prep.snapshot_path, second.scores_path, reasons="all")
            print(f"  {time.perf_counter() - t:.0f} s", flush=True)
        finally:
            promote(first)
        if _file_versions(second.scores_path) != second.versions:
            raise RuntimeError(f"{second.scores_path} was not scored with the second champions {second.versions}")
        record.write_text(json.dumps({"first": first.versions, "versions": second.versions,
                                      "scores_path": str(second.scores_path)}))
    promote(first)  # whatever an interrupted run left behind
    return [first, second], promote


def install_scores(source: Path, scores_path: Path) -> None:
    """Put a batch scoring at the server's ``scores_path`` atomically: a copy beside it, renamed
    over it (the server never sees half a file)."""
    tmp = scores_path.with_name(f".{scores_path.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, scores_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000, help="synthetic customers (default 2,000)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each steady phase (default 60)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--reload-every", type=float, default=3.0, help="seconds between reloads (default 3)")
    parser.add_argument("--overload", type=int, default=256, help="concurrent clients when overloaded (default 256)")
    parser.add_argument("--overload-seconds", type=float, default=8.0, help="seconds of overload (default 8)")
    parser.add_argument("--open-loop-factor", type=float, default=3.0,
                        help="open-loop overload: requests arrive at this multiple of the baseline's throughput, "
                             "on up to --overload connections (default 3; 0 = skip)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the prepared data here and reuse it")
    parser.add_argument("--client-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop of the load generator (default uvloop: the cheaper client, so that "
                             "its own delays distort the latencies less; asyncio before 2026-12-07)")
    parser.add_argument("--load-niceness", type=int, default=None,
                        help="CRMSCORE_LOAD_NICENESS of the server (default: the server's default)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crmscore-reload-"))
    prep = prepare(workdir, args.customers)
    champion_sets, promote = prepare_champion_sets(prep, workdir)
    from crmscore.serving.security import create_key
    from crmscore.serving.settings import ServingSettings

    # the server's scores file: the batch scoring of whichever champions were promoted last
    served = dataclasses.replace(prep, scores_path=workdir / "served-scores.parquet")
    install_scores(champion_sets[0].scores_path, served.scores_path)

    from crmscore.bundle import ModelKind

    # what a response may carry: one champion set, whole (model kind -> version)
    complete = [{k.value: c.versions[k.registered_name] for k in ModelKind} for c in champion_sets]

    def nightly(k: int) -> dict[str, str]:
        """Before reload k: promote the other champion set, then put its batch scoring in place."""
        champions = champion_sets[(k + 1) % 2]
        promote(champions)
        install_scores(champions.scores_path, served.scores_path)
        return champions.versions

    if args.load_niceness is not None:
        os.environ["CRMSCORE_LOAD_NICENESS"] = str(args.load_niceness)
    niceness = ServingSettings(home=prep.home).load_niceness  # what the server will run with
    admin_key = create_key("admin", prep.keys_file)
    port = free_port()
    requests = crmscore_requests(prep, port)
    proc = start_crmscore(served, port, workdir / "reload-server.log")
    try:
        time.sleep(2.5)  # the server re-reads the keys file within 2 s: the new admin key
        with httpx.Client(base_url=f"http://{HOST}:{port}") as c:
            expected = [c.get("/health/ready").json()["model_versions"]]
        run_phase(args.client_loop, port, requests, args.connections, 3.0, expected, complete)  # warm-up
        rss_start = rss_mb(proc.pid)
        base = measured(proc.pid, lambda: summarise(run_phase(
            args.client_loop, port, requests, args.connections, args.duration, expected, complete),
            args.duration), args.duration)
        during = measured(proc.pid, lambda: summarise(run_phase(
            args.client_loop, port, requests, args.connections, args.duration, expected, complete, admin_key,
            args.reload_every, nightly), args.duration), args.duration)
        nightly(1)  # champions (and scores) back on the first set, as prepared
        rss_end = rss_mb(proc.pid)
        # ... and the server too, so the overload phase always runs on the first set, whichever
        # set the last reload of the phase happened to load
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=120) as c:
            back = c.post("/v1/admin/reload", headers={"X-API-Key": admin_key})
            if back.status_code == 200:
                expected.append(back.json()["model_versions"])
        over = summarise(run_phase(args.client_loop, port, requests, args.overload, args.overload_seconds,
                                   expected, complete), args.overload_seconds)
        rss_after_overload = rss_mb(proc.pid)
        open_rate = args.open_loop_factor * base["requests_per_s"]
        open_loop = None
        if open_rate > 0:
            time.sleep(2.0)  # the closed loop's last requests answered: this phase starts afresh
            record = run_phase(args.client_loop, port, requests, open_rate, args.overload_seconds, args.overload,
                               expected, complete, phase=_open_loop_phase)
            open_loop = summarise(record, args.overload_seconds)
            open_loop.update(offered_per_s=round(record["offered"] / args.overload_seconds, 1),
                             factor=args.open_loop_factor, refused_by_second=[
                                 sum(1 for t in record["refused_sent"] if k <= t - record["start"] < k + 1)
                                 for k in range(int(args.overload_seconds) + 1)])
        rss_after_overload = max(rss_after_overload, rss_mb(proc.pid))
        with httpx.Client(base_url=f"http://{HOST}:{port}") as c:
            alive_after = c.get("/health/ready").status_code
    finally:
        stop(proc)

    ratio = during["p99_ms"] / base["p99_ms"]
    first = json.dumps(expected[0], sort_keys=True)
    first_during = during["by_versions"].get(first, {}).get("p99_ms", float("nan"))
    # like for like (a diagnostic, not the goal): responses of the first set, the baseline's
    ratio_first = first_during / base["p99_ms"]
    growth = rss_end / rss_start - 1
    reloads_ok = sum(1 for r in during["reloads"] if r["status"] == 200)
    goals = {
        "zero_failed_or_5xx_during_reloads": during["failed"] == 0 and during["status_5xx"] == 0
        and set(during["status_counts"]) == {"200"},
        "versions_consistent": during["inconsistent_versions"] == 0 and base["inconsistent_versions"] == 0
        and over["inconsistent_versions"] == 0,
        "p99_ratio_le_1_5": ratio <= GOAL_P99_RATIO,
        "rss_growth_le_10pct": growth <= GOAL_RSS_GROWTH,
        # bounded queueing: either refusals happen, or the queue never builds (served p99 < 1 s)
        "overload_refused_quickly": over["failed"] == 0 and set(over["status_counts"]) <= {"200", "429", "503"}
        and alive_after == 200 and (over["p99_ms"] < 1000.0)
        and (over["refused_p99_ms"] is None or over["refused_p99_ms"] < 100.0),
        # the same at a fixed arrival rate past capacity: what "refused quickly" means when
        # clients do not all send again the instant they are answered
        "open_loop_overload_refused_quickly": open_loop is None or (
            open_loop["failed"] == 0 and set(open_loop["status_counts"]) <= {"200", "429", "503"}
            and open_loop["p99_ms"] < 1000.0
            and (open_loop["refused_p99_ms"] is None or open_loop["refused_p99_ms"] < 100.0)),
    }
    rows = [
        ("customers / connections", f"{prep.customers:,} / {args.connections}"),
        ("loader process niceness", str(niceness)),
        ("load average: baseline start -> reloads end", f"{base['load_average_start']} -> {during['load_average_end']}"),
        ("baseline req/s, p50 / p99 ms", f"{base['requests_per_s']}  {base['p50_ms']} / {base['p99_ms']}"),
        ("during reloads req/s, p50 / p99 ms", f"{during['requests_per_s']}  {during['p50_ms']} / {during['p99_ms']}"),
        ("reloads (200 / called), seconds each", f"{reloads_ok} / {len(during['reloads'])}, "
         f"{[r['seconds'] for r in during['reloads']]}"),
        ("champion sets promoted before each reload", f"{len(during['promotions'])}, versions served: "
         f"{sorted({json.dumps(v, sort_keys=True) for v in expected})}"),
        ("p99 during / without (goal <= 1.5)", f"{ratio:.2f}"),
        ("  during reloads by versions served", "; ".join(
            f"{'first' if k == first else 'second'}: {v['requests']} req, p50 / p99 {v['p50_ms']} / {v['p99_ms']} ms, "
            f"{v['reasons_on_demand']} reasons on demand"
            for k, v in during["by_versions"].items())),
        ("  p99 of the first set during / without", f"{ratio_first:.2f} (like for like)"),
        ("  requests overlapping a reload: n, p50 / p99 ms", f"{during['overlapping_a_reload']['requests']}, "
         f"{during['overlapping_a_reload']['p50_ms']} / {during['overlapping_a_reload']['p99_ms']}"),
        ("  requests between reloads: n, p50 / p99 ms", f"{during['between_reloads']['requests']}, "
         f"{during['between_reloads']['p50_ms']} / {during['between_reloads']['p99_ms']}"),
        ("CPU cores: server / loader / load generator", " -> ".join(
            f"{r['cpu_cores']['server']} / {r['cpu_cores']['loader_process']} / {r['cpu_cores']['load_generator']}"
            for r in (base, during)) + " (baseline -> reloads)"),
        ("responses with reasons on demand (base, during)", f"{base['reasons_on_demand']}, {during['reasons_on_demand']}"),
        ("failed, 5xx, non-200 during reloads", f"{during['failed']}, {during['status_5xx']}, "
         f"{sum(v for k, v in during['status_counts'].items() if k != '200')}"),
        ("responses not of one whole champion set", f"{during['inconsistent_versions'] + base['inconsistent_versions']}"
         f" {during['inconsistent_examples'][:2]}; served before their reload answered: "
         f"{during['served_before_their_reload_answered']}"),
        ("server RSS start -> end MB (growth)", f"{rss_start:.0f} -> {rss_end:.0f} ({growth:+.1%})"),
        (f"overload {args.overload} clients: statuses", json.dumps(over["status_counts"])),
        ("overload: refused share, refusal p99 ms", f"{over['refused_share']}, {over['refused_p99_ms']}"),
        ("overload: served p99 ms, failed", f"{over['p99_ms']}, {over['failed']}"),
        ("open loop: offered req/s (x baseline), statuses", "skipped" if open_loop is None else
         f"{open_loop['offered_per_s']} (x{args.open_loop_factor}), {json.dumps(open_loop['status_counts'])}"),
        ("open loop: refusal p99 / served p99 ms, failed", "-" if open_loop is None else
         f"{open_loop['refused_p99_ms']} / {open_loop['p99_ms']}, {open_loop['failed']}"),
        ("open loop: refusals second by second", "-" if open_loop is None else str(open_loop["refused_by_second"])),
        (f"load generator's own loop lag p50 / p99 ms ({args.client_loop})",
         " -> ".join(f"{r['client_loop_lag_p50_ms']} / {r['client_loop_lag_p99_ms']}" for r in (base, during, over))
         + " (baseline -> reloads -> overload)"),
        ("RSS after overload MB; ready after", f"{rss_after_overload:.0f}; {alive_after}"),
        ("goals met", ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in goals.items())),
    ]
    print_table("crmscore serve: load with reloads, and overload (loopback, 1 worker)", rows)
    path = write_json("reload", {
        "customers": prep.customers, "connections": args.connections, "duration_s": args.duration,
        "reload_every_s": args.reload_every, "overload_clients": args.overload, "load_niceness": niceness,
        "client_loop": args.client_loop,
        "champion_sets": [{"versions": c.versions, "scores_path": str(c.scores_path)} for c in champion_sets],
        "baseline": base, "during_reloads": during, "overload": over, "open_loop_overload": open_loop,
        "p99_ratio": round(ratio, 3), "p99_ratio_first_versions": round(ratio_first, 3),
        "reload_back_to_first_versions": back.status_code, "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
        "rss_growth": round(growth, 4), "rss_after_overload_mb": round(rss_after_overload, 1),
        "ready_after_overload": alive_after, "goals": goals,
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
