"""MLflow tracking and registry: the only module of ``crmscore.training`` that calls MLflow.

Embedded default: a SQLite file ``mlflow.db`` and artefacts under ``models/`` in the project
folder (the working directory, or ``CRMSCORE_HOME``); ``MLFLOW_TRACKING_URI`` switches to a
tracking server (PostgreSQL-backed for shared use: SQLite serves one writer at a time).
Experiments and registered models are named ``crm-churn``, ``crm-propensity``,
``crm-credit-risk``, ``crm-expected-margin``; the alias ``champion`` is what serving loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from crmscore.bundle import (  # noqa: F401  (project_home, setup_tracking: re-exported)
    BundlePyfunc,
    ModelBundle,
    ModelKind,
    default_tracking_uri,
    load_registered_bundle,
    project_home,
    score_frame,
    setup_tracking,
)

logger = logging.getLogger(__name__)

CHAMPION = "champion"
TEST_FRAME_ARTIFACT = "data/test.parquet"


def _artifact_root(home: Path | None) -> str | None:
    """``models/`` in the project when tracking is the embedded SQLite file; the server's own otherwise."""
    import mlflow

    if not mlflow.get_tracking_uri().startswith("sqlite:"):
        return None
    home = project_home() if home is None else Path(home).resolve()
    return (home / "models").as_uri()


def ensure_experiment(kind: ModelKind, home: Path | None = None) -> str:
    import mlflow

    name = kind.registered_name
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = _artifact_root(home)
    return mlflow.create_experiment(name, artifact_location=None if root is None else f"{root}/{name}")


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """A short content hash of a frame (data identity of a training run)."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + ",".join(map(str, frame.columns)).encode()).hexdigest()[:16]


def code_version() -> str:
    from crmscore import __version__

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


@dataclass(frozen=True)
class RunRecord:
    kind: ModelKind
    run_id: str
    version: str | None  # registered model version, None when not registered


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            if value == value and abs(value) != float("inf"):  # skip NaN and inf
                out[f"{prefix}{key}"] = float(value)
    return out


def log_run(
    bundle: ModelBundle,
    *,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    figures: dict[str, Any],
    input_example: pd.DataFrame,
    test_frame: pd.DataFrame | None = None,
    tables: dict[str, pd.DataFrame] | None = None,
    register: bool = True,
    home: Path | None = None,
    run_name: str | None = None,
) -> RunRecord:
    """Log one trained model: params, metrics, plots, data identity, the model; register it.

    The model version is created last, after everything else is logged, so a failure part-way
    leaves a failed run and no half-registered model.
    """
    import mlflow
    from mlflow.models import infer_signature

    experiment_id = ensure_experiment(bundle.kind, home)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({"crmscore.kind": bundle.kind.value, "crmscore.code_version": code_version(), **tags})
        mlflow.log_params({k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in params.items()})
        mlflow.log_metrics(_flat("", metrics))
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"plots/{name}.png")
        for name, table in (tables or {}).items():
            path = Path(tmp) / f"{name}.csv"
            table.to_csv(path, index=False)
            mlflow.log_artifact(str(path), "tables")
        if test_frame is not None:
            path = Path(tmp) / "test.parquet"
            test_frame.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), "data")
        from crmscore.training.card import render_model_card

        card = render_model_card(bundle, params=params, metrics=metrics, tags={**tags, "crmscore.code_version": code_version()})
        mlflow.log_text(card, "model_card.md")
        bundle_dir = bundle.save(Path(tmp) / "bundle")
        example = input_example.head(5)
        signature = infer_signature(_signature_frame(example), score_frame(bundle, example))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=BundlePyfunc(),
            artifacts={"bundle": str(bundle_dir)},
            signature=signature,
            input_example=_signature_frame(example),
            registered_model_name=bundle.kind.registered_name if register else None,
            pip_requirements=_requirements(),
        )
        version = str(info.registered_model_version) if register and info.registered_model_version else None
        if version is not None:
            client = mlflow.MlflowClient()
            for key, value in {**tags, "run_id": run.info.run_id}.items():
                client.set_model_version_tag(bundle.kind.registered_name, version, key, str(value))
        logger.info("%s: logged run %s%s", bundle.kind.value, run.info.run_id,
                    f", registered {bundle.kind.registered_name} version {version}" if version else "")
        return RunRecord(bundle.kind, run.info.run_id, version)


def _signature_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as text, nullable integers as floats: types MLflow's schema understands."""
    out = frame.copy()
    for col in out.columns:
        s = out[col]
        if isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(s):
            out[col] = s.astype(object).where(s.notna(), None)
        elif pd.api.types.is_integer_dtype(s) or pd.api.types.is_bool_dtype(s):
            out[col] = s.astype("float64")
    return out


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("lightgbm", "numpy", "pandas", "scikit-learn", "mlflow")]


# --- the registry ---------------------------------------------------------------------------


def champion_version(kind: ModelKind) -> str | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        return str(client.get_model_version_by_alias(kind.registered_name, CHAMPION).version)
    except MlflowException:
        return None


def latest_version(kind: ModelKind) -> str | None:
    import mlflow

    versions = mlflow.MlflowClient().search_model_versions(f"name='{kind.registered_name}'")
    if not versions:
        return None
    return str(max(int(v.version) for v in versions))


def download_bundle(kind: ModelKind, version: str, dst: Path | None = None) -> ModelBundle:
    """Load a registered version's bundle (``models:/crm-<kind>/<version>``)."""
    return load_registered_bundle(kind, version=version, dst=dst)[0]


def version_run_id(kind: ModelKind, version: str) -> str:
    import mlflow

    return mlflow.MlflowClient().get_model_version(kind.registered_name, version).run_id


def download_test_frame(run_id: str) -> pd.DataFrame:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TEST_FRAME_ARTIFACT)
    return pd.read_parquet(path)


def set_champion(kind: ModelKind, version: str, reason: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    client.set_registered_model_alias(kind.registered_name, CHAMPION, version)
    client.set_model_version_tag(kind.registered_name, version, "crmscore.promotion", reason)
