"""``crmscore``: one Typer app composing features, training and serving.

Each command parses its options, calls one library function and writes the result;
the work itself lives in the library, so notebooks and MLproject entry points get the same.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    name="crmscore",
    help="Open scoring service for CRM: churn, propensity, credit risk, expected margin "
    "and Buttle's customer portfolio matrix.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(
    help="Build CRM bases from real data that ships inside installed packages.",
    no_args_is_help=True,
)
app.add_typer(datasets_app, name="datasets")

console = Console(stderr=True)
logger = logging.getLogger("crmscore")

# Exit codes shared by every command.
EXIT_INVALID_DATA = 1  # the input was read but fails its contract
EXIT_USAGE = 2  # a missing file or a bad option


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
) -> None:
    """Set up logging once, here, never at import time."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
        force=True,
    )
    for noisy in ("py4j", "urllib3", "alembic", "mlflow", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print an error a person can act on and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def parse_date(value: str, option: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise fail(f"{option} must be a date like 2024-10-01; got {value!r}") from None


AsOfOption = Annotated[str, typer.Option("--as-of", help="As-of date YYYY-MM-DD: events before this day are the past.")]
HorizonOption = Annotated[int, typer.Option("--horizon-days", help="Label horizon in days after the as-of date.")]


@app.command()
def version() -> None:
    """Print the crmscore version."""
    from crmscore import __version__

    typer.echo(__version__)


@app.command()
def contract() -> None:
    """Print the data contract of a CRM base (tables, columns, keys) as Markdown."""
    from crmscore.features.schema import describe_contract

    typer.echo(describe_contract())


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the base into (created if missing).")],
    customers: Annotated[int, typer.Option("--customers", help="Number of customers.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same bytes.")] = 1,
    truth_as_of: Annotated[
        list[str] | None,
        typer.Option("--truth-as-of", help="As-of date(s) to write the truth for (repeatable)."),
    ] = None,
    horizon_days: HorizonOption = 90,
    record: Annotated[bool, typer.Option(
        "--record", help="Also write the best prediction from the record at each --truth-as-of date "
                         "(see `crmscore truth --help`; ~2 ms a customer).")] = False,
) -> None:
    """Generate a synthetic CRM base (2022-2024) with its ground truth.

    Writes customers, transactions, invoices and interactions as Parquet, the latent traits
    to _truth/traits.parquet and, for each --truth-as-of date (default 2024-10-01), each
    customer's true churn, purchase, default probabilities and expected margin to
    _truth/truth_<as-of>_h<horizon>.parquet; with --record also the best prediction from the
    record to _truth/record_<as-of>_h<horizon>.parquet, which `crmscore train` then measures
    its models against as well.
    """
    from crmscore.features import synthetic

    dates = [parse_date(d, "--truth-as-of") for d in (truth_as_of or ["2024-10-01"])]
    try:
        base = synthetic.generate_base(customers, seed)
        synthetic.write_synthetic_base(base, out)
        for as_of in dates:
            truth = synthetic.compute_truth(base, as_of, horizon_days, seed=seed)
            synthetic.write_parquet_atomic(truth, synthetic.truth_path(out, as_of, horizon_days))
            if record:
                synthetic.write_parquet_atomic(synthetic.record_posterior(base, as_of, horizon_days, seed=seed),
                                               synthetic.truth_path(out, as_of, horizon_days, "record"))
    except ValueError as exc:
        raise fail(str(exc)) from None
    counts = ", ".join(f"{t.num_rows:,} {name}" for name, t in base.tables.items())
    logger.info("wrote %s to %s", counts, out)


@app.command()
def truth(
    base: Annotated[Path, typer.Option("--base", help="Folder of a base made by `crmscore generate`.")],
    as_of: AsOfOption,
    horizon_days: HorizonOption = 90,
    mc_paths: Annotated[int, typer.Option("--mc-paths", help="Monte Carlo paths for expected margin.")] = 200,
    record: Annotated[bool, typer.Option(
        "--record", help="Also write the best prediction from the record (the generator's posterior given "
                         "what a model can see; ~2 ms a customer) to _truth/record_<as-of>_h<horizon>.parquet.")] = False,
) -> None:
    """Write the ground truth of a synthetic base for another as-of date and horizon.

    The truth is each probability given the customer's latent traits; with --record also the
    best any model of the record can do (P(churn), P(purchase), P(default), E[margin] given it), the
    reference to compare a model with when the traits are only partly in the record.
    """
    from crmscore.features import synthetic

    when = parse_date(as_of, "--as-of")
    try:
        loaded = synthetic.load_synthetic_base(base)
        tables = {"truth": synthetic.compute_truth(loaded, when, horizon_days, mc_paths=mc_paths)}
        if record:
            tables["record"] = synthetic.record_posterior(loaded, when, horizon_days)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    for what, table in tables.items():
        path = synthetic.truth_path(base, when, horizon_days, what)
        synthetic.write_parquet_atomic(table, path)
        logger.info("wrote the %s of %d customers to %s", what, len(table), path)


@app.command()
def validate(
    base: Annotated[Path, typer.Option("--base", help="Folder holding the base's Parquet or CSV files.")],
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Events on or after this day are errors (default: after today)."),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Folder for report.md, report.json and rejects/ (default BASE/_validation)."),
    ] = None,
    timezone: TimezoneOption = None,
) -> None:
    """Check a base against the data contract; write a report and the rejected rows.

    Exit code 0 when the base is valid, 1 when rows or tables fail the contract
    (see the report and rejects/<table>.parquet), 2 when the base cannot be read.
    """
    from crmscore.features.io import BaseNotFoundError
    from crmscore.features.validate import validate_base, write_report

    when = parse_date(as_of, "--as-of") if as_of else None
    try:
        result = validate_base(base, as_of=when, timezone=timezone)
    except (BaseNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    report_path = report or Path(base) / "_validation"
    write_report(result, report_path)
    for name, n in result.row_counts.items():
        rejected = len(result.rejects.get(name, ()))
        logger.info("%s: %d rows read, %d rejected", name, n, rejected)
    if result.return_lines:
        logger.info("transactions: %d returns or credit notes (netted against revenue and margin; not purchases)",
                    result.return_lines)
    if result.credit_notes:
        logger.info("invoices: %d credit notes (lowering the outstanding balance while open; not invoices)",
                    result.credit_notes)
    if not result.ok:
        for problem in result.problems:
            console.print(f"[red]✗[/] {problem.message()}", highlight=False)
        raise fail(
            f"{len(result.problems)} problem(s) in {base}; report and rejected rows in {report_path}",
            EXIT_INVALID_DATA,
        )
    console.print(f"[green]✓[/] {base} satisfies the data contract (report in {report_path})")


@datasets_app.command("cdnow")
def datasets_cdnow(
    out: Annotated[Path, typer.Option("--out", help="Folder to write customers.parquet and transactions.parquet into.")],
    margin_rate: Annotated[
        float,
        typer.Option("--margin-rate", help="Assumed gross margin as a share of revenue, 0 to 1; cost = revenue x (1 - margin rate)."),
    ] = 0.30,
) -> None:
    """Write the CDNOW base: 23,570 customers who first bought at CDNOW in Q1 1997 and
    their 69,659 purchases to June 1998 (Fader, Hardie & Lee 2005).

    The data ships inside the 'lifetimes' package (bench extra: pip install 'crmscore[bench]');
    nothing is downloaded. CDNOW records revenue only, so cost is an assumption: a flat 30%
    gross margin by default. Benchmark protocol: as of 1997-10-01, horizon 273 days.
    """
    from crmscore.features.datasets import DatasetUnavailableError, write_cdnow_base

    try:
        base = write_cdnow_base(out, margin_rate=margin_rate)
    except DatasetUnavailableError as exc:
        raise fail(str(exc), EXIT_INVALID_DATA) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    logger.info(
        "wrote %d customers and %d transactions to %s", len(base.customers), len(base.transactions), out
    )


# --- features -----------------------------------------------------------------------------


TimezoneOption = Annotated[
    str | None,
    typer.Option("--timezone",
                 help="The company's time zone (IANA, e.g. Europe/Berlin): timestamps with an offset (+02:00, Z) "
                      "are converted to its local time. Without it they fail the contract."),
]
SetAsideOption = Annotated[
    bool,
    typer.Option("--set-aside-rejects",
                 help="Go on with the rows that pass the data contract; the rejected ones and the report go to "
                      "BASE/_validation (as `crmscore validate` writes them). A missing table or column, or a "
                      "table whose every row fails, still stops."),
]


@app.command()
def features(
    base: Annotated[Path, typer.Option("--base", help="Folder of the base (Parquet or CSV).")],
    as_of: AsOfOption,
    out: Annotated[Path, typer.Option("--out", help="Snapshot Parquet file to write.")],
    horizon_days: HorizonOption = 90,
    engine: Annotated[str, typer.Option("--engine", help="local (pandas, chunked, both cores) or spark.")] = "local",
    master: Annotated[str | None, typer.Option("--master", help="Spark master URL (default local[*]).")] = None,
    labels: Annotated[
        bool | None, typer.Option("--labels/--no-labels", help="Add labels (default: when the horizon is observed).")
    ] = None,
    catalogue: Annotated[bool, typer.Option("--catalogue", help="Print the feature catalogue and exit.")] = False,
    set_aside_rejects: SetAsideOption = False,
    timezone: TimezoneOption = None,
) -> None:
    """Build a point-in-time feature snapshot: one row per customer known at --as-of.

    Features read only events before the as-of date; labels (churn, purchase per category,
    default, margin) describe [as-of, as-of + horizon) and are added when that is observed.
    """
    from crmscore.features.io import BaseNotFoundError, write_snapshot
    from crmscore.features.pipeline import build_snapshot, render_catalogue
    from crmscore.features.validate import BaseValidationError, load_base

    if catalogue:
        typer.echo(render_catalogue())
        return
    when = parse_date(as_of, "--as-of")
    try:
        loaded = load_base(base, set_aside_rejects=set_aside_rejects, timezone=timezone)
        snapshot = build_snapshot(loaded, when, horizon_days, engine=engine, master=master, with_labels=labels)
    except BaseNotFoundError as exc:
        raise fail(str(exc)) from None
    except BaseValidationError as exc:
        raise fail(f"{base} fails the data contract; run `crmscore validate --base {base}` for the report "
                   f"(or --set-aside-rejects to go on without the rejected rows):\n{exc}", EXIT_INVALID_DATA) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    write_snapshot(snapshot, when, out, set_aside=loaded.set_aside)
    logger.info("wrote %d customers x %d columns to %s", len(snapshot), snapshot.shape[1], out)


# --- training -----------------------------------------------------------------------------

KindOption = Annotated[
    str, typer.Option("--kind", help="churn, propensity, credit_risk, expected_margin or all.")
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML file of training settings (see training/config.py).")
]


def _load_training_config(config: Path | None, **overrides: object):
    from pydantic import ValidationError

    from crmscore.training.config import load_config

    try:
        loaded = load_config(config)
        updates = {k: v for k, v in overrides.items() if v is not None}
        return loaded.model_validate({**loaded.model_dump(), **updates}) if updates else loaded
    except ValidationError as exc:
        raise fail(f"invalid training settings: {exc}") from None
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None


def _kinds(kind: str):
    from crmscore.training.kinds import parse_kinds

    try:
        return parse_kinds(kind)
    except ValueError as exc:
        raise fail(str(exc)) from None


@app.command()
def train(
    base: Annotated[Path, typer.Option("--base", help="Folder of the base to learn from.")],
    kind: KindOption = "all",
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Out-of-time test as-of date (default: the latest with an observed horizon).")
    ] = None,
    horizon_days: Annotated[int | None, typer.Option("--horizon-days", help="Label horizon in days (default 90).")] = None,
    train_snapshots: Annotated[int | None, typer.Option("--train-snapshots", help="Monthly as-of dates to stack (default 12).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="Feature engine: local or spark.")] = "local",
    master: Annotated[str | None, typer.Option("--master", help="Spark master URL.")] = None,
    config: ConfigOption = None,
    set_aside_rejects: SetAsideOption = False,
    timezone: TimezoneOption = None,
) -> None:
    """Train, evaluate and register models in MLflow (experiments and models crm-<kind>).

    Stacked monthly snapshots, out-of-time test on the latest as-of, LightGBM with early
    stopping beside a scikit-learn baseline, calibrated probabilities, reason codes.
    Then run `crmscore promote` to make the new versions champions.
    """
    from crmscore.features.io import BaseNotFoundError
    from crmscore.features.validate import BaseValidationError
    from crmscore.training.jobs import ORACLE_GOALS, train_job

    kinds = _kinds(kind)
    settings = _load_training_config(config, horizon_days=horizon_days, train_snapshots=train_snapshots)
    when = parse_date(as_of, "--as-of") if as_of else None
    try:
        report = train_job(base, kinds, settings, test_as_of=when, engine=engine, master=master,
                           set_aside_rejects=set_aside_rejects, timezone=timezone)
    except BaseNotFoundError as exc:
        raise fail(str(exc)) from None
    except BaseValidationError as exc:
        raise fail(f"{base} fails the data contract; run `crmscore validate --base {base}`:\n{exc}", EXIT_INVALID_DATA) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    from rich.table import Table

    table = Table(title="Trained models (out-of-time test)")
    for column in ("model", "version", "headline", "baseline", "calibration", "vs. the truth"):
        table.add_column(column)
    for r in report.models:
        m = r.evaluation.metrics
        if r.kind.value == "expected_margin":
            head = f"RMSE {m['rmse']:.2f}, top-20% capture {m['top20_capture']:.3f}"
            base_txt = f"RMSE {m.get('baseline_rmse', float('nan')):.2f}"
            cal = f"aggregate {m['aggregate_error']:+.1%}"
            ratio, goal = "rmse_ratio", f"RMSE ratio {{:.3f}} (goal <= {ORACLE_GOALS['rmse_ratio']})"
        elif r.kind.value == "propensity":
            head = f"mean AUC {m['mean_auc']:.3f}"
            base_txt = "-"
            cal = f"mean ECE {m['mean_ece']:.4f}"
            ratio, goal = "mean_auc_ratio", f"AUC ratio {{:.3f}} (goal >= {ORACLE_GOALS['auc_ratio']})"
        else:
            head = f"AUC {m['auc']:.3f}" + (f", KS {m['ks']:.3f}" if "ks" in m else "")
            base_txt = f"AUC {m.get('baseline_auc', float('nan')):.3f}"
            ratio, goal = "auc_ratio", f"AUC ratio {{:.3f}} (goal >= {ORACLE_GOALS['auc_ratio']})"
            cal = f"ECE {m['ece']:.4f}"
            if f"oracle_{ratio}" in m:  # the goals are the synthetic base's (BENCHMARKS.md)
                cal += f" (goal <= {ORACLE_GOALS['ece']})"
        # against the truth (synthetic bases), and the record's best when it was written
        oracle = goal.format(m[f"oracle_{ratio}"]) if f"oracle_{ratio}" in m else "-"
        if f"record_{ratio}" in m:
            oracle += f"; {m[f'record_{ratio}']:.3f} of the record's best"
        table.add_row(r.kind.registered_name, str(r.run.version if r.run else "-"), head, base_txt, cal, oracle)
    out = Console(width=max(console.width, 140))
    out.print(table)
    for skipped, reason in report.skipped.items():
        out.print(f"{skipped.registered_name}: not trained: {reason} (batch scoring and the API leave its scores empty)",
                  highlight=False)


@app.command()
def promote(
    kind: KindOption = "all",
    version: Annotated[str | None, typer.Option("--version", help="Version to promote (default: the newest).")] = None,
    config: ConfigOption = None,
) -> None:
    """Move alias 'champion' to the newest version, if it is not worse than the current one.

    Both are scored on the challenger's out-of-time test data; the first version is promoted.
    """
    from crmscore.training.jobs import promote_job

    settings = _load_training_config(config)
    for d in promote_job(_kinds(kind), settings, version=version):
        if d.challenger is None:
            Console().print(f"{d.kind.registered_name}: [yellow]nothing to promote[/]: {d.reason}", highlight=False)
            continue
        mark = "[green]promoted[/]" if d.promoted else "[yellow]kept[/]"
        champion = d.champion or "none"
        Console().print(f"{d.kind.registered_name}: {mark} version {d.challenger} (champion was {champion}): {d.reason}", highlight=False)


@app.command("fit-table")
def fit_table_command(
    kind: Annotated[str, typer.Argument(help="churn, propensity, credit_risk or expected_margin.")],
    train_file: Annotated[Path, typer.Option("--train", help="Training table, CSV or Parquet, one row per customer.")],
    target: Annotated[str, typer.Option("--target", help="Target column.")],
    positive: Annotated[str | None, typer.Option("--positive", help="Positive class when the target holds labels.")] = None,
    id_column: Annotated[str | None, typer.Option("--id", help="Id column (kept out of the features).")] = None,
    test_file: Annotated[Path | None, typer.Option("--test", help="Test table with the same columns.")] = None,
    predictions: Annotated[Path | None, typer.Option("--predictions", help="Write id,score for every test row (CSV).")] = None,
    metrics: Annotated[Path | None, typer.Option("--metrics", help="Write validation and test metrics (JSON).")] = None,
    reasons: Annotated[bool, typer.Option(
        "--reasons", help="Add each test row's top 3 reason codes and texts to --predictions (TreeSHAP).")] = False,
    config: ConfigOption = None,
) -> None:
    """Learn a model from your own featurised customer table, tracked in MLflow.

    Text columns are categoricals unless every value is a number ($1,169, 10.65%) or a date.

    Blanks, '?' and NA markers are missing; ';' CSVs with decimal commas are read as such.

    The target may be 0/1, bool, yes/no or labels (then --positive), or amounts for margin.

    Score = probability of the positive class, or the predicted value for expected_margin.
    """
    from crmscore.bundle import ModelKind
    from crmscore.training.table import fit_table_job
    from crmscore.training.train import describe_choice

    try:
        model_kind = ModelKind.parse(kind)
    except ValueError as exc:
        raise fail(str(exc)) from None
    # options that cannot work together fail before the fit, not after it
    if predictions is not None and test_file is None:
        raise fail("--predictions needs --test: predictions are written for the test rows")
    if reasons and predictions is None:
        raise fail("--reasons needs --predictions: the reasons are written beside each test row's score")
    settings = _load_training_config(config)
    try:
        result = fit_table_job(model_kind, train_file, target, positive=positive, id_column=id_column,
                               test_path=test_file, predictions_path=predictions, metrics_path=metrics,
                               config=settings, reasons=reasons)
    except ValueError as exc:
        raise fail(str(exc), EXIT_INVALID_DATA) from None
    logger.info("model: %s", describe_choice(result.bundle.info))
    for split in ("validation", "test"):
        values = result.metrics.get(split, {})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float) and k in
                          ("auc", "ece", "brier", "rmse", "mae", "spearman", "top20_capture"))
        if shown:
            logger.info("%s: %s", split, shown)
    if result.metrics.get("suspected_leaks"):
        logger.warning("suspected leaks (columns that predict the target perfectly): %s",
                       ", ".join(result.metrics["suspected_leaks"]))
    logger.info("MLflow run %s", result.run_id)


