"""Shared set-up of the reliability tests: the session's champions served from a private copy
of the fixture snapshot, with a reader and an admin key (a few lines copied from
``tests/serving/test_api.py``, which importlib mode does not let us import)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from crmscore.serving.api.app import create_app
from crmscore.serving.registry import ServingBundle, load_serving_bundle
from crmscore.serving.security import create_key
from crmscore.serving.settings import ServingSettings


@dataclass(frozen=True)
class Env:
    folder: Path
    settings: ServingSettings
    reader: str
    admin: str
    bundle: ServingBundle

    @property
    def ids(self) -> list[str]:
        return [str(x) for x in self.bundle.customer_ids]

    def settings_copy(self, name: str) -> ServingSettings:
        """Settings over a private copy of the snapshot, which a test may damage."""
        folder = self.folder / name
        folder.mkdir()
        shutil.copy(self.settings.snapshot_path, folder / "snapshot.parquet")
        return self.settings.model_copy(update={"snapshot_path": folder / "snapshot.parquet"})


@pytest.fixture(scope="session")
def rel_env(trained_models, tmp_path_factory: pytest.TempPathFactory) -> Env:
    folder = tmp_path_factory.mktemp("reliability")
    snapshot_path = folder / "snapshot.parquet"
    shutil.copy(trained_models.snapshot_path, snapshot_path)
    keys_file = folder / "keys.json"
    reader, admin = create_key("reader", keys_file), create_key("admin", keys_file)
    settings = ServingSettings(home=trained_models.home, snapshot_path=snapshot_path, keys_file=keys_file,
                               load_retry_seconds=0)
    return Env(folder, settings, reader, admin, load_serving_bundle(settings))


def serve(bundle: ServingBundle) -> Callable[[ServingSettings], ServingBundle]:
    return lambda settings: bundle


async def wait_ready(client: httpx.AsyncClient, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.02)):
        if (await client.get("/health/ready")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the app did not get ready")


async def wait_not_ready_reason(client: httpx.AsyncClient, word: str = "failed", timeout: float = 10) -> dict:
    body: dict = {}
    for _ in range(int(timeout / 0.02)):
        r = await client.get("/health/ready")
        body = r.json()
        if r.status_code == 503 and word in body.get("reason", ""):
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"readiness never said {word!r}: {body}")


@asynccontextmanager
async def running(settings: ServingSettings, loader: Any = None, *, ready: bool = True
                  ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings, loader=loader)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
            if ready:
                await wait_ready(client)
            yield app, client


@pytest.fixture(scope="session")
def api() -> Any:
    """The helpers above, for test modules (importlib mode cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(running=running, serve=serve, wait_ready=wait_ready,
                           wait_not_ready_reason=wait_not_ready_reason)
