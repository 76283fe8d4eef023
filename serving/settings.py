"""Settings of the scoring service (``crmscore serve``), validated once when built.

Every field can be set in the environment with the prefix ``CRMSCORE_`` (``CRMSCORE_SNAPSHOT_PATH``,
``CRMSCORE_KEYS_FILE``, ...) or passed to :class:`ServingSettings` directly (the CLI and the
tests do). A misspelt keyword argument fails loudly (``extra="forbid"``); bad values fail with
a message naming the field. Files are *not* required to exist when the settings are built:
the server reads them when it loads (and reloads) its bundle, and reports a missing file then.

Paths left unset default to files in the project folder ``home`` (``CRMSCORE_HOME``, else the
working directory), the same folder that holds the embedded MLflow registry ``mlflow.db``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_KEYS_FILE", "DEFAULT_SNAPSHOT_FILE", "MAX_BATCH_LIMIT", "ServingSettings"]

#: file names, inside ``home``, of the defaults for ``keys_file`` and ``snapshot_path``
DEFAULT_KEYS_FILE = "keys.json"
DEFAULT_SNAPSHOT_FILE = "snapshot.parquet"
#: the hard upper bound of customers in one ``POST /v1/scores`` (the API contract)
MAX_BATCH_LIMIT = 1000


class ServingSettings(BaseSettings):
    """Where the service finds its inputs, and its limits.

    Attributes
    ----------
    home : Path
        Project folder (``CRMSCORE_HOME``; default: the working directory).
    tracking_uri : str, optional
        MLflow tracking + registry URI. Default: ``MLFLOW_TRACKING_URI`` when set, else the
        embedded ``sqlite:///<home>/mlflow.db``.
    model_alias : str
        Registry alias of the four models to serve (default ``champion``).
    snapshot_path : Path
        Feature snapshot (Parquet file or folder of Parquet files) used for id look-ups; read
        again on every reload. Default ``<home>/snapshot.parquet``.
    scores_path : Path, optional
        Output of the last batch scoring: source of cached reason codes, of the portfolio
        cut-offs and of ``GET /v1/portfolio/summary``. Optional.
    policy_path : Path, optional
        Portfolio policy YAML; default: the policy shipped with the package.
    keys_file : Path
        API keys (hashes and scopes) written by ``crmscore keys create``; default
        ``<home>/keys.json``; environment ``CRMSCORE_KEYS_FILE``.
    max_body_bytes : int
        Largest request body accepted, in bytes (default 1 MiB); larger ones get 413.
    max_batch : int
        Most customers in one ``POST /v1/scores`` (1 to 1,000; default 1,000).
    max_in_flight : int
        Requests admitted and not yet answered (health, metrics and admin excluded); beyond it
        the server answers 503 with ``Retry-After`` at once instead of queueing. ``crmscore
        serve`` counts a request from the moment its headers are parsed, so this also bounds the
        work the event loop does before it reads again, and so how long a refusal waits.
    max_in_flight_shedding : int
        The in-flight limit while the server is shedding: from a 503 of overload on, a second
        at a time while at least 5% of that second's requests were refused. Under ``crmscore
        serve`` the requests admitted in one read all run before the next read, so this bounds
        how long a refusal, and a request still served, waits while overloaded; ``max_in_flight``
        applies otherwise, so that the bursts of a server below capacity are not refused
        (default 16; the trade-off measured: docs/reliability.md, section 2, "Overload").
        Values above ``max_in_flight`` act as ``max_in_flight``.
    max_queue_delay_ms : int
        ``crmscore serve``: a request that has waited longer than this for the event loop gets
        503 with ``Retry-After`` at once (0 = never); default 250 ms, far above the p99 of a
        loaded server, so only a backlog triggers it (measured: docs/reliability.md, "Overload").
    max_connections : int
        uvicorn's ``limit_concurrency``, the backstop on memory: while this many connections are
        open, uvicorn answers *every* request 503 and closes its connection (idle keep-alive
        connections count too), and the reconnecting clients then wait in the kernel's accept
        queue for seconds; default 2048, so that the server's own refusals (``max_in_flight``,
        ``max_queue_delay_ms``), which keep connections open, act first. The measured effect of
        this default against the former 512, and the latest latencies under overload, are in
        docs/reliability.md, section 2, "Overload" (not copied here, where they would go stale).
    compute_threads : int
        Worker threads for the expensive per-request work (reason codes computed on demand,
        inline features in batches); more requests of that kind wait for a free thread.
    load_threads : int
        LightGBM threads used when a bundle is loaded (scoring the whole snapshot once);
        0 = every core. Default 1, which leaves a core to serve requests during a reload.
    load_niceness : int
        CPU niceness (0 to 19) of the process that builds reloaded bundles (the first load runs
        in the server itself). Default 10: while the cores are busy serving, requests come
        first and the build waits, so a reload takes longer on saturated cores but disturbs
        the requests less (the reload benchmark's figures at 10 and at 0 are in
        docs/reliability.md, section 2, not copied here, where they would go stale). 0 builds
        at the server's own priority.
    load_retry_seconds : float
        While no bundle is loaded (the first load failed), retry every this many seconds;
        0 = only on ``POST /v1/admin/reload``.
    metrics_require_key : bool
        ``/metrics`` asks for a reader key (default). Set false to let a scraper on a private
        network read it without one.
    top_reasons : int
        Reason codes per model in a response (1 to 10; default 3).
    """

    model_config = SettingsConfigDict(
        env_prefix="CRMSCORE_", extra="forbid", frozen=True, validate_default=True
    )

    home: Path = Field(default_factory=Path.cwd)
    tracking_uri: str | None = None
    model_alias: str = Field(default="champion", min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    snapshot_path: Path = Path(DEFAULT_SNAPSHOT_FILE)
    scores_path: Path | None = None
    policy_path: Path | None = None
    keys_file: Path = Path(DEFAULT_KEYS_FILE)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_batch: int = Field(default=MAX_BATCH_LIMIT, ge=1, le=MAX_BATCH_LIMIT)
    max_in_flight: int = Field(default=64, ge=1)
    max_in_flight_shedding: int = Field(default=16, ge=1)
    max_queue_delay_ms: int = Field(default=250, ge=0)
    max_connections: int = Field(default=2048, ge=1)
    compute_threads: int = Field(default=2, ge=1, le=64)
    load_threads: int = Field(default=1, ge=0)
    load_niceness: int = Field(default=10, ge=0, le=19)
    load_retry_seconds: float = Field(default=30.0, ge=0)
    metrics_require_key: bool = True
    top_reasons: int = Field(default=3, ge=1, le=10)

    @model_validator(mode="before")
    @classmethod
    def _paths_in_home(cls, data: Any) -> Any:
        """Relative default paths live in ``home``; explicit relative paths stay as given."""
        if not isinstance(data, dict):
            return data
        home = Path(data.get("home") or os.getcwd())
        data = dict(data)
        data.setdefault("snapshot_path", home / DEFAULT_SNAPSHOT_FILE)
        data.setdefault("keys_file", home / DEFAULT_KEYS_FILE)
        return data

    def resolved_tracking_uri(self) -> str:
        """The MLflow URI the server uses: the setting, ``MLFLOW_TRACKING_URI``, or the embedded file."""
        if self.tracking_uri:
            return self.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{self.home.resolve() / 'mlflow.db'}"