# --- serving ------------------------------------------------------------------------------


@app.command()
def score(
    features_file: Annotated[Path, typer.Option("--features", help="Feature snapshot (Parquet) from `crmscore features`.")],
    out: Annotated[Path, typer.Option("--out", help="Scores output: a Parquet file (local) or folder (spark).")],
    engine: Annotated[str, typer.Option("--engine", help="local (default) or spark.")] = "local",
    master: Annotated[str | None, typer.Option("--master", help="Spark master URL (default local[*]).")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Customers per chunk: bounds memory.")] = 100_000,
    reasons: Annotated[
        str, typer.Option("--reasons", help="Reason codes for: all customers, those with a triggered action, or none.")
    ] = "actions",
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="Local engine: chunks scored at a time, on threads (scores) and worker processes (placement); 0 = one per core.")
    ] = 0,
    policy: Annotated[Path | None, typer.Option("--policy", help="Portfolio policy YAML (default: the packaged one).")] = None,
) -> None:
    """Score the whole base with the champion models: scores, CLV, quadrant, actions, reasons.

    Resumable: a run killed part-way and started again continues from its finished chunks;
    the output appears only when complete.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from crmscore.features.io import snapshot_set_aside
    from crmscore.serving.batch.job import score_base
    from crmscore.serving.batch.local import BatchError
    from crmscore.serving.policy import PolicyError, load_policy
    from crmscore.serving.registry import LoadError

    try:
        loaded_policy = load_policy(policy)
    except (PolicyError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False, disable=engine != "local") as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                label = {"score": "scoring chunks", "place": "placing in the portfolio"}[phase]
                tasks[phase] = bar.add_task(label, total=total)
            bar.update(tasks[phase], completed=done)

        try:
            result = score_base(features_file, out, policy=loaded_policy, engine=engine, master=master,
                                chunk_rows=chunk_rows, reasons=reasons, workers=workers, progress=progress)
        except KeyError as exc:  # the snapshot lacks features the models read (str() would quote it)
            raise fail(exc.args[0] if exc.args else str(exc), EXIT_INVALID_DATA) from None
        except (FileNotFoundError, LookupError, ValueError, LoadError) as exc:
            raise fail(str(exc)) from None
        except BatchError as exc:
            raise fail(str(exc), EXIT_INVALID_DATA) from None
    versions = ", ".join(f"{k} v{v}" for k, v in result.versions.items())
    logger.info("scores written to %s (models: %s; policy %s)", out, versions, result.cutoffs.label)
    set_aside = snapshot_set_aside(features_file)
    if set_aside not in (None, "none"):
        logger.warning("the snapshot was built without rows of the base that fail the data contract "
                       "(%s set aside; their report is in the base's _validation folder)", set_aside)


@app.command()
def portfolio(
    scores: Annotated[Path, typer.Option("--scores", help="Scores from `crmscore score` (Parquet file or folder, or CSV).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html, report.md, plots and tables.")],
    previous: Annotated[Path | None, typer.Option("--previous", help="An earlier scoring, for quadrant migration.")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Portfolio policy YAML (default: the packaged one).")] = None,
) -> None:
    """Write the customer portfolio report: quadrants, 80/20, value bands, migration, actions."""
    from crmscore.serving.policy import PolicyError
    from crmscore.serving.report import run_portfolio

    try:
        run = run_portfolio(scores, out, previous_path=previous, policy_path=policy)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    except PolicyError as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        raise fail(str(exc), EXIT_INVALID_DATA) from None
    counts = ", ".join(f"{q} {n:,}" for q, n in run.quadrant_counts.items())
    logger.info("portfolio: %s", counts)
    console.print(f"report: {run.report_path}", highlight=False, soft_wrap=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="uvicorn worker processes.")] = 1,
    snapshot: Annotated[
        Path | None, typer.Option("--snapshot", help="Feature snapshot for id lookups (default HOME/snapshot.parquet; env CRMSCORE_SNAPSHOT_PATH).")
    ] = None,
    scores: Annotated[
        Path | None, typer.Option("--scores", help="Last batch scoring: cached reasons, cut-offs, portfolio summary (env CRMSCORE_SCORES_PATH).")
    ] = None,
    keys_file: Annotated[
        Path | None, typer.Option("--keys-file", help="API keys file (default HOME/keys.json; env CRMSCORE_KEYS_FILE).")
    ] = None,
) -> None:
    """Serve the scoring API (FastAPI under uvicorn): /v1/..., /docs, /health/*, /metrics.

    Loads the champion models, the snapshot and the last batch scoring once; reload them
    without a restart with POST /v1/admin/reload (admin key).
    """
    from pydantic import ValidationError

    from crmscore.serving.api.app import run_server
    from crmscore.serving.settings import ServingSettings

    overrides = {k: v for k, v in {"snapshot_path": snapshot, "scores_path": scores, "keys_file": keys_file}.items() if v is not None}
    try:
        settings = ServingSettings(**overrides)
    except ValidationError as exc:
        raise fail(f"invalid serving settings: {exc}") from None
    console.print(
        f"serving on http://{host}:{port}  (docs: http://{host}:{port}/docs)\n"
        f"try: curl -H 'X-API-Key: <key>' http://{host}:{port}/v1/customers/<customer_id>/scores",
        highlight=False, soft_wrap=True,
    )
    run_server(settings, host=host, port=port, workers=workers)


keys_app = typer.Typer(help="API keys for `crmscore serve` (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option("--scope", help="reader (scores) or admin (also /v1/admin/*).")] = "reader",
    keys_file: Annotated[
        Path | None, typer.Option("--keys-file", help="Keys file (default HOME/keys.json; env CRMSCORE_KEYS_FILE).")
    ] = None,
) -> None:
    """Create an API key: printed once, on the last line; only its hash is stored."""
    from crmscore.serving.security import create_key
    from crmscore.serving.settings import ServingSettings

    path = keys_file or ServingSettings().keys_file
    try:
        key = create_key(scope, path)
    except ValueError as exc:
        raise fail(str(exc)) from None
    console.print(f"created a new {scope} key in {path}; it is shown once, keep it safe:", highlight=False, soft_wrap=True)
    typer.echo(key)


if __name__ == "__main__":
    app()
