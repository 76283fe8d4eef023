"""The scoring API through the real ASGI app (middleware, routing, handlers): every endpoint and
status code, auth scopes, limits, odd ids, parity with batch scoring, reloads under load.

The environment: the session's trained champions, the fixture snapshot with a few customer
ids renamed to odd ones (slashes, unicode, spaces), a real batch scoring of it (``score_base``)
with reason codes patched in for a subset of customers, and a reader and an admin key. Most
tests serve a bundle loaded once (a loader returning it); the reload tests use the real loader.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import shutil
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crmscore.bundle import ModelKind
from crmscore.features.io import write_snapshot
from crmscore.serving.api.schemas import CustomerScores, ModelsResponse, ScoresResponse
from crmscore.serving.policy import load_policy
from crmscore.serving.portfolio import assign_portfolio
from crmscore.serving.registry import ServingBundle, load_serving_bundle
from crmscore.serving.scoring import compute_reasons, score_matrix
from crmscore.serving.security import create_key
from crmscore.serving.settings import ServingSettings

pytestmark = pytest.mark.anyio

AS_OF = "2025-01-01"
ODD_IDS = ["a/b", "Ünïcödé-客户 7", "x%2Fy", "with space", "q?x=1#frag"]
CACHED_ROWS = list(range(0, 40, 2))  # customers whose reasons the batch file holds
CANARY = "CANARY-7731"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Env:
    folder: Path
    settings: ServingSettings
    reader: str
    admin: str
    snapshot: pd.DataFrame
    bundle: ServingBundle
    cached_ids: frozenset[str]

    @property
    def ids(self) -> list[str]:
        return self.snapshot["customer_id"].astype(str).tolist()


@pytest.fixture(scope="module")
def env(trained_models, tmp_path_factory: pytest.TempPathFactory) -> Env:
    from crmscore.serving.batch.job import score_base

    folder = tmp_path_factory.mktemp("api")
    snapshot = pq.read_table(trained_models.snapshot_path).to_pandas()
    ids = snapshot["customer_id"].astype(str).to_numpy(dtype=object)
    ids[: len(ODD_IDS)] = ODD_IDS
    snapshot["customer_id"] = pd.array(ids, dtype="string")
    snapshot_path = folder / "snapshot.parquet"
    write_snapshot(snapshot, AS_OF, snapshot_path)
    keys_file = folder / "keys.json"
    reader, admin = create_key("reader", keys_file), create_key("admin", keys_file)
    base = ServingSettings(home=trained_models.home, snapshot_path=snapshot_path, keys_file=keys_file)
    first = load_serving_bundle(base)

    scores_path = folder / "scores.parquet"
    score_base(snapshot_path, scores_path, models=first.models, reasons="none")
    table = pq.read_table(scores_path)
    row_of = {cid: i for i, cid in enumerate(table["customer_id"].to_pylist())}
    picked = [row_of[str(ids[i])] for i in CACHED_ROWS]
    reasons = compute_reasons(first.models, first.X[CACHED_ROWS], num_threads=1)
    for kind, rows in reasons.items():
        column = [None] * table.num_rows
        for file_row, row in zip(picked, rows, strict=True):
            column[file_row] = json.dumps(row)
        index = table.column_names.index(f"reasons_{kind}")
        table = table.set_column(index, f"reasons_{kind}", pa.array(column, pa.string()))
    pq.write_table(table, scores_path)  # the schema metadata (cut-offs, policy) is kept

    settings = base.model_copy(update={"scores_path": scores_path})
    bundle = load_serving_bundle(settings)
    assert bundle.scores_file.customers_with_reasons == len(CACHED_ROWS)
    return Env(folder, settings, reader, admin, snapshot, bundle, frozenset(str(ids[i]) for i in CACHED_ROWS))


def path_of(customer_id: str) -> str:
    return f"/v1/customers/{quote(customer_id, safe='')}/scores"


def snapshot_features(env: Env, i: int) -> dict[str, Any]:
    """Customer ``i``'s snapshot features as JSON values (the inline form)."""
    row = env.snapshot.iloc[i]
    out: dict[str, Any] = {}
    for name in env.bundle.models.feature_names:
        value = row[name]
        if name in env.bundle.models.categorical_levels:
            out[name] = None if pd.isna(value) else str(value)
        else:
            out[name] = None if pd.isna(value) else float(value)
    return out


# --- health and readiness --------------------------------------------------------------------------


