"""The portfolio-analysis notebook runs top to bottom on the venv's Python.

The kernel is pinned: a kernelspec named ``python3`` whose argv is this interpreter
(``sys.executable``) is put first on ``JUPYTER_PATH``, so a ``python3`` kernel installed
elsewhere for the user cannot shadow it; the notebook prints the interpreter and where it
imported ``crmscore`` from, and the test checks both.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from crmscore.serving.portfolio import make_demo_scores

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "portfolio_analysis.ipynb"

pytestmark = pytest.mark.slow


@pytest.fixture()
def venv_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (crmscore venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet debugger warning
    return "python3"


def execute(work_dir: Path, kernel_name: str, parameters: str = "") -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n" + parameters
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=60,
        resources={"metadata": {"path": str(work_dir)}},
    )
    client.execute()
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    out = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            out.append(output.get("text", ""))
            out.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        for output in cell.get("outputs", [])
    )


def test_notebook_runs_on_demo_scores(tmp_path: Path, venv_kernel: str) -> None:
    started = time.perf_counter()
    nb = execute(tmp_path, venv_kernel)
    assert time.perf_counter() - started < 60
    text = _text(nb)
    assert f"python  : {sys.executable}" in text
    crmscore_line = next(line for line in text.splitlines() if line.startswith("crmscore:"))
    assert Path(crmscore_line.split(":", 1)[1].strip()).resolve().is_relative_to(ROOT)
    assert "2,000 customers from demo scores" in text
    assert _images(nb) >= 4  # quadrants, pareto, value bands, actions
    assert (tmp_path / "portfolio_report" / "report.html").is_file()
    assert (tmp_path / "portfolio_report" / "quadrants.png").stat().st_size > 20_000


def test_notebook_runs_on_a_scores_file_with_a_previous_scoring(
    tmp_path: Path, venv_kernel: str
) -> None:
    make_demo_scores(600, random_state=1).to_parquet(tmp_path / "scores.parquet")
    make_demo_scores(600, random_state=2).to_csv(tmp_path / "previous.csv", index=False)
    nb = execute(
        tmp_path,
        venv_kernel,
        'scores_path = "scores.parquet"\nprevious_path = "previous.csv"\nout_dir = "out"',
    )
    text = _text(nb)
    assert "600 customers from scores.parquet" in text
    assert _images(nb) >= 5  # and the migration heat map
    assert (tmp_path / "out" / "migration.png").is_file()
