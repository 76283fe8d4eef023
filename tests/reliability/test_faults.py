"""Issue 8, property 3: faults at start-up, on reload and inside a route.

* a loader that fails at start-up: ``/health/ready`` is 503 with the reason, every other route
  answers a documented non-500 (503 "not ready" or 401/403);
* a good bundle, then reloads that fail (truncated snapshot, missing snapshot, corrupt model
  artefact, unreachable registry): the old bundle keeps serving, readiness stays green and
  names the failure, the reload answers 503 with the reason;
* a truncated Parquet snapshot at start-up: not ready, with the reason;
* an internal fault inside a route: 500 with the request id in body and header and an ERROR log
  line carrying it; client mistakes of every kind are 4xx, never 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
import pytest

from crmscore.serving.registry import ServingBundle
from crmscore.serving.settings import ServingSettings

pytestmark = pytest.mark.anyio

ROUTES = [("GET", "/v1/customers/C1/scores"), ("POST", "/v1/scores"), ("GET", "/v1/portfolio/summary"),
          ("GET", "/v1/models"), ("POST", "/v1/admin/reload"), ("GET", "/metrics")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port of loopback


def ready_reason(detail: str) -> str:
    """The short reason inside a failed reload's detail (``reload failed: <reason>: <detail>; ...``)."""
    return detail.removeprefix("reload failed: ").split(";")[0].rsplit(": ", 1)[0]


def champion_booster_file(name: str) -> Path:
    """The booster text file of a registered model's champion, in the artefact store itself."""
    from mlflow import MlflowClient

    client = MlflowClient()
    version = client.get_model_version_by_alias(name, "champion").version
    uri = client.get_model_version_download_uri(name, version)
    path = Path(uri.removeprefix("file://")) / "artifacts" / "bundle" / "booster.txt"
    assert path.is_file(), path
    return path


def path_of(customer_id: str) -> str:
    return f"/v1/customers/{quote(customer_id, safe='')}/scores"


async def test_failed_start_up_is_not_ready_with_a_reason_and_no_500(api: Any, rel_env: Any) -> None:
    def broken(settings: ServingSettings) -> ServingBundle:
        raise OSError("registry host unreachable")

    async with api.running(rel_env.settings, broken, ready=False) as (_, client):
        body = await api.wait_not_ready_reason(client)
        assert body["status"] == "not_ready"
        assert body["reason"].endswith("unexpected error while loading")
        assert (await client.get("/health/live")).status_code == 200
        for key in (rel_env.reader, rel_env.admin):
            for method, url in ROUTES:
                r = await client.request(method, url, headers={"X-API-Key": key},
                                         json={"customers": [{"customer_id": "C1"}]} if method == "POST" else None)
                if url == "/metrics":  # the counters are meaningful before a bundle too
                    assert r.status_code == 200
                    continue
                assert r.status_code in {403, 503}, (method, url, r.status_code, r.text)
                assert r.status_code == 403 or r.json()["detail"].startswith(("not ready", "reload failed"))


async def test_truncated_snapshot_at_start_up_is_not_ready_with_the_reason(api: Any, rel_env: Any) -> None:
    settings = rel_env.settings_copy("truncated_start")
    truncate(settings.snapshot_path)
    async with api.running(settings, ready=False) as (_, client):
        body = await api.wait_not_ready_reason(client)
        assert body["reason"].endswith("the feature snapshot cannot be read")
        assert str(settings.snapshot_path.parent) not in body["reason"]  # open endpoint: no paths


