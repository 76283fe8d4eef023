"""Issue 8, property 5 (leaks): a canary value fed through every route and the batch job never
appears in any log record (every logger at DEBUG, plus the process's stderr/stdout) nor in any
error body; API keys, valid or not, are never logged.

The canary goes in as a customer id (path and body), as a categorical feature value, as a
numeric feature value, as an unknown feature name, as an unknown body field, as a query
parameter, as a request header value and as an API key; in the batch job as a customer id and
a categorical value in the snapshot.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest

from crmscore.features.io import write_snapshot

pytestmark = pytest.mark.anyio

CANARY = "CANARY-k9QzX7"
CANARY_NUMBER = 91735.28461  # a numeric canary: must not be echoed either


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    # the test client (httpx/httpcore) logs the URLs it requests: not the server's logs
    return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.stack_info or ''}"
                     for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))


async def test_canary_never_in_api_logs_or_error_bodies(api: Any, rel_env: Any, caplog: pytest.LogCaptureFixture,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    models = rel_env.bundle.models
    numeric = next(n for n in models.feature_names if n not in models.categorical_levels)
    category = next(iter(models.categorical_levels))
    reader, admin = {"X-API-Key": rel_env.reader}, {"X-API-Key": rel_env.admin}
    for client_logger in ("httpx", "httpcore"):
        # the test client logs the URLs it requests, and an earlier in-process CLI test may have
        # put a stderr handler on the root logger: those are the client's lines, not the server's
        caplog.set_level(logging.WARNING, logger=client_logger)
    caplog.set_level(logging.DEBUG)  # every other logger (last: it also sets the capture level)
    bodies: list[tuple[int, str]] = []
    async with api.running(rel_env.settings, api.serve(rel_env.bundle)) as (_, client):
        async def send(method: str, url: str, headers: dict[str, str], **kwargs: Any) -> None:
            r = await client.request(method, url, headers=headers | {"X-Canary": CANARY}, **kwargs)
            assert r.status_code < 500, (url, r.status_code, r.text[:200])
            bodies.append((r.status_code, r.text))

        known = rel_env.ids[3]
        await send("GET", f"/v1/customers/{quote(CANARY, safe='')}/scores", reader)
        await send("GET", f"/v1/customers/{quote(known, safe='')}/scores?reasons={CANARY}", reader)
        await send("GET", f"/v1/customers/{quote(known, safe='')}/scores?{CANARY}=1", reader)
        for customers in (
            [{"customer_id": CANARY}],
            [{"customer_id": CANARY, "features": {category: CANARY}}],
            [{"customer_id": CANARY, "features": {category: CANARY, numeric: CANARY_NUMBER}}],
            [{"customer_id": CANARY, "features": {numeric: CANARY}}],
            [{"customer_id": CANARY, "features": {CANARY: 1.0}}],
            [{"customer_id": CANARY, CANARY: 1}],
            [{"customer_id": known, "features": {category: CANARY}}],
            [{"customer_id": CANARY * 40}],
        ):
            await send("POST", "/v1/scores", reader, json={"customers": customers})
        await send("POST", "/v1/scores", reader, json={"customers": [{"customer_id": CANARY}], CANARY: True})
        await send("POST", "/v1/scores", reader | {"Content-Type": "application/json"},
                   content=b'{"customers": [{"customer_id": "' + CANARY.encode() + b'", ')
        for method, url in [("GET", "/v1/models"), ("GET", "/v1/portfolio/summary"), ("GET", "/metrics"),
                            ("POST", "/v1/admin/reload"), ("GET", "/health/ready"),
                            ("GET", f"/v1/customers/{CANARY}/scores")]:
            await send(method, url, {"X-API-Key": CANARY})  # the canary as a (wrong) key
            await send(method, url, {"X-API-Key": "crm_" + CANARY})
        await send("POST", "/v1/admin/reload", reader)  # a reader key on an admin route
        await send("POST", "/v1/admin/reload", admin)
    out, err = capfd.readouterr()
    logged = _logged(caplog) + out + err
    assert "POST /v1/scores" in logged or "/v1/scores" in logged  # the access log did run at DEBUG
    for secret in (CANARY, str(CANARY_NUMBER), "91735", rel_env.reader, rel_env.reader[4:20],
                   rel_env.admin, rel_env.admin[4:20]):
        assert secret not in logged, secret
    errors = [text for status, text in bodies if status >= 400]
    assert len(errors) >= 15
    for text in errors:
        # the field path of a 422 names the field the client sent, which is the point of it (an
        # unknown feature or field *name*): values never, and nothing outside "loc"
        body = json.loads(text)
        if isinstance(body.get("detail"), list):
            body["detail"] = [{k: v for k, v in e.items() if k != "loc"} for e in body["detail"]]
        text = json.dumps(body)
        assert CANARY not in text and "91735" not in text, text[:300]


def test_canary_never_in_batch_logs(rel_env: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    from crmscore.serving.batch.job import score_base

    models = rel_env.bundle.models
    category = next(iter(models.categorical_levels))
    frame = pq.read_table(rel_env.settings.snapshot_path).to_pandas()
    frame = frame.head(300).copy()
    frame["customer_id"] = frame["customer_id"].astype(object)
    frame.loc[frame.index[0], "customer_id"] = CANARY
    frame[category] = frame[category].astype(object)
    frame.loc[frame.index[1], category] = CANARY  # an unknown level
    snapshot_path = tmp_path / "snapshot.parquet"
    write_snapshot(frame, "2025-01-01", snapshot_path)
    caplog.set_level(logging.DEBUG)
    score_base(snapshot_path, tmp_path / "scores.parquet", models=models, reasons="none")
    out, err = capfd.readouterr()
    logged = _logged(caplog) + out + err
    assert logged.strip()  # the job logs its progress
    assert CANARY not in logged
    scored = pq.read_table(tmp_path / "scores.parquet", columns=["customer_id"]).to_pandas()
    assert CANARY in set(scored["customer_id"].astype(str))  # it was scored, just not logged
