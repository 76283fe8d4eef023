"""Load with reloads, and overload: ``crmscore serve`` under a bounded load while
``POST /v1/admin/reload`` is called several times, then far past capacity (issue 8, property 2).

Goals: zero failed or 5xx requests during reloads, every response from one complete bundle
(its model versions are those of a loaded bundle, all present), p99 during reloads <= 1.5 x p99
without, server RSS growth over the run <= 10%; and at well past capacity the server refuses
quickly (503 from the in-flight limit, or 429/503) instead of queueing without bound.

The run prepares (or reuses, ``--workdir``) the registry and data of ``benchmarks/serve.py``,
starts the server in its own process on 127.0.0.1 (1 uvicorn worker, default settings), and
drives it over loopback with the raw-socket keep-alive client of ``serve.py`` (httpx itself
saturates a core long before the server does): ``--connections`` closed loops, each request
``GET /v1/customers/{id}/scores`` cycling over shuffled customers; every 200 body is parsed and
its model versions checked against the bundles loaded so far. Phases:

1. baseline, no reloads (``--duration`` seconds);
2. the same load while, every ``--reload-every`` seconds, a new champion version of every model
   is promoted in the registry (alias ``champion`` moved) and an admin reloads (``--duration`` s);
3. overload: ``--overload`` concurrent clients for ``--overload-seconds``, after one more
   reload that puts the server back on the first versions.

The second champions are new versions of the same models, and the batch scoring's cached reason
codes are of the first versions: a response of the second versions computes its reasons on
demand (TreeSHAP, tens of times the cost of a cached one). Phase 2 therefore reports its latency
per bundle served too; the p99 of the first versions' responses against the baseline (also the
first versions) isolates what the reloads themselves cost. The goal stays on all responses.

Results: a table on stdout and ``benchmarks/results/reload.json``.

Run: .venv/bin/python benchmarks/reload.py [--customers 2000] [--duration 60] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402
from serve import HOST, crmscore_requests, free_port, prepare, start_crmscore, stop  # noqa: E402

GOAL_P99_RATIO = 1.5
GOAL_RSS_GROWTH = 0.10


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive exchange over raw sockets (the client of serve.py, plus the body)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    match = _LENGTH.search(head)
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return int(head[9:12]), body


async def _client_loop(port: int, requests: list[bytes], start: int, deadline: float,
                       record: dict, expected: list[dict]) -> None:
    """A closed loop on one keep-alive connection; every 200 body's versions are checked."""
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
            t = time.perf_counter()
            try:
                status, body = await _exchange(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError) as exc:
                record["errors"].append(type(exc).__name__)
                return
            ms = (time.perf_counter() - t) * 1000
            record["codes"][status] = record["codes"].get(status, 0) + 1
            if status == 200:
                record["latencies"].append(ms)
                versions = json.loads(body)["model_versions"]
                record["by_versions"].setdefault(json.dumps(versions, sort_keys=True), []).append(ms)
                if versions not in expected or any(v is None for v in versions.values()):
                    record["inconsistent"] += 1
            else:
                record["refused_ms"].append(ms)
                if b"connection: close" in body.lower():
                    return
    finally:
        writer.close()