async def test_failed_reloads_keep_the_old_bundle_serving(api: Any, rel_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = rel_env.settings_copy("reload_faults")
    uri = mlflow.get_tracking_uri()
    async with api.running(settings) as (app, client):
        reader, admin = {"X-API-Key": rel_env.reader}, {"X-API-Key": rel_env.admin}
        holder = app.state.service.holder
        good = (await client.get("/health/ready")).json()
        customer = rel_env.ids[7]
        expected = (await client.get(path_of(customer) + "?reasons=false", headers=reader)).json()

        async def assert_failed_reload_keeps_serving(reason: str) -> None:
            r = await client.post("/v1/admin/reload", headers=admin)
            assert r.status_code == 503, r.text
            assert r.json()["detail"].startswith(f"reload failed: {reason}"), r.json()
            reason = reason or ready_reason(r.json()["detail"])
            assert r.json()["detail"].endswith("keeps serving") and r.json()["request_id"]
            ready = await client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["bundle_id"] == good["bundle_id"]
            assert ready.json()["last_reload_error"] == reason
            again = await client.get(path_of(customer) + "?reasons=false", headers=reader)
            assert again.status_code == 200 and again.json() == expected

        truncate(settings.snapshot_path)  # a snapshot file cut short
        await assert_failed_reload_keeps_serving("the feature snapshot cannot be read")
        settings.snapshot_path.unlink()  # a missing snapshot
        await assert_failed_reload_keeps_serving("feature snapshot not found")

        holder.settings = rel_env.settings  # good files again; now the models fail

        # a corrupt model artefact: the champion's booster file in the artefact store, damaged
        # for the length of one reload (a reload is built in the loader process, which reads it)
        booster = champion_booster_file("crm-churn")
        intact = booster.read_bytes()
        try:
            booster.write_bytes(b"\x00 not a LightGBM model\n")
            await assert_failed_reload_keeps_serving("model crm-churn@champion could not be loaded")
        finally:
            booster.write_bytes(intact)

        # an unreachable registry: nothing listens on port 9 of loopback; no retries
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        holder.settings = rel_env.settings.model_copy(update={"tracking_uri": UNREACHABLE})
        try:
            await assert_failed_reload_keeps_serving("model crm-churn@champion could not be loaded")
        finally:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)

        holder.settings = rel_env.settings  # and a good reload still works afterwards
        r = await client.post("/v1/admin/reload", headers=admin)
        assert r.status_code == 200 and r.json()["bundle_id"] != good["bundle_id"]
        assert (await client.get("/health/ready")).json()["last_reload_error"] is None


async def test_a_dead_loader_process_fails_one_reload_and_is_replaced(api: Any, rel_env: Any) -> None:
    """Reloads are built in a child process: killed mid-build, that reload fails (503, the old
    bundle keeps serving); killed while idle, the next reload just starts a new one."""
    async with api.running(rel_env.settings) as (app, client):
        admin, reader = {"X-API-Key": rel_env.admin}, {"X-API-Key": rel_env.reader}
        holder = app.state.service.holder
        good = (await client.get("/health/ready")).json()
        expected = (await client.get(path_of(rel_env.ids[3]) + "?reasons=false", headers=reader)).json()
        r = await client.post("/v1/admin/reload", headers=admin)  # the child is up and has built one
        assert r.status_code == 200, r.text
        first_pid = holder.loader_process.pid
        assert first_pid is not None and first_pid != os.getpid()
        serving = r.json()["bundle_id"]

        reload = asyncio.create_task(client.post("/v1/admin/reload", headers=admin))
        while holder.loading_since is None:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)  # the request is in the child, which needs far longer to build
        os.kill(first_pid, signal.SIGKILL)
        r = await reload
        assert r.status_code == 503, r.text
        assert r.json()["detail"].startswith("reload failed: the bundle loader process stopped before the "
                                             "bundle was built: the bundle loader process "), r.json()
        assert "(exit code -9)" in r.json()["detail"] and r.json()["detail"].endswith("keeps serving")
        ready = (await client.get("/health/ready")).json()
        assert ready["bundle_id"] == serving and ready["last_reload_error"].startswith("the bundle loader process")
        again = await client.get(path_of(rel_env.ids[3]) + "?reasons=false", headers=reader)
        assert again.status_code == 200 and again.json() == expected

        r = await client.post("/v1/admin/reload", headers=admin)  # a new child
        assert r.status_code == 200, r.text
        second_pid = holder.loader_process.pid
        assert second_pid not in (None, first_pid)
        os.kill(second_pid, signal.SIGKILL)  # dead while idle: replaced before the next build
        for _ in range(500):
            if holder.loader_process._process.poll() is not None:
                break
            await asyncio.sleep(0.01)
        r = await client.post("/v1/admin/reload", headers=admin)
        assert r.status_code == 200, r.text
        assert holder.loader_process.pid not in (None, first_pid, second_pid)
        assert (await client.get("/health/ready")).json()["last_reload_error"] is None
        assert good["bundle_id"] != r.json()["bundle_id"]
    assert holder.loader_process.pid is None  # the app's shutdown stopped the child


