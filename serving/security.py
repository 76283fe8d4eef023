"""API keys: created once, stored only as hashes, checked in constant time.

A key is ``crm_`` followed by 43 URL-safe characters: 32 bytes (256 bits) from
:func:`secrets.token_bytes`. The keys file keeps, per key, the SHA-256 of the key, its scope
and a short public id (the first 12 hex digits of the hash, safe to log); the key itself is
printed once by ``crmscore keys create`` and never stored.

Why plain SHA-256 and not a slow KDF (bcrypt, scrypt, Argon2): a slow hash protects *low
entropy* secrets (passwords) against guessing after the hash file leaks. A 256-bit random key
cannot be guessed: even at 10^12 SHA-256 per second, finding a preimage takes ~10^65 years,
so stretching adds nothing but latency on every request (NIST SP 800-63B asks for a KDF for
memorised secrets, not for random authenticators of this size).

Checking: the presented key is hashed and compared with **every** stored hash with
:func:`hmac.compare_digest` (no early exit), so neither which entry matched nor how many
leading bytes matched shows in the timing.

The keys file is JSON, written atomically (temporary file in the same folder, ``fsync``,
rename) under an exclusive lock, with mode 0600::

    {"format": 1,
     "keys": [{"id": "3f9a0c2b7d1e", "sha256": "<64 hex>", "scope": "reader",
               "created": "2025-01-01T12:00:00+00:00"}]}
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "KeyStore",
    "KeysFileError",
    "Scope",
    "create_key",
    "hash_key",
    "read_keys",
]

logger = logging.getLogger(__name__)

KEY_PREFIX = "crm_"
KEYS_FORMAT = 1
#: keys longer than this are refused before hashing (no work for absurd headers)
MAX_KEY_LENGTH = 256


class Scope(StrEnum):
    """What a key may do: ``reader`` reads scores; ``admin`` also reloads (``/v1/admin/*``)."""

    READER = "reader"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        return self is Scope.ADMIN or needed is Scope.READER

    @classmethod
    def parse(cls, value: str) -> Scope:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"scope must be one of reader, admin; got {value!r}") from None


class KeysFileError(ValueError):
    """The keys file exists but cannot be read as a keys file; the message names it."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key: public id, SHA-256 (hex) and scope. Never the key itself."""

    id: str
    sha256: str
    scope: Scope
    created: str = ""


def hash_key(key: str) -> str:
    """SHA-256 of the key's UTF-8 bytes, as 64 hex digits."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys(keys_file: Path) -> list[ApiKey]:
    """The keys stored in ``keys_file``; ``[]`` when the file does not exist.

    Raises
    ------
    KeysFileError
        The file is not JSON or breaks the format (the message names the file, not the keys).
    """
    path = Path(keys_file)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return []
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != KEYS_FORMAT:
            raise ValueError(f"expected an object with \"format\": {KEYS_FORMAT}")
        keys = []
        for i, entry in enumerate(data.get("keys", [])):
            digest = str(entry["sha256"])
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"keys[{i}].sha256 must be 64 lower-case hex digits")
            keys.append(ApiKey(str(entry["id"]), digest, Scope.parse(str(entry["scope"])),
                               str(entry.get("created", ""))))
    except (ValueError, KeyError, TypeError) as exc:
        raise KeysFileError(f"keys file {path} is not a crmscore keys file: {exc}") from None
    return keys


@contextmanager
def _locked(keys_file: Path) -> Iterator[None]:
    """Exclusive lock on ``<keys_file>.lock``: two ``keys create`` at once both land."""
    lock_path = keys_file.with_name(keys_file.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomic(keys_file: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{keys_file.name}.", suffix=".tmp", dir=keys_file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(payload, out, indent=1)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, keys_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_key(scope: str | Scope, keys_file: Path) -> str:
    """Create an API key of ``scope``, store its hash in ``keys_file``, return the key.

    The key is returned once and stored nowhere; the caller shows it to the person who asked
    (``crmscore keys create`` prints it alone on its last line). The folder of ``keys_file``
    is created if missing; existing keys are kept.

    Parameters
    ----------
    scope : {"reader", "admin"}
    keys_file : Path
        JSON keys file, e.g. the server's ``keys_file`` setting.

    Raises
    ------
    ValueError
        Unknown scope.
    KeysFileError
        ``keys_file`` exists and is not a keys file (it is left untouched).
    """
    scope = Scope.parse(scope) if not isinstance(scope, Scope) else scope
    keys_file = Path(keys_file)
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hash_key(key)
    with _locked(keys_file):
        keys = read_keys(keys_file)
        entry = ApiKey(digest[:12], digest, scope, datetime.now(UTC).isoformat(timespec="seconds"))
        payload = {
            "format": KEYS_FORMAT,
            "keys": [
                {"id": k.id, "sha256": k.sha256, "scope": k.scope.value, "created": k.created}
                for k in [*keys, entry]
            ],
        }
        _write_atomic(keys_file, payload)
    logger.info("created %s key %s in %s", scope.value, entry.id, keys_file)
    return key


class KeyStore:
    """The keys the server accepts, re-read when the keys file changes.

    A key created while the server runs works within ``recheck_seconds`` without a restart;
    a keys file that turns unreadable keeps the keys last read (and logs why).
    """

    def __init__(self, keys_file: Path, *, recheck_seconds: float = 2.0) -> None:
        self.keys_file = Path(keys_file)
        self.recheck_seconds = recheck_seconds
        self._keys: tuple[ApiKey, ...] = ()
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self.refresh(force=True)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.keys_file.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the keys file when it changed (at most every ``recheck_seconds``)."""
        now = time.monotonic()
        if not force and now - self._checked < self.recheck_seconds:
            return
        with self._lock:
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp and not force:
                return
            try:
                keys = read_keys(self.keys_file)
            except (KeysFileError, OSError) as exc:
                logger.error("%s; keeping the %d key(s) read before", exc, len(self._keys))
                self._stamp = stamp
                return
            if stamp is None:
                logger.warning(
                    "no keys file at %s: every /v1 request gets 401; create a key with "
                    "`crmscore keys create --scope reader`", self.keys_file
                )
            self._keys = tuple(keys)
            self._stamp = stamp

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, presented: str) -> ApiKey | None:
        """The stored key matching ``presented``, or None. Constant time in the stored keys."""
        self.refresh()
        if not presented or len(presented) > MAX_KEY_LENGTH:
            return None
        digest = hash_key(presented).encode("ascii")
        found: ApiKey | None = None
        for key in self._keys:
            # compare every entry, no early exit: timing does not tell which one matched
            if hmac.compare_digest(digest, key.sha256.encode("ascii")):
                found = key
        return found
