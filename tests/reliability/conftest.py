"""Shared set-up of the reliability tests: the session's champions served from a private copy
of the fixture snapshot, with a reader and an admin key. The helpers that run the app are the
``api`` fixture of ``tests/conftest.py``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

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