async def test_unreachable_registry_is_reported_as_such(api: Any, rel_env: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    uri = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    settings = rel_env.settings.model_copy(update={"tracking_uri": UNREACHABLE})
    try:
        async with api.running(settings, ready=False) as (_, client):
            body = await api.wait_not_ready_reason(client)
    finally:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    assert "has no version with alias" not in body["reason"], body["reason"]
    assert body["reason"].endswith("model crm-churn@champion could not be loaded"), body["reason"]


async def test_internal_fault_is_a_500_with_a_logged_request_id(api: Any, rel_env: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    # a bundle whose feature matrix lost its columns: computing reasons on demand fails inside the route
    broken = dataclasses.replace(rel_env.bundle, X=rel_env.bundle.X[:, :2].copy())
    async with api.running(rel_env.settings, api.serve(broken), ready=False) as (_, client):
        caplog.set_level(logging.ERROR)
        # readiness tells the truth: loaded, but it cannot serve
        body = await api.wait_not_ready_reason(client, "self-check")
        assert body["bundle_id"] == broken.bundle_id and rel_env.ids[5] not in json.dumps(body)
        r = await client.get(path_of(rel_env.ids[5]), headers={"X-API-Key": rel_env.reader,
                                                                "X-Request-ID": "fault-check-1"})
        assert r.status_code == 500, r.text
        assert r.headers["x-request-id"] == "fault-check-1" and r.json()["request_id"] == "fault-check-1"
        assert r.json()["detail"].startswith("internal server error")
        assert rel_env.ids[5] not in r.text
        errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert any("fault-check-1" in rec.getMessage() for rec in errors), [rec.getMessage() for rec in errors]


async def test_client_mistakes_are_4xx_never_500(api: Any, rel_env: Any) -> None:
    reader = {"X-API-Key": rel_env.reader}
    settings = rel_env.settings.model_copy(update={"max_body_bytes": 64 * 1024})
    name = next(n for n in rel_env.bundle.models.feature_names if n not in rel_env.bundle.models.categorical_levels)
    category = next(iter(rel_env.bundle.models.categorical_levels), None)
    bodies: list[Any] = [
        b"{not json", b"", b"[]", b"null", b'{"customers": []}', b'{"customers": "C1"}',
        {"customers": [{"customer_id": ""}]},
        {"customers": [{"customer_id": "x" * 257}]},
        {"customers": [{"customer_id": "C1", "unknown_field": 1}]},
        {"customers": [{"customer_id": "C1"}], "unknown_top": 1},
        {"customers": [{"customer_id": "C1", "features": {"no_such_feature": 1.0}}]},
        {"customers": [{"customer_id": "C1", "features": {name: "NaN"}}]},
        {"customers": [{"customer_id": "C1", "features": {name: "1e999"}}]},
        {"customers": [{"customer_id": "C1", "features": {name: [1, 2]}}]},
        {"customers": [{"customer_id": "C1", "features": {name: {"a": 1}}}]},
        {"customers": [{"customer_id": "C1", "features": {name: True}}]},
        {"customers": [{"customer_id": f"C{i}"} for i in range(1001)]},
        {"customers": [{"customer_id": "C1"}], "reasons": "maybe"},
        b'{"customers": [{"customer_id": "C1", "features": {"' + name.encode() + b'": NaN}}]}',
        b'{"customers": [{"customer_id": "C1", "features": {"' + name.encode() + b'": Infinity}}]}',
        b'{"customers": [{"customer_id": "C1", "features": {"' + name.encode() + b'": 1e400}}]}',
        b'{"customers": [' + b",".join([b'{"customer_id": "C1"}'] * 5000) + b"]}",  # over the size limit
    ]
    if category:
        bodies.append({"customers": [{"customer_id": "C1", "features": {category: 3.5}}]})
    async with api.running(settings, api.serve(rel_env.bundle)) as (_, client):
        for body in bodies:
            kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = await client.post("/v1/scores", headers=reader | {"Content-Type": "application/json"}, **kwargs)
            assert 400 <= r.status_code < 500, (str(body)[:80], r.status_code, r.text[:300])
        for odd in ["%00", "..%2F..%2Fetc", "x" * 257, "%FF%FE", "a%0Ab"]:
            r = await client.get(f"/v1/customers/{odd}/scores", headers=reader)
            assert 400 <= r.status_code < 500, (odd, r.status_code, r.text[:200])
        for query in ["reasons=maybe", "reasons=", "reasons=1&reasons=0"]:
            r = await client.get(path_of(rel_env.ids[1]) + "?" + query, headers=reader)
            assert r.status_code < 500, (query, r.status_code)
        for key in ["", "crm_" + "A" * 43, "x" * 5000, "\u00e9"]:
            headers = {"X-API-Key": key.encode("utf-8")}
            r = await client.get("/v1/models", headers=headers)
            assert r.status_code in {401, 431}, (key[:10], r.status_code)