async def test_health_is_open_and_ready_waits_for_a_complete_bundle(api: Any, env: Env) -> None:
    release = threading.Event()

    def slow(settings: ServingSettings) -> ServingBundle:
        release.wait(10)
        return env.bundle

    async with api.running(env.settings, slow, ready=False) as (_, client):
        assert (await client.get("/health/live")).json() == {"status": "alive"}
        r = await client.get("/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "not_ready"
        assert r.json()["reason"].startswith("loading the first bundle")
        r = await client.get(path_of(env.ids[10]), headers={"X-API-Key": env.reader})
        assert r.status_code == 503 and r.json()["detail"].startswith("not ready: loading")
        assert r.headers["retry-after"] == "5"
        release.set()
        await api.wait_ready(client)
        body = (await client.get("/health/ready")).json()
        assert body["status"] == "ready" and body["model_versions"] == env.bundle.versions
        assert body["snapshot_as_of"] == AS_OF


async def test_not_ready_says_why_when_the_first_load_fails(api: Any, env: Env) -> None:
    settings = env.settings.model_copy(update={"snapshot_path": env.folder / "missing.parquet",
                                               "load_retry_seconds": 0})
    async with api.running(settings, ready=False) as (_, client):
        for _ in range(200):
            body = (await client.get("/health/ready")).json()
            if "failed" in body["reason"]:
                break
            await asyncio.sleep(0.02)
        assert body["status"] == "not_ready"
        assert body["reason"].endswith("feature snapshot not found")
        assert str(env.folder) not in body["reason"]  # open endpoint: no paths


# --- one customer -------------------------------------------------------------------------------


async def test_customer_scores_payload(api: Any, env: Env) -> None:
    bundle = env.bundle
    no_credit = next(i for i in range(len(env.ids)) if bundle.scored.record(i)["default_prob"] is None)
    with_credit = next(i for i in range(len(env.ids)) if bundle.scored.record(i)["default_prob"] is not None)
    rows = sorted({0, 1, 2, 3, 4, 6, 11, 13, no_credit, with_credit})
    async with api.running(env.settings, api.serve(bundle)) as (_, client):
        for i in rows:
            cid = env.ids[i]
            r = await client.get(path_of(cid), headers={"X-API-Key": env.reader})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/json"
            payload = CustomerScores.model_validate_json(r.content)  # the documented schema
            record = bundle.scored.record(i)
            assert payload.customer_id == cid
            assert str(payload.snapshot_as_of) == AS_OF and payload.horizon_days == bundle.horizon_days
            assert payload.model_versions == bundle.versions and payload.policy_version == "default@1"
            assert payload.scores.churn_prob == record["churn_prob"]
            assert payload.scores.propensity == {c: record[f"propensity_{c}"] for c in bundle.categories}
            assert payload.value.future_potential == record["future_potential"]
            assert payload.portfolio.quadrant == record["quadrant"]
            assert [a.model_dump() for a in payload.portfolio.actions] == json.loads(record["actions"])
            assert set(payload.reasons) == {k.value for k in ModelKind}
            if cid in env.cached_ids:
                assert payload.reasons_source == "batch"
            else:
                assert payload.reasons_source == "computed"
                expected = compute_reasons(bundle.models, bundle.X[i:i + 1], num_threads=1)
                assert {k: [x.model_dump() for x in v] for k, v in payload.reasons.items()} == {
                    k: v[0] for k, v in expected.items()}
            if i == no_credit:
                assert payload.scores.default_prob is None and payload.scores.credit_grade is None
                assert "credit" in payload.missing_components and payload.reasons["credit_risk"] == []
            if i == with_credit:
                assert 0 <= payload.scores.default_prob <= 1 and payload.scores.credit_grade is not None
        r = await client.get(path_of(env.ids[7]) + "?reasons=false", headers={"X-API-Key": env.reader})
        assert r.json()["reasons"] is None and r.json()["reasons_source"] == "omitted"


async def test_every_snapshot_customer_matches_the_documented_schema(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        for cid in env.ids[:400]:
            r = await client.get(path_of(cid) + "?reasons=false", headers={"X-API-Key": env.reader})
            assert r.status_code == 200
            CustomerScores.model_validate_json(r.content)


async def test_unknown_customer_is_404_without_echo(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        r = await client.get(path_of(CANARY), headers={"X-API-Key": env.reader})
        assert r.status_code == 404
        assert r.json()["detail"] == f"unknown customer: no customer with this id in the snapshot as of {AS_OF}"
        assert CANARY not in r.text and r.json()["request_id"] == r.headers["x-request-id"]


async def test_ids_with_odd_characters(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        for i, cid in enumerate(ODD_IDS):
            r = await client.get(path_of(cid), headers={"X-API-Key": env.reader})
            assert r.status_code == 200, (cid, r.text)
            assert r.json()["customer_id"] == cid
            assert r.json()["scores"]["churn_prob"] == env.bundle.scored.record(i)["churn_prob"]
        # an unencoded slash reaches the same customer
        assert (await client.get("/v1/customers/a/b/scores", headers={"X-API-Key": env.reader})).status_code == 200
        r = await client.get(path_of("x" * 257), headers={"X-API-Key": env.reader})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "customer_id"]
        r = await client.get("/v1/customers//scores", headers={"X-API-Key": env.reader})
        assert r.status_code == 422
        r = await client.post("/v1/scores", headers={"X-API-Key": env.reader},
                              json={"customers": [{"customer_id": cid} for cid in ODD_IDS]})
        assert [item["customer_id"] for item in r.json()["results"]] == ODD_IDS
        assert r.json()["n_ok"] == len(ODD_IDS)


async def test_parity_with_batch_scoring(api: Any, env: Env) -> None:
    """API numbers (snapshot look-up, and inline features) = score_matrix over the whole
    snapshot + assign_portfolio, as batch scoring computes them."""
    bundle = env.bundle
    X = bundle.models.encode(env.snapshot)
    scores = score_matrix(bundle.models, X)
    frame = pd.DataFrame({"customer_id": env.ids, **scores})
    batch = assign_portfolio(frame, load_policy(), bundle.cutoffs)
    rows = [0, 1, 2, 3, 4, 17, 99, 250, 1234, len(env.ids) - 1]
    async with api.running(env.settings, api.serve(bundle)) as (_, client):
        inline = await client.post("/v1/scores", headers={"X-API-Key": env.reader}, json={
            "customers": [{"customer_id": f"inline-{i}", "features": snapshot_features(env, i)} for i in rows],
            "reasons": False})
        assert inline.status_code == 200, inline.text
        inline_results = [item["result"] for item in inline.json()["results"]]
        for i, from_features in zip(rows, inline_results, strict=True):
            expected = batch.iloc[i]
            by_id = (await client.get(path_of(env.ids[i]), headers={"X-API-Key": env.reader})).json()
            for got in (by_id, from_features):
                numbers = {**got["scores"], **{f"propensity_{c}": p for c, p in got["scores"]["propensity"].items()},
                           **got["value"], "top_propensity": got["portfolio"]["top_propensity"]}
                for column in ("churn_prob", "default_prob", "credit_points", "expected_margin", "clv",
                               "current_value", "margin_365d", "cost_to_serve_365d", "outstanding_balance",
                               "credit_exposure", "expected_credit_loss", "future_potential", "top_propensity",
                               *[f"propensity_{c}" for c in bundle.categories]):
                    want = expected[column]
                    if pd.isna(want):
                        assert numbers[column] is None, column
                    else:
                        assert numbers[column] == pytest.approx(float(want), rel=1e-9, abs=1e-12), column
                assert got["scores"]["credit_grade"] == (None if pd.isna(expected["credit_grade"])
                                                         else expected["credit_grade"])
                assert got["portfolio"]["quadrant"] == expected["quadrant"]
                assert got["portfolio"]["actions"] == json.loads(expected["actions"])
                assert got["missing_components"] == [m for m in expected["missing_components"].split(";") if m]


# --- batch of customers ---------------------------------------------------------------------------


async def test_batch_scores_by_id_inline_and_unknown(api: Any, env: Env) -> None:
    known, cached = env.ids[9], env.ids[CACHED_ROWS[3]]
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        r = await client.post("/v1/scores", headers={"X-API-Key": env.reader}, json={"customers": [
            {"customer_id": cached},
            {"customer_id": "nobody-" + CANARY},
            {"customer_id": known, "features": {"tenure_days": 10, "segment": "B2B"}},
            {"customer_id": "brand-new", "features": {"segment": CANARY, "tenure_days": 3}},
            {"customer_id": known},
        ]})
        assert r.status_code == 200, r.text
        body = ScoresResponse.model_validate_json(r.content)
        assert [i.status for i in body.results] == ["ok", "not_found", "ok", "ok", "ok"]
        assert (body.n_ok, body.n_not_found) == (4, 1)
        assert body.model_versions == env.bundle.versions and str(body.snapshot_as_of) == AS_OF
        first, missing, changed, new, same = body.results
        assert first.result.reasons_source == "batch" and missing.result is None
        assert missing.error == "unknown customer: not in the snapshot; send its features inline to score it"
        assert changed.warnings == [f"features of the snapshot as of {AS_OF}, 2 replaced by the values sent"]
        assert changed.result.reasons_source == "computed"
        assert changed.result.scores != same.result.scores  # the features sent changed the scores
        assert new.warnings[0].startswith("customer not in the snapshot: ")
        assert new.warnings[1] == "segment: unknown category level, treated as missing"
        assert CANARY not in json.dumps([w for item in body.results for w in item.warnings])
        assert same.result.reasons_source == "computed" and same.result.customer_id == known


async def test_batch_reasons_equal_single_customer_reasons(api: Any, env: Env) -> None:
    """Reasons computed for many customers in one call (one TreeSHAP pass) = one at a time."""
    ids = [cid for cid in env.ids[40:80] if cid not in env.cached_ids][:6] + [env.ids[CACHED_ROWS[1]]]
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        reader = {"X-API-Key": env.reader}
        r = await client.post("/v1/scores", headers=reader, json={"customers": [{"customer_id": c} for c in ids]})
        for cid, item in zip(ids, r.json()["results"], strict=True):
            single = (await client.get(path_of(cid), headers=reader)).json()
            assert item["result"]["reasons"] == single["reasons"]
            assert item["result"]["reasons_source"] == single["reasons_source"]


async def test_batch_size_limits(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        r = await client.post("/v1/scores", headers={"X-API-Key": env.reader},
                              json={"customers": [{"customer_id": env.ids[0]}] * 1001})
        assert r.status_code == 422
        assert r.json()["detail"] == [{"loc": ["body", "customers"], "type": "too_long",
                                       "msg": "List should have at most 1000 items after validation, not 1001"}]
        r = await client.post("/v1/scores", headers={"X-API-Key": env.reader},
                              json={"customers": [{"customer_id": cid} for cid in env.ids[:1000]], "reasons": False})
        assert r.status_code == 200 and r.json()["n_ok"] == 1000
        r = await client.post("/v1/scores", headers={"X-API-Key": env.reader}, json={"customers": []})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_short"
    small = env.settings.model_copy(update={"max_batch": 5})
    async with api.running(small, api.serve(env.bundle)) as (_, client):
        r = await client.post("/v1/scores", headers={"X-API-Key": env.reader},
                              json={"customers": [{"customer_id": env.ids[0]}] * 6})
        assert r.status_code == 422
        assert r.json()["detail"][0]["msg"] == "at most 5 customers per call; got 6: split the batch"


async def test_invalid_inline_features_name_the_field_and_echo_nothing(api: Any, env: Env) -> None:
    raw = ('{"customers": [{"customer_id": "c1", "features": {"tenure_days": NaN, "margin_30d": Infinity, '
           '"revenue_30d": 1e999, "revenue_90d": 1' + "0" * 400 + ', "revenue_365d": 7.31e15, '
           '"order_count_30d": true, "margin_90d": "' + CANARY + '", "segment": 7731, '
           '"no_such_feature": "' + CANARY + '"}}]}')
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        r = await client.post("/v1/scores", content=raw, headers={"X-API-Key": env.reader,
                                                                   "content-type": "application/json"})
        assert r.status_code == 422, r.text
        located = {tuple(e["loc"][3:]): e["type"] for e in r.json()["detail"]}
        assert all(e["loc"][:3] == ["body", "customers", 0] for e in r.json()["detail"])
        assert located == {
            ("features", "tenure_days"): "finite_number", ("features", "margin_30d"): "finite_number",
            ("features", "revenue_30d"): "finite_number", ("features", "revenue_90d"): "finite_number",
            ("features", "revenue_365d"): "less_than_equal", ("features", "order_count_30d"): "float_type",
            ("features", "margin_90d"): "float_type", ("features", "segment"): "string_type",
            ("features", "no_such_feature"): "extra_forbidden"}
        assert CANARY not in r.text and "7731" not in r.text and "7.31" not in r.text
        for body in ({"customers": [{"customer_id": "c1"}], "extra": 1},
                     {"customers": [{"customer_id": "c1", "feature": {}}]},
                     {"customers": [{"customer_id": 5}]},
                     {"customers": [{"customer_id": "c1", "features": {"tenure_days": [1, 2]}}]}):
            r = await client.post("/v1/scores", json=body, headers={"X-API-Key": env.reader})
            assert r.status_code == 422, body
            assert all("input" not in e and "ctx" not in e for e in r.json()["detail"])
        r = await client.post("/v1/scores", content=b'{"customers": [', headers={
            "X-API-Key": env.reader, "content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


async def test_body_size_limit_through_the_middleware_stack(api: Any, env: Env) -> None:
    settings = env.settings.model_copy(update={"max_body_bytes": 2048})
    big = json.dumps({"customers": [{"customer_id": f"c{i:05d}"} for i in range(200)]}).encode()
    assert len(big) > 2048

    async def chunks() -> AsyncIterator[bytes]:
        for k in range(0, len(big), 500):
            yield big[k:k + 500]

    async with api.running(settings, api.serve(env.bundle)) as (_, client):
        headers = {"X-API-Key": env.reader, "content-type": "application/json"}
        r = await client.post("/v1/scores", content=big, headers=headers)  # declared Content-Length
        assert r.status_code == 413
        assert r.json()["detail"] == "request body too large: the limit is 2048 bytes"
        r = await client.post("/v1/scores", content=chunks(), headers=headers)  # chunked, no length
        assert r.status_code == 413
        r = await client.post("/v1/scores", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413  # before routing and auth: nothing is read past the limit
        small = json.dumps({"customers": [{"customer_id": env.ids[5]}]}).encode()
        r = await client.post("/v1/scores", content=small, headers=headers)
        assert r.status_code == 200


# --- auth -----------------------------------------------------------------------------------------


async def test_auth_scopes(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        r = await client.get(path_of(env.ids[3]))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "APIKey"
        assert r.json()["detail"] == "missing API key: send it in the X-API-Key header"
        r = await client.get(path_of(env.ids[3]), headers={"X-API-Key": env.reader + "x"})
        assert r.status_code == 401 and r.json()["detail"] == "unknown API key"
        assert (await client.get(path_of(env.ids[3]), headers={"X-API-Key": env.admin})).status_code == 200
        r = await client.post("/v1/admin/reload", headers={"X-API-Key": env.reader})
        assert r.status_code == 403
        assert r.json()["detail"] == "this key has scope reader; /v1/admin/* needs scope admin"
        assert (await client.post("/v1/admin/reload")).status_code == 401


async def test_every_non_health_route_requires_a_key(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (app, client):
        schema = (await client.get("/openapi.json")).json()
        scheme = next(iter(schema["components"]["securitySchemes"]))
        assert schema["components"]["securitySchemes"][scheme] == {
            "type": "apiKey", "in": "header", "name": "X-API-Key",
            "description": "An API key made by `crmscore keys create --scope reader|admin`."}
        operations = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]
        assert {p for p, _, _ in operations} == {
            "/v1/customers/{customer_id}/scores", "/v1/scores", "/v1/portfolio/summary", "/v1/models",
            "/v1/admin/reload", "/health/live", "/health/ready", "/metrics"}
        for path, method, op in operations:
            if path.startswith("/health/"):
                assert "security" not in op
                assert (await client.request(method, path)).status_code == 200
                continue
            assert op.get("security") == [{scheme: []}], (method, path)
            url = path.replace("{customer_id}", env.ids[8])
            r = await client.request(method, url, json={"customers": [{"customer_id": env.ids[8]}]})
            assert r.status_code == 401, (method, path)
            assert "200" in op["responses"] and "401" in op["responses"], (method, path)


# --- models, portfolio, metrics ----------------------------------------------------------------


async def test_models_endpoint(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        r = await client.get("/v1/models", headers={"X-API-Key": env.reader})
        body = ModelsResponse.model_validate_json(r.content)
        assert [m.kind for m in body.models] == [k.value for k in ModelKind]
        assert {m.kind: m.version for m in body.models} == env.bundle.versions
        churn = body.models[0]
        assert churn.registered_name == "crm-churn" and churn.alias == "champion" and "auc" in churn.metrics
        assert body.models[1].targets == env.bundle.categories
        assert body.snapshot.customers == len(env.ids) and str(body.snapshot.as_of) == AS_OF
        assert body.cutoffs.source == "scores_file" and body.cutoffs.policy_version == "default@1"
        assert body.scores_file.customers_with_reasons == len(CACHED_ROWS)
        features = {f.name: f for f in body.features}
        assert features["segment"].type == "category" and features["segment"].levels == ["B2B", "B2C"]
        assert features["tenure_days"].type == "number" and body.last_reload_error is None


async def test_portfolio_summary(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        r = await client.get("/v1/portfolio/summary", headers={"X-API-Key": env.reader})
        body = r.json()
        assert r.status_code == 200 and body["n_customers"] == len(env.ids)
        assert set(body["quadrants"]) == {"invest", "nurture", "re-engineer", "sack"}
        assert body["batch"] == {"as_of": AS_OF, "model_versions": env.bundle.versions,
                                 "matches_loaded_bundle": True}
    no_batch = dataclasses.replace(env.bundle, summary=None,
                                   scores_file=dataclasses.replace(env.bundle.scores_file, status="not_configured"))
    async with api.running(env.settings, api.serve(no_batch)) as (_, client):
        r = await client.get("/v1/portfolio/summary", headers={"X-API-Key": env.reader})
        assert r.status_code == 404 and r.json()["detail"].startswith("no batch scoring configured")


async def test_metrics(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        await client.get(path_of(ODD_IDS[1]), headers={"X-API-Key": env.reader})
        await client.get(path_of("nobody"), headers={"X-API-Key": env.reader})
        await client.get("/no/such/route")
        assert (await client.get("/metrics")).status_code == 401
        r = await client.get("/metrics", headers={"X-API-Key": env.reader})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        route = 'route="/v1/customers/{customer_id}/scores"'
        assert f'crmscore_http_requests_total{{method="GET",{route},status="200"}} 1.0' in text
        assert f'crmscore_http_requests_total{{method="GET",{route},status="404"}} 1.0' in text
        assert 'route="<unmatched>",status="404"' in text
        assert f'crmscore_http_request_duration_seconds_bucket{{le="0.01",method="GET",{route},status="200"}}' in text
        assert "nobody" not in text and "Ünïcödé" not in text and "/no/such/route" not in text
        version = env.bundle.versions["churn"]
        assert f'crmscore_model_version_info{{kind="churn",registered_name="crm-churn",version="{version}"}} 1.0' in text
        assert "crmscore_bundle_loaded 1.0" in text and f"crmscore_snapshot_customers {float(len(env.ids))}" in text
    open_metrics = env.settings.model_copy(update={"metrics_require_key": False})
    async with api.running(open_metrics, api.serve(env.bundle)) as (_, client):
        assert (await client.get("/metrics")).status_code == 200


# --- reloads ------------------------------------------------------------------------------------


def copy_settings(env: Env, name: str) -> ServingSettings:
    """Settings over a private copy of the snapshot, which a test may delete."""
    folder = env.folder / name
    folder.mkdir()
    shutil.copy(env.settings.snapshot_path, folder / "snapshot.parquet")
    return env.settings.model_copy(update={"snapshot_path": folder / "snapshot.parquet"})


async def test_reload_swaps_and_a_failed_reload_keeps_the_old_bundle(api: Any, env: Env) -> None:
    settings = copy_settings(env, "reload")
    admin = {"X-API-Key": env.admin}
    async with api.running(settings) as (_, client):
        before = (await client.get("/health/ready")).json()["bundle_id"]
        r = await client.post("/v1/admin/reload", headers=admin)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "reloaded" and body["bundle_id"] != before
        assert body["model_versions"] == body["previous_model_versions"] == env.bundle.versions
        assert body["customers"] == len(env.ids) and body["snapshot_as_of"] == AS_OF

        settings.snapshot_path.unlink()
        r = await client.post("/v1/admin/reload", headers=admin)
        assert r.status_code == 503
        assert r.json()["detail"].startswith("reload failed: feature snapshot not found: no file or folder at ")
        assert f"bundle {body['bundle_id']} (model versions churn=" in r.json()["detail"]
        assert r.json()["detail"].endswith("keeps serving")
        assert (await client.get(path_of(env.ids[2]), headers={"X-API-Key": env.reader})).status_code == 200
        ready = (await client.get("/health/ready")).json()
        assert ready["bundle_id"] == body["bundle_id"] and ready["last_reload_error"] == "feature snapshot not found"
        models = (await client.get("/v1/models", headers={"X-API-Key": env.reader})).json()
        assert models["last_reload_error"] == "feature snapshot not found"


async def test_reload_reads_the_batch_scoring_put_in_place_since(api: Any, env: Env) -> None:
    """The nightly flow: batch scoring writes the file at ``scores_path`` (renamed into place),
    then an admin reloads: the new bundle serves that file's reasons, cut-offs and summary."""
    settings = copy_settings(env, "nightly").model_copy(
        update={"scores_path": env.folder / "nightly" / "scores.parquet"})
    cached = sorted(env.cached_ids)[0]
    reader, admin = {"X-API-Key": env.reader}, {"X-API-Key": env.admin}
    async with api.running(settings) as (_, client):
        before = (await client.get("/v1/models", headers=reader)).json()["scores_file"]
        assert before["status"] == "missing"
        assert (await client.get(path_of(cached), headers=reader)).json()["reasons_source"] == "computed"
        assert (await client.get("/v1/portfolio/summary", headers=reader)).status_code == 404

        tmp = settings.scores_path.with_name(".scores.parquet.tmp")
        shutil.copyfile(env.settings.scores_path, tmp)
        tmp.replace(settings.scores_path)  # os.replace: as `crmscore score` puts its output in place
        r = await client.post("/v1/admin/reload", headers=admin)
        assert r.status_code == 200, r.text

        after = (await client.get("/v1/models", headers=reader)).json()
        assert after["scores_file"]["status"] == "loaded"
        assert after["scores_file"]["customers_with_reasons"] == len(CACHED_ROWS)
        assert after["cutoffs"]["source"] == "scores_file"
        body = (await client.get(path_of(cached), headers=reader)).json()
        assert body["reasons_source"] == "batch"
        summary = (await client.get("/v1/portfolio/summary", headers=reader)).json()
        assert summary["batch"]["matches_loaded_bundle"] is True


async def test_reload_conflict_is_409(api: Any, env: Env) -> None:
    release = threading.Event()
    calls: list[int] = []

    def loader(settings: ServingSettings) -> ServingBundle:
        calls.append(1)
        if len(calls) > 1:
            release.wait(10)
        return env.bundle

    async with api.running(env.settings, loader) as (_, client):
        admin = {"X-API-Key": env.admin}
        first = asyncio.create_task(client.post("/v1/admin/reload", headers=admin))
        for _ in range(100):
            if len(calls) > 1:
                break
            await asyncio.sleep(0.01)
        r = await client.post("/v1/admin/reload", headers=admin)
        assert r.status_code == 409 and r.json()["detail"].startswith("a reload is already running")
        release.set()
        assert (await first).status_code == 200


async def test_reload_under_concurrent_requests(api: Any, env: Env) -> None:
    """Many requests in flight (reasons computed in threads) while the bundle is swapped back
    and forth: no failed request, and each response comes from one bundle."""
    relabelled = dataclasses.replace(
        env.bundle, bundle_id="relabelled",
        models=dataclasses.replace(env.bundle.models, versions={k: "v2" for k in env.bundle.models.versions}))
    flip = [0]

    def loader(settings: ServingSettings) -> ServingBundle:
        flip[0] += 1
        return env.bundle if flip[0] % 2 else relabelled

    uncached = [cid for cid in env.ids[:120] if cid not in env.cached_ids]
    settings = env.settings.model_copy(update={"max_in_flight": 1000})
    async with api.running(settings, loader) as (_, client):
        reader = {"X-API-Key": env.reader}

        async def one(cid: str, delay: float) -> httpx.Response:
            await asyncio.sleep(delay)  # staggered: requests start before, during and after swaps
            if len(cid) % 3 == 0:
                return await client.post("/v1/scores", headers=reader, json={"customers": [{"customer_id": cid}]})
            return await client.get(path_of(cid), headers=reader)

        async def reloads() -> list[int]:
            codes = []
            for _ in range(6):
                await asyncio.sleep(0.03)
                codes.append((await client.post("/v1/admin/reload", headers={"X-API-Key": env.admin})).status_code)
            return codes

        results = await asyncio.gather(reloads(), *(one(cid, k * 0.002) for k, cid in enumerate(uncached * 2)))
        codes, responses = results[0], results[1:]
        assert codes == [200] * 6, [r.text for r in responses if r.status_code != 200][:2]
        assert [r.status_code for r in responses] == [200] * len(responses)
        seen = set()
        for r in responses:
            body = r.json()
            versions = body["results"][0]["result"]["model_versions"] if "results" in body else body["model_versions"]
            assert len(set(versions.values())) == 1, versions  # all "1" or all "v2": one bundle
            seen.add(next(iter(versions.values())))
        assert seen == {"v2", env.bundle.versions["churn"]}  # requests were served on both sides of a swap


async def test_reload_with_the_real_loader_under_requests(api: Any, env: Env) -> None:
    async with api.running(env.settings) as (_, client):
        reader = {"X-API-Key": env.reader}

        async def requests() -> list[int]:
            out = []
            for k in range(150):
                r = await client.get(path_of(env.ids[k]) + "?reasons=false", headers=reader)
                out.append(r.status_code)
                await asyncio.sleep(0)
            return out

        async def reload() -> int:
            return (await client.post("/v1/admin/reload", headers={"X-API-Key": env.admin})).status_code

        results = await asyncio.gather(requests(), requests(), reload())
        assert results[2] == 200
        assert results[0] == results[1] == [200] * 150


# --- overload, errors, logs ------------------------------------------------------------------------


async def test_overload_is_shed_with_503(api: Any, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, entered = threading.Event(), threading.Event()
    real = ServingBundle.compute_reasons

    def blocking(self: ServingBundle, X: np.ndarray, kinds: Any = None) -> Any:
        entered.set()
        gate.wait(10)
        return real(self, X, kinds)

    monkeypatch.setattr(ServingBundle, "compute_reasons", blocking)
    settings = env.settings.model_copy(update={"max_in_flight": 1})
    uncached = next(cid for cid in env.ids[5:] if cid not in env.cached_ids)
    async with api.running(settings, api.serve(env.bundle)) as (_, client):
        slow = asyncio.create_task(client.get(path_of(uncached), headers={"X-API-Key": env.reader}))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        r = await client.get(path_of(env.ids[6]), headers={"X-API-Key": env.reader})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["detail"] == "server overloaded: 1 requests in flight (limit 1); retry shortly"
        assert (await client.get("/health/live")).status_code == 200  # never shed
        assert (await client.get("/health/ready")).status_code == 200
        gate.set()
        assert (await slow).status_code == 200


async def test_requests_that_waited_too_long_for_the_loop_are_shed(api: Any, env: Env,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`crmscore serve` watches how far behind the event loop runs (QueueDelayMonitor): past
    max_queue_delay_ms a request gets 503 at once; probes are never shed; on time, served."""
    from crmscore.serving.api.middleware import QueueDelayMonitor

    behind = {"s": 0.0}
    monkeypatch.setattr(QueueDelayMonitor, "delay", lambda self: behind["s"])
    settings = env.settings.model_copy(update={"max_queue_delay_ms": 100})
    async with api.running(settings, api.serve(env.bundle), watch_queue_delay=True) as (_, client):
        reader = {"X-API-Key": env.reader}
        behind["s"] = 0.35
        r = await client.get(path_of(env.ids[6]), headers=reader)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["detail"] == "server overloaded: requests wait 350 ms to start (limit 100 ms); retry shortly"
        assert (await client.get("/health/ready")).status_code == 200  # never shed
        assert "crmscore_http_requests_shed_total 1.0" in (await client.get("/metrics", headers=reader)).text
        behind["s"] = 0.05
        assert (await client.get(path_of(env.ids[6]), headers=reader)).status_code == 200


class _Transport:
    """What uvicorn's HTTP protocol needs of a transport, recording what is written."""

    def __init__(self) -> None:
        self.written, self.closed = b"", False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def test_serve_refuses_overload_as_soon_as_the_headers_are_parsed() -> None:
    """crmscore serve's HTTP protocol decides while it parses: of the requests read at once, up
    to max_in_flight are admitted (counted in flight before any of them runs) and the others
    get their 503 written during the read itself, before any admitted request has done its
    work. Through the ASGI stack a refusal waited for the work of every request read before it
    (a cached customer's scores never yield): ~0.5 s at 1,024 clients."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from crmscore.serving.api.http_protocol import shedding_protocol
    from crmscore.serving.api.metrics import ServiceMetrics
    from crmscore.serving.api.middleware import Admission, LoadSheddingMiddleware

    worked: list[str] = []

    async def scores(scope: dict, receive: Any, send: Any) -> None:
        worked.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    admission = Admission(max_in_flight=2, metrics=ServiceMetrics())
    config = Config(app=LoadSheddingMiddleware(scores, admission), log_config=None, proxy_headers=False)
    config.load()
    protocol, state = shedding_protocol(admission), ServerState()
    connections = [protocol(config, state, {}) for _ in range(5)]
    transports = [_Transport() for _ in connections]
    for connection, transport in zip(connections, transports, strict=True):
        connection.connection_made(transport)  # type: ignore[arg-type]

    def get(k: int, path: str, extra: str = "") -> None:
        connections[k].data_received(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())

    for k in range(3):
        get(k, f"/v1/customers/{k}/scores")
    get(3, "/health/ready")  # never shed
    get(4, "/v1/customers/4/scores", "X-Request-ID: abc-4\r\nConnection: close\r\n")
    # nothing has run yet: two admitted, and the refusals already written
    assert worked == [] and admission.in_flight == 2
    assert transports[0].written == transports[1].written == transports[3].written == b""
    for k, request_id in ((2, None), (4, "abc-4")):
        head, _, body = transports[k].written.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 1" in head
        refused = json.loads(body)
        assert refused["detail"] == "server overloaded: 2 requests in flight (limit 2); retry shortly"
        assert request_id is None or refused["request_id"] == request_id
    assert not transports[2].closed and transports[4].closed  # kept alive unless asked otherwise
    assert b"crmscore_http_requests_shed_total 2.0" in admission.metrics.render()

    while len(state.tasks):
        await asyncio.sleep(0.01)
    assert worked == ["/v1/customers/0/scores", "/v1/customers/1/scores", "/health/ready"]
    assert admission.in_flight == 0
    assert all(t.written.startswith(b"HTTP/1.1 200 ") for t in (transports[0], transports[1], transports[3]))
    get(2, "/v1/customers/2/scores")  # the refused connection is served once there is room
    while len(state.tasks):
        await asyncio.sleep(0.01)
    assert transports[2].written.count(b"HTTP/1.1 200 ") == 1 and worked[-1] == "/v1/customers/2/scores"


class _Response:
    """The HTTP/1.1 responses in what a transport was written, as a client's parser (httptools) reads them."""

    def __init__(self, written: bytes) -> None:
        import httptools

        self.messages: list[tuple[int, list[tuple[bytes, bytes]], bytes]] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = b""
        self._parser = httptools.HttpResponseParser(self)
        self._parser.feed_data(written)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.messages.append((self._parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = [], b""


async def test_a_refusal_keeps_its_contract_whichever_way_it_is_written() -> None:
    """An overloaded request's answer, written straight to the transport by crmscore serve's HTTP
    protocol (from bytes built once per reason) or sent through ASGI by LoadSheddingMiddleware
    (a request with a body): 503, the server's default headers (its date, renewed every second),
    JSON with its Content-Length, Retry-After: 1, X-Request-ID (the client's if valid, else a new
    one) and the same id in the body; the connection kept alive unless the client asked
    otherwise; counted as shed and as a request. A client id makes both ways byte-identical."""
    import re

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from crmscore.serving.api.http_protocol import shedding_protocol
    from crmscore.serving.api.metrics import ServiceMetrics
    from crmscore.serving.api.middleware import (
        Admission,
        LoadSheddingMiddleware,
        RequestContextMiddleware,
        refusal_body,
    )

    async def never(scope: dict, receive: Any, send: Any) -> None:
        raise AssertionError("an overloaded request reached the app")

    metrics = ServiceMetrics()
    admission = Admission(max_in_flight=0, metrics=metrics)
    config = Config(app=RequestContextMiddleware(LoadSheddingMiddleware(never, admission), metrics),
                    log_config=None, proxy_headers=False)
    config.load()
    protocol, state = shedding_protocol(admission), ServerState()
    state.default_headers = [(b"date", b"Mon, 07 Dec 2026 03:09:00 GMT")]
    detail = "server overloaded: 0 requests in flight (limit 0); retry shortly"

    async def exchange(*requests: bytes) -> tuple[_Transport, list[tuple[int, list[tuple[bytes, bytes]], bytes]]]:
        """Each request sent on one new connection, in turn; the responses as a client reads them."""
        connection, transport = protocol(config, state, {}), _Transport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        for request in requests:
            connection.data_received(request)
            while state.tasks:
                await asyncio.sleep(0.01)
        return transport, _Response(transport.written).messages

    def get(extra: bytes = b"", version: bytes = b"1.1") -> bytes:
        return b"GET /v1/customers/7/scores HTTP/" + version + b"\r\nHost: x\r\n" + extra + b"\r\n"

    def refused(message: tuple[int, list[tuple[bytes, bytes]], bytes], date: bytes = b"Mon, 07 Dec 2026 03:09:00 GMT",
                close: bool = False) -> str:
        """Checks one refusal against the contract; its request id."""
        status, headers, body = message
        request_id = dict(headers)[b"x-request-id"].decode()
        assert status == 503
        assert headers == [(b"date", date), (b"content-type", b"application/json"),
                           (b"content-length", str(len(body)).encode()), (b"retry-after", b"1"),
                           (b"x-request-id", request_id.encode()), *([(b"connection", b"close")] if close else [])]
        assert json.loads(body) == refusal_body("0 requests in flight (limit 0)", request_id)
        assert json.loads(body) == {"detail": detail, "request_id": request_id}
        return request_id

    # written by the protocol: no task, nothing reaches the app
    transport, messages = await exchange(get(), get(b"X-Request-ID: abc.4_Z-9\r\n"), get(b"X-Request-ID: bad id!\r\n"),
                                         get(b"X-Request-ID: " + b"a" * 65 + b"\r\n"))
    ids = [refused(message) for message in messages]
    assert len(ids) == 4 and not transport.closed  # one keep-alive connection answered four times
    assert ids[1] == "abc.4_Z-9"
    assert all(re.fullmatch("[0-9a-f]{16}", new) for new in (ids[0], ids[2], ids[3])) and len(set(ids)) == 4
    for request in (get(b"Connection: close\r\n"), get(version=b"1.0"), get(b"Connection: keep-alive\r\n", b"1.0")):
        transport, messages = await exchange(request)
        assert len(messages) == 1 and transport.closed
        refused(messages[0], close=True)
    next_second = b"Mon, 07 Dec 2026 03:09:01 GMT"
    state.default_headers = [(b"date", next_second)]  # as uvicorn renews them
    refused((await exchange(get()))[1][0], date=next_second)

    # sent through ASGI (a body: uvicorn's own path), then the same request without a body
    post = (b"POST /v1/customers/7/scores HTTP/1.1\r\nHost: x\r\nX-Request-ID: same-id\r\n"
            b"Content-Length: 2\r\n\r\n{}")
    through_asgi, _ = await exchange(post)
    through_protocol, _ = await exchange(get(b"X-Request-ID: same-id\r\n"))
    assert refused(_Response(through_asgi.written).messages[0], date=next_second) == "same-id"
    assert through_asgi.written == through_protocol.written and not through_asgi.closed

    rendered = metrics.render().decode()
    assert "crmscore_http_requests_shed_total 10.0" in rendered
    for method, count in (("GET", 9), ("POST", 1)):
        labels = f'method="{method}",route="<unmatched>",status="503"'
        assert f"crmscore_http_requests_total{{{labels}}} {count}.0" in rendered
        assert f"crmscore_http_request_duration_seconds_count{{{labels}}} {count}.0" in rendered


async def test_the_queue_delay_is_watched_only_when_asked() -> None:
    """In-process callers (tests, notebooks) run their own code on the app's loop: not watched."""
    from crmscore.serving.api.app import create_app

    def watched(app: Any) -> Any:
        return app.state.service.admission.queue_delay

    settings = ServingSettings(max_queue_delay_ms=250)
    assert watched(create_app(settings)) is None
    assert watched(create_app(settings, watch_queue_delay=True)) is not None
    assert watched(create_app(settings.model_copy(update={"max_queue_delay_ms": 0}), watch_queue_delay=True)) is None


def test_the_in_flight_limit_drops_while_most_requests_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full limit holds until a window ends with at least SHEDDING_SHARE of its requests
    refused; then the lower limit, a window at a time, until a window of few refusals."""
    from crmscore.serving.api import middleware
    from crmscore.serving.api.metrics import ServiceMetrics
    from crmscore.serving.api.middleware import SHEDDING_SHARE, Admission

    now = [100.0]
    monkeypatch.setattr(middleware.time, "monotonic", lambda: now[0])
    admission = Admission(max_in_flight=6, metrics=ServiceMetrics(), shedding_in_flight=2, shedding_window_s=1.0)

    def burst(n: int) -> list[str | None]:
        """n requests read at once, then all of them answered: the reasons of the refusals."""
        reasons = []
        for _ in range(n):
            refusal = admission.refuse()
            reasons.append(None if refusal is None else refusal.why)
            if refusal is None:
                admission.admit()
        while admission.in_flight:
            admission.release()
        return reasons

    assert burst(6) == [None] * 6  # a burst below the full limit: all admitted
    assert burst(7) == [None] * 6 + ["6 requests in flight (limit 6)"]  # the full limit reached...
    for _ in range(30):
        assert burst(6) == [None] * 6  # ... once: 1 of 193 refused in the window
    now[0] += 1.0
    assert burst(7)[-1] == "6 requests in flight (limit 6)" and not admission.shedding  # a burst, no overload
    assert burst(8) == [None] * 6 + ["6 requests in flight (limit 6)"] * 2
    now[0] += 1.0  # the window ends with 3 of 15 refused: overloaded
    assert 3 / 15 >= SHEDDING_SHARE
    assert burst(3) == [None, None, "2 requests in flight (limit 2)"] and admission.shedding
    now[0] += 1.0  # 1 of 3 refused: shedding goes on
    assert burst(3) == [None, None, "2 requests in flight (limit 2)"]
    for _ in range(20):  # a quieter window: 1 refused of 3 + 40
        assert burst(2) == [None, None]
    now[0] += 1.0  # 1 of 43 refused, below the share: the full limit again
    assert 1 / 43 < SHEDDING_SHARE
    assert burst(6) == [None] * 6 and not admission.shedding
    assert admission.metrics.render().count(b"crmscore_http_requests_shed_total 6.0") == 1


def test_the_shedding_limit_is_never_above_the_full_one() -> None:
    from crmscore.serving.api.metrics import ServiceMetrics
    from crmscore.serving.api.middleware import Admission

    assert Admission(max_in_flight=4, metrics=ServiceMetrics(), shedding_in_flight=16).shedding_in_flight == 4
    assert Admission(max_in_flight=4, metrics=ServiceMetrics()).shedding_in_flight == 4  # not set: no change


async def test_queue_delay_monitor_reads_how_far_behind_the_loop_is() -> None:
    import time

    from crmscore.serving.api.middleware import QueueDelayMonitor

    monitor = QueueDelayMonitor(interval_s=0.01)
    assert monitor.delay() == 0.0  # not started
    monitor.start()
    await asyncio.sleep(0.05)
    time.sleep(0.5)  # the loop is blocked: the monitor's wake-up is overdue, as a queued request would be
    assert monitor.delay() >= 0.45
    await asyncio.sleep(0.05)  # the loop catches up and the monitor re-arms: no stale figure left
    assert monitor.delay() < 0.45
    await monitor.stop()
    assert monitor.delay() == 0.0


async def test_internal_error_is_a_500_with_the_request_id(api: Any, env: Env, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from crmscore.serving.api.routes import customers

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(customers, "customer_json", broken)
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        with caplog.at_level(logging.ERROR, logger="crmscore.serving.api"):
            r = await client.get(path_of(env.ids[3]), headers={"X-API-Key": env.reader})
        assert r.status_code == 500
        rid = r.headers["x-request-id"]
        assert r.json() == {"detail": "internal server error; it has been logged, quote the request_id when "
                                      "reporting it", "request_id": rid}
        assert f"internal error (our bug) in GET /v1/customers/{{customer_id}}/scores, request {rid}" in caplog.text
        assert "RuntimeError: a bug of ours" in caplog.text
        assert env.ids[3] not in caplog.text


async def test_request_ids(api: Any, env: Env) -> None:
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        r = await client.get("/health/live", headers={"X-Request-ID": "front-end.42"})
        assert r.headers["x-request-id"] == "front-end.42"
        r = await client.get("/health/live", headers={"X-Request-ID": "bad id\x01" + "x" * 100})
        assert len(r.headers["x-request-id"]) == 16


async def test_no_customer_data_or_keys_in_logs(api: Any, env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with api.running(env.settings, api.serve(env.bundle)) as (_, client):
        reader = {"X-API-Key": env.reader}
        await client.get(path_of(CANARY), headers=reader)
        await client.post("/v1/scores", headers=reader, json={"customers": [
            {"customer_id": CANARY, "features": {"segment": CANARY, "tenure_days": 77310.5}}]})
        await client.post("/v1/scores", headers=reader, json={"customers": [
            {"customer_id": CANARY, "features": {"tenure_days": CANARY}}]})
        await client.get("/metrics", headers={"X-API-Key": CANARY})
    server_side = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records
                            if not r.name.startswith(("httpx", "httpcore")))  # the test client logs URLs
    assert server_side  # something was logged (at DEBUG)
    assert CANARY not in server_side and "77310" not in server_side
    assert env.reader not in server_side and env.reader[4:20] not in server_side


# --- a real server ---------------------------------------------------------------------------------


def test_run_server_serves_real_http(env: Env, tmp_path: Path) -> None:
    """``run_server`` in a subprocess on a free loopback port: readiness, a customer, and a
    chunked body over the limit (413) through uvicorn and the whole middleware stack."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "from pathlib import Path\n"
        "from crmscore.serving.api.app import run_server\n"
        "from crmscore.serving.settings import ServingSettings\n"
        f"run_server(ServingSettings(home=Path({str(env.settings.home)!r}), "
        f"snapshot_path=Path({str(env.settings.snapshot_path)!r}), keys_file=Path({str(env.settings.keys_file)!r}), "
        f"max_body_bytes=4096), host='127.0.0.1', port={port}, workers=1)\n"
    )
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.2)
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path_of(ODD_IDS[1])}",
                                         headers={"X-API-Key": env.reader})
        with urllib.request.urlopen(request, timeout=10) as r:
            body = json.loads(r.read())
            assert r.status == 200 and r.headers["x-request-id"]
        assert body["customer_id"] == ODD_IDS[1] and body["reasons_source"] == "computed"
        assert math.isclose(body["scores"]["churn_prob"], env.bundle.scored.record(1)["churn_prob"])

        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/scores HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\nX-API-Key: " + env.reader.encode() + b"\r\n\r\n")
            chunk = b"x" * 1000
            try:
                for _ in range(10):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the server may close as soon as it has answered
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()
