"""Overload through the real server: past its connection limit it refuses at once, then recovers.

``crmscore serve`` runs uvicorn with ``limit_concurrency`` = ``max_connections``: while that many
connections are open, a request gets 503 from uvicorn itself (and its connection is closed), so
the queue in front of the event loop is bounded by the connection limit instead of growing with
the load. Here: a real server on loopback with a limit of 8 connections and 48 clients at once,
each sending a bounded number of requests. No timing is asserted (benchmarks/reload.py measures
how fast refusals are); the test holds what a client sees: only 200 or 503, never a broken
connection or another status, and a server that is ready and answers normally afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CLIENTS = 48
REQUESTS_PER_CLIENT = 10
LIMIT = 8

SERVER = """
from pathlib import Path
from crmscore.serving.api.app import run_server
from crmscore.serving.settings import ServingSettings
settings = ServingSettings(home=Path({home!r}), snapshot_path=Path({snapshot!r}), keys_file=Path({keys!r}),
                           max_connections={limit}, load_retry_seconds=0)
run_server(settings, host="127.0.0.1", port={port}, workers=1)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def server(rel_env, tmp_path: Path):
    port = _free_port()
    settings = rel_env.settings
    code = SERVER.format(home=str(settings.home), snapshot=str(settings.snapshot_path),
                         keys=str(settings.keys_file), limit=LIMIT, port=port)
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): {(tmp_path / 'server.log').read_text()}")
        try:
            if _get(base + "/health/ready")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("the server did not become ready in 120 s")
    try:
        yield port, base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _client(port: int, paths: list[str], key: str) -> list[tuple[int, bytes]]:
    """Keep-alive HTTP/1.1 requests one after another, reconnecting when the server closes."""
    out: list[tuple[int, bytes]] = []
    reader = writer = None
    for path in paths:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert reader is not None
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n\r\n".encode())
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        out.append((status, body))
        if headers.get("connection", "").lower() == "close":
            writer.close()
            await writer.wait_closed()
            reader = writer = None
    if writer is not None:
        writer.close()
        await writer.wait_closed()
    return out


async def _burst(port: int, ids: list[str], key: str) -> list[tuple[int, bytes]]:
    tasks = [
        _client(port, [f"/v1/customers/{ids[(c * REQUESTS_PER_CLIENT + k) % len(ids)]}/scores?reasons=false"
                       for k in range(REQUESTS_PER_CLIENT)], key)
        for c in range(CLIENTS)
    ]
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    return [r for client in results for r in client]


def test_past_the_connection_limit_requests_are_refused_with_503_and_the_server_recovers(rel_env, server) -> None:
    port, base = server
    responses = asyncio.run(_burst(port, rel_env.ids, rel_env.reader))
    statuses = [status for status, _ in responses]
    assert len(responses) == CLIENTS * REQUESTS_PER_CLIENT, "every request got an answer"
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(503) > 0, f"{CLIENTS} connections against a limit of {LIMIT} were never refused"
    assert statuses.count(200) > 0
    for status, body in responses:
        if status == 200:
            assert json.loads(body)["customer_id"] in rel_env.ids
    # After the burst: ready, and a customer's scores answer normally.
    assert _get(base + "/health/ready")[0] == 200
    status, body = _get(f"{base}/v1/customers/{rel_env.ids[0]}/scores?reasons=false", {"X-API-Key": rel_env.reader})
    assert status == 200 and json.loads(body)["customer_id"] == rel_env.ids[0]
