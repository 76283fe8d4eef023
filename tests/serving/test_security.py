"""API keys and settings: creation, hashed storage, constant-time checks, scopes; typed settings."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import stat
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from crmscore.serving import security
from crmscore.serving.security import (
    KeysFileError,
    KeyStore,
    Scope,
    create_key,
    hash_key,
    read_keys,
)
from crmscore.serving.settings import ServingSettings


def test_create_key_stores_only_the_hash(tmp_path: Path) -> None:
    keys_file = tmp_path / "sub" / "keys.json"
    key = create_key("reader", keys_file)
    assert key.startswith("crm_") and len(key) == 4 + 43  # 32 random bytes, URL-safe base64
    text = keys_file.read_text()
    assert key not in text and key[4:] not in text
    data = json.loads(text)
    assert data["format"] == 1
    [entry] = data["keys"]
    assert entry["sha256"] == hashlib.sha256(key.encode()).hexdigest() == hash_key(key)
    assert entry["scope"] == "reader" and entry["id"] == entry["sha256"][:12]
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert not list(keys_file.parent.glob(".keys.json.*.tmp"))  # written atomically, nothing left over


def test_create_key_appends_and_keys_differ(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    a, b = create_key("reader", keys_file), create_key(Scope.ADMIN, keys_file)
    assert a != b
    assert [k.scope for k in read_keys(keys_file)] == [Scope.READER, Scope.ADMIN]


def test_create_key_concurrently_keeps_every_key(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    threads = [threading.Thread(target=create_key, args=("reader", keys_file)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_keys(keys_file)) == 8


def test_unknown_scope_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        create_key("writer", tmp_path / "keys.json")
    assert str(err.value) == "scope must be one of reader, admin; got 'writer'"
    assert not (tmp_path / "keys.json").exists()


def test_corrupt_keys_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text("not json")
    with pytest.raises(KeysFileError, match="is not a crmscore keys file"):
        create_key("reader", keys_file)
    assert keys_file.read_text() == "not json"
    assert read_keys(tmp_path / "absent.json") == []


def test_scopes() -> None:
    assert Scope.ADMIN.allows(Scope.READER) and Scope.ADMIN.allows(Scope.ADMIN)
    assert Scope.READER.allows(Scope.READER) and not Scope.READER.allows(Scope.ADMIN)


def test_keystore_verifies_and_sees_new_keys(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    store = KeyStore(keys_file, recheck_seconds=0)
    assert len(store) == 0
    reader = create_key("reader", keys_file)
    found = store.verify(reader)
    assert found is not None and found.scope is Scope.READER
    admin = create_key("admin", keys_file)
    assert store.verify(admin).scope is Scope.ADMIN  # type: ignore[union-attr]
    assert store.verify(reader + "x") is None
    assert store.verify("") is None
    assert store.verify("crm_" + "a" * 1000) is None


def test_keystore_compares_every_stored_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time in the stored keys: no early exit once a hash matched."""
    keys_file = tmp_path / "keys.json"
    first = create_key("reader", keys_file)
    for _ in range(4):
        create_key("reader", keys_file)
    store = KeyStore(keys_file)
    calls = []
    real = security.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    assert store.verify(first) is not None
    assert len(calls) == 5


def test_keystore_keeps_keys_when_the_file_turns_bad(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    key = create_key("reader", keys_file)
    store = KeyStore(keys_file, recheck_seconds=0)
    keys_file.write_text("{broken")
    assert store.verify(key) is not None


# --- settings ----------------------------------------------------------------------------------


def test_settings_defaults_live_in_home(tmp_path: Path) -> None:
    s = ServingSettings(home=tmp_path)
    assert s.snapshot_path == tmp_path / "snapshot.parquet"
    assert s.keys_file == tmp_path / "keys.json"
    assert s.scores_path is None and s.policy_path is None
    assert (s.max_body_bytes, s.max_batch, s.model_alias) == (1024 * 1024, 1000, "champion")


def test_settings_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSCORE_KEYS_FILE", str(tmp_path / "k.json"))
    monkeypatch.setenv("CRMSCORE_MAX_BATCH", "10")
    monkeypatch.setenv("CRMSCORE_METRICS_REQUIRE_KEY", "false")
    monkeypatch.setenv("CRMSCORE_SOMETHING_ELSE", "ignored")  # other components' variables
    s = ServingSettings(home=tmp_path)
    assert s.keys_file == tmp_path / "k.json" and s.max_batch == 10 and s.metrics_require_key is False


def test_settings_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert ServingSettings(home=tmp_path).resolved_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert ServingSettings(home=tmp_path).resolved_tracking_uri() == "http://mlflow:5000"
    assert ServingSettings(home=tmp_path, tracking_uri="sqlite:///x.db").resolved_tracking_uri() == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_batch": 1001}, "max_batch"),
        ({"max_body_bytes": 10}, "max_body_bytes"),
        ({"model_alias": "a b"}, "model_alias"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"snapshot": "x.parquet"}, "snapshot"),  # misspelt: extra="forbid"
    ],
)
def test_settings_refuse_bad_values(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ServingSettings(home=tmp_path, **kwargs)
    assert err.value.errors()[0]["loc"] == (field,)


def test_worker_processes_rebuild_the_same_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_server with several workers passes the settings through CRMSCORE_* variables."""
    from crmscore.serving.api.app import _settings_env

    original = ServingSettings(home=tmp_path, scores_path=tmp_path / "s.parquet", max_batch=7,
                               metrics_require_key=False, tracking_uri="sqlite:///x.db")
    for name, value in _settings_env(original).items():
        monkeypatch.setenv(name, value)
    assert ServingSettings() == original


def _attribute_descriptions(cls: type) -> dict[str, str]:
    """The ``Attributes`` section of a numpydoc class docstring: name -> description (one line)."""
    section = inspect.getdoc(cls).split("Attributes\n----------\n", 1)[1]
    entries = re.findall(r"^(\w+) : [^\n]*\n((?:    [^\n]*\n?)+)", section, flags=re.MULTILINE)
    return {name: " ".join(text.split()) for name, text in entries}


def test_max_connections_points_to_the_measurements_instead_of_quoting_them() -> None:
    """Measured latencies go stale with each benchmark run (the description quoted a served p99
    of 386 ms after docs/reliability.md had moved on to 224 ms): it names where the figures
    are, and quotes none."""
    descriptions = _attribute_descriptions(ServingSettings)
    assert set(descriptions) == set(ServingSettings.model_fields)  # every field documented, and parsed
    text = descriptions["max_connections"]
    assert 'docs/reliability.md, section 2, "Overload"' in text
    assert re.findall(r"\d[\d.,]*\s*(?:ms|s)\b|p99", text) == [], text
