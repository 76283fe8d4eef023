"""The MLproject's entry points are calls of the real CLI: each command, with its defaults and
with every parameter set, parses against ``crmscore``'s own options (a renamed option or a
typo fails here, not in a data scientist's ``mlflow run``), and one entry point runs for real
through ``mlflow run`` on a registry of its own."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crmscore.cli import app

ROOT = Path(__file__).resolve().parents[2]
#: a value per parameter type, to parse every option with a value set
SET = {"string": "x", "float": "3", "path": "/tmp/x", "uri": "file:///tmp/x"}


def _project():
    from mlflow.projects import _project_spec

    return _project_spec.load_project(str(ROOT))


def _calls(command: str) -> list[list[str]]:
    """The ``crmscore`` calls of a command line (``a && b``), as argument lists."""
    return [shlex.split(part) for part in command.split("&&")]


def _parse(argv: list[str]) -> None:
    """Parse ``argv`` as the CLI would, without running the command: with ``--help`` at the end,
    click reads every option (an unknown one is a usage error, exit 2) and then shows the help
    instead of running."""
    assert argv[0] == "crmscore", argv
    done = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert done.exit_code == 0, f"{shlex.join(argv)}: {' '.join(done.output.split())[-600:]}"


ENTRY_POINTS = sorted(_project()._entry_points)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_each_entry_point_is_a_call_of_the_cli(name: str, tmp_path: Path) -> None:
    entry = _project().get_entry_point(name)
    every = {p.name: SET.get(p.type, "x") for p in entry.parameters.values()}
    for params in ({}, every):
        for argv in _calls(entry.compute_command(params, str(tmp_path))):
            _parse(argv)


def test_a_blank_time_zone_is_none() -> None:
    from crmscore.features.validate import check_timezone

    assert check_timezone("") is None and check_timezone("  ") is None
    assert str(check_timezone("Europe/Berlin")) == "Europe/Berlin"


def test_mlflow_run_of_an_entry_point(tmp_path: Path) -> None:
    """``mlflow run . -e promote --env-manager local``: the entry point runs in this
    environment and is tracked as an MLflow run (an empty registry: nothing to promote)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "promote", "--env-manager", "local",
                           "--experiment-name", "mlproject-test"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = " ".join((done.stdout + done.stderr).split())
    assert "nothing to promote" in output, output[-2000:]
    assert "succeeded" in output, output[-2000:]
