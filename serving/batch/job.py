"""``crmscore score``: load the champions, pick the engine, score the whole base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crmscore.bundle import setup_tracking
from crmscore.serving.batch.chunks import ReasonsMode
from crmscore.serving.batch.local import Progress, run_local
from crmscore.serving.policy import Cutoffs, Policy, load_policy
from crmscore.serving.registry import load_champions  # the server's loader: one rule for both
from crmscore.serving.scoring import ModelSet

ENGINES = ("local", "spark")


@dataclass(frozen=True)
class BatchResult:
    out_path: Path
    cutoffs: Cutoffs
    versions: dict[str, str]


def score_base(
    snapshot_path: Path,
    out_path: Path,
    *,
    models: ModelSet | None = None,
    policy: Policy | None = None,
    engine: str = "local",
    master: str | None = None,
    chunk_rows: int = 100_000,
    reasons: str | ReasonsMode = ReasonsMode.ACTIONS,
    workers: int = 0,
    progress: Progress | None = None,
) -> BatchResult:
    """Score every customer of a feature snapshot with the champion models.

    Output: one row per customer with the four models' scores, CLV, current value, future
    potential, quadrant, flags, actions and reason codes, plus the model and policy versions.

    With more than one worker the local engine places customers in worker processes (started
    by a ``forkserver``), so a script that calls this must guard its entry point with
    ``if __name__ == "__main__":``, as for any use of :mod:`multiprocessing`; notebooks and
    ``crmscore score`` need nothing.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if not Path(snapshot_path).is_file() and not Path(snapshot_path).is_dir():
        raise FileNotFoundError(f"feature snapshot {snapshot_path} does not exist")
    reasons = ReasonsMode.parse(reasons) if isinstance(reasons, str) else reasons
    if models is None:
        setup_tracking()
        models = load_champions()
    policy = policy or load_policy()
    if engine == "spark":
        from crmscore.serving.batch.spark import run_spark

        cutoffs = run_spark(snapshot_path, out_path, models, policy, reasons=reasons, master=master, chunk_rows=chunk_rows)
    else:
        cutoffs = run_local(snapshot_path, out_path, models, policy, reasons=reasons, chunk_rows=chunk_rows,
                            workers=workers, progress=progress)
    return BatchResult(Path(out_path), cutoffs, {k.value: v for k, v in models.versions.items()})