async def _phase(port: int, requests: list[bytes], connections: int, seconds: float, expected: list[dict],
                 admin_key: str | None = None, reload_every: float = 0.0,
                 promote: Callable[[int], dict[str, str]] | None = None) -> dict:
    record: dict = {"codes": {}, "latencies": [], "refused_ms": [], "errors": [], "inconsistent": 0,
                    "reloads": [], "promotions": [], "by_versions": {}}
    deadline = time.monotonic() + seconds

    async def reloads() -> None:
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=120) as admin:
            while time.monotonic() + reload_every < deadline:
                await asyncio.sleep(reload_every)
                if promote is not None:  # a data scientist promotes a new champion, then reloads
                    record["promotions"].append(await asyncio.to_thread(promote, len(record["reloads"])))
                t = time.perf_counter()
                r = await admin.post("/v1/admin/reload", headers={"X-API-Key": admin_key})
                record["reloads"].append({"status": r.status_code, "seconds": round(time.perf_counter() - t, 2)})
                if r.status_code == 200:
                    expected.append(r.json()["model_versions"])

    step = max(1, len(requests) // connections)
    tasks = [_client_loop(port, requests, k * step, deadline, record, expected) for k in range(connections)]
    if admin_key:
        tasks.append(reloads())
    await asyncio.gather(*tasks)
    return record


def summarise(record: dict, seconds: float) -> dict:
    total = sum(record["codes"].values())
    five = sum(n for code, n in record["codes"].items() if code >= 500)
    return {
        "requests": total,
        "requests_per_s": round(total / seconds, 1),
        "status_counts": {str(k): v for k, v in sorted(record["codes"].items())},
        "failed": len(record["errors"]),
        "status_5xx": five,
        "inconsistent_versions": record["inconsistent"],
        "p50_ms": round(percentile(record["latencies"], 0.50), 2),
        "p99_ms": round(percentile(record["latencies"], 0.99), 2),
        "max_ms": round(max(record["latencies"], default=float("nan")), 2),
        "refused_share": round((total - len(record["latencies"])) / total, 4) if total else None,
        "refused_p99_ms": round(percentile(record["refused_ms"], 0.99), 2) if record["refused_ms"] else None,
        # served latency per bundle (model versions): the second champions have no cached reason
        # codes (the batch scoring is of the first), so each of their responses computes TreeSHAP
        "by_versions": {k: {"requests": len(v), "p50_ms": round(percentile(v, 0.50), 2),
                            "p99_ms": round(percentile(v, 0.99), 2)} for k, v in sorted(record["by_versions"].items())},
        "reloads": record["reloads"],
        "promotions": record["promotions"],
    }


def registry_promoter(home: Path) -> Callable[[int], dict[str, str]]:
    """Promotion as ``crmscore promote`` does it: move alias ``champion`` to a new version.

    Before the load, each model gets a second registered version (a new version of the same
    run's model: registering a retrained one would only add training time to the run); each
    call moves ``champion`` of every model to its other version, so every reload swaps in
    different model versions than the bundle serving, and a response mixing two bundles'
    versions would be caught.
    """
    import mlflow
    from mlflow import MlflowClient

    from crmscore.bundle import ModelKind

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # the new version's source is a logged model, looked up in this store
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions: dict[str, tuple[str, str]] = {}
    for kind in ModelKind:
        name = kind.registered_name
        first = client.get_model_version_by_alias(name, "champion")
        second = client.create_model_version(name, first.source, run_id=first.run_id,
                                             tags={"crmscore.benchmark": "reload: a second champion"},
                                             model_id=getattr(first, "model_id", None))
        versions[name] = (str(first.version), str(second.version))

    def promote(k: int) -> dict[str, str]:
        chosen = {}
        for name, pair in versions.items():
            chosen[name] = pair[(k + 1) % 2]
            client.set_registered_model_alias(name, "champion", chosen[name])
        return chosen

    return promote


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000, help="synthetic customers (default 2,000)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each steady phase (default 60)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--reload-every", type=float, default=3.0, help="seconds between reloads (default 3)")
    parser.add_argument("--overload", type=int, default=256, help="concurrent clients when overloaded (default 256)")
    parser.add_argument("--overload-seconds", type=float, default=8.0, help="seconds of overload (default 8)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the prepared data here and reuse it")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crmscore-reload-"))
    prep = prepare(workdir, args.customers)
    from crmscore.serving.security import create_key

    admin_key = create_key("admin", prep.keys_file)
    port = free_port()
    requests = crmscore_requests(prep, port)
    proc = start_crmscore(prep, port, workdir / "reload-server.log")
    try:
        time.sleep(2.5)  # the server re-reads the keys file within 2 s: the new admin key
        with httpx.Client(base_url=f"http://{HOST}:{port}") as c:
            expected = [c.get("/health/ready").json()["model_versions"]]
        asyncio.run(_phase(port, requests, args.connections, 3.0, expected))  # warm-up
        rss_start = rss_mb(proc.pid)
        base = summarise(asyncio.run(_phase(port, requests, args.connections, args.duration,
                                            expected)), args.duration)
        promote = registry_promoter(prep.home)
        during = summarise(asyncio.run(_phase(port, requests, args.connections, args.duration, expected,
                                              admin_key, args.reload_every, promote)), args.duration)
        promote(1)  # champion back on the first versions, as prepared
        rss_end = rss_mb(proc.pid)
        # ... and the server too, so the overload phase always runs on the first versions (cached
        # reasons), whichever versions the last reload of the phase happened to load
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=120) as c:
            back = c.post("/v1/admin/reload", headers={"X-API-Key": admin_key})
            if back.status_code == 200:
                expected.append(back.json()["model_versions"])
        over = summarise(asyncio.run(_phase(port, requests, args.overload, args.overload_seconds,
                                            expected)), args.overload_seconds)
        rss_after_overload = rss_mb(proc.pid)
        with httpx.Client(base_url=f"http://{HOST}:{port}") as c:
            alive_after = c.get("/health/ready").status_code
    finally:
        stop(proc)

    ratio = during["p99_ms"] / base["p99_ms"]
    first = json.dumps(expected[0], sort_keys=True)
    first_during = during["by_versions"].get(first, {}).get("p99_ms", float("nan"))
    # like for like (a diagnostic, not the goal): responses of the first versions, the baseline's
    ratio_first = first_during / base["p99_ms"]
    growth = rss_end / rss_start - 1
    reloads_ok = sum(1 for r in during["reloads"] if r["status"] == 200)
    goals = {
        "zero_failed_or_5xx_during_reloads": during["failed"] == 0 and during["status_5xx"] == 0
        and set(during["status_counts"]) == {"200"},
        "versions_consistent": during["inconsistent_versions"] == 0 and base["inconsistent_versions"] == 0,
        "p99_ratio_le_1_5": ratio <= GOAL_P99_RATIO,
        "rss_growth_le_10pct": growth <= GOAL_RSS_GROWTH,
        # bounded queueing: either refusals happen, or the queue never builds (served p99 < 1 s)
        "overload_refused_quickly": over["failed"] == 0 and set(over["status_counts"]) <= {"200", "429", "503"}
        and alive_after == 200 and (over["p99_ms"] < 1000.0)
        and (over["refused_p99_ms"] is None or over["refused_p99_ms"] < 100.0),
    }
    rows = [
        ("customers / connections", f"{prep.customers:,} / {args.connections}"),
        ("baseline req/s, p50 / p99 ms", f"{base['requests_per_s']}  {base['p50_ms']} / {base['p99_ms']}"),
        ("during reloads req/s, p50 / p99 ms", f"{during['requests_per_s']}  {during['p50_ms']} / {during['p99_ms']}"),
        ("reloads (200 / called), seconds each", f"{reloads_ok} / {len(during['reloads'])}, "
         f"{[r['seconds'] for r in during['reloads']]}"),
        ("champions promoted before each reload", f"{len(during['promotions'])}, versions served: "
         f"{sorted({json.dumps(v, sort_keys=True) for v in expected})}"),
        ("p99 during / without (goal <= 1.5)", f"{ratio:.2f}"),
        ("  during reloads by versions served", "; ".join(
            f"{'first' if k == first else 'second'}: {v['requests']} req, p50 / p99 {v['p50_ms']} / {v['p99_ms']} ms"
            for k, v in during["by_versions"].items())),
        ("  p99 of the first versions during / without", f"{ratio_first:.2f} (like for like; second versions: "
         "reasons computed on demand)"),
        ("failed, 5xx, non-200 during reloads", f"{during['failed']}, {during['status_5xx']}, "
         f"{sum(v for k, v in during['status_counts'].items() if k != '200')}"),
        ("responses with inconsistent versions", f"{during['inconsistent_versions'] + base['inconsistent_versions']}"),
        ("server RSS start -> end MB (growth)", f"{rss_start:.0f} -> {rss_end:.0f} ({growth:+.1%})"),
        (f"overload {args.overload} clients: statuses", json.dumps(over["status_counts"])),
        ("overload: refused share, refusal p99 ms", f"{over['refused_share']}, {over['refused_p99_ms']}"),
        ("overload: served p99 ms, failed", f"{over['p99_ms']}, {over['failed']}"),
        ("RSS after overload MB; ready after", f"{rss_after_overload:.0f}; {alive_after}"),
        ("goals met", ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in goals.items())),
    ]
    print_table("crmscore serve: load with reloads, and overload (loopback, 1 worker)", rows)
    path = write_json("reload", {
        "customers": prep.customers, "connections": args.connections, "duration_s": args.duration,
        "reload_every_s": args.reload_every, "overload_clients": args.overload,
        "baseline": base, "during_reloads": during, "overload": over,
        "p99_ratio": round(ratio, 3), "p99_ratio_first_versions": round(ratio_first, 3),
        "reload_back_to_first_versions": back.status_code, "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
        "rss_growth": round(growth, 4), "rss_after_overload_mb": round(rss_after_overload, 1),
        "ready_after_overload": alive_after, "goals": goals,
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
