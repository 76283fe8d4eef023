"""Training jobs: what ``crmscore train``, ``promote`` and ``fit-table`` do, end to end.

Each job reads its inputs, calls the pure fitting and evaluation functions, and hands the
results to ``tracking`` (the only MLflow caller). Notebooks call these same functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crmscore.bundle import ModelBundle, ModelKind
from crmscore.features.io import set_aside_text
from crmscore.training import evaluate as ev
from crmscore.training import tracking
from crmscore.training.config import TrainConfig
from crmscore.training.kinds import SPECS
from crmscore.training.split import (
    TEST_MAX_CUSTOMERS,
    TRUTH_MAX_CUSTOMERS,
    CustomerSample,
    choose_as_of_dates,
    evaluation_sample,
    training_sample,
    validation_mask,
)
from crmscore.training.train import (
    FeatureSet,
    PropensityTarget,
    fit_baseline,
    fit_bundle,
    infer_feature_set,
    predict_baseline,
)

logger = logging.getLogger(__name__)

ID_COLUMNS = ("customer_id", "as_of")
#: goals of ../shared/BENCHMARKS.md, printed beside the figures
ORACLE_GOALS = {"auc_ratio": 0.97, "ece": 0.01, "rmse_ratio": 1.05}


@dataclass
class Evaluation:
    """What one model scored on held-out data: metrics, plots and tables to log."""

    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class TrainedModel:
    kind: ModelKind
    bundle: ModelBundle
    evaluation: Evaluation
    run: tracking.RunRecord | None = None


@dataclass
class TrainReport:
    """What ``crmscore train`` did: the models it trained, and the kinds it left out and why."""

    models: list[TrainedModel]
    #: requested kinds the base cannot support (credit risk without invoices), with the reason
    skipped: dict[ModelKind, str] = field(default_factory=dict)


# --- evaluation ----------------------------------------------------------------------------


def _labels(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


#: what a model on a synthetic base is measured against: metric prefix -> column prefix of the
#: truth frame. The truth (``true_*``, given the latent traits) and, when written
#: (``crmscore truth --record``), the best prediction from the record (``record_*``)
REFERENCES = (("oracle", "true"), ("record", "record"))


def _reference_metric(prefix: str, key: str) -> str:
    """``oracle_auc_truth`` and ``record_auc_record``: the reference's own figure named by it."""
    return f"{prefix}_{key.replace('truth', 'record') if prefix == 'record' else key}"


def evaluate_bundle(
    bundle: ModelBundle,
    test: pd.DataFrame,
    *,
    label: str | None = None,
    targets: Sequence[PropensityTarget] = (),
    baseline: Any = None,
    features: FeatureSet | None = None,
    truth: pd.DataFrame | None = None,
    with_plots: bool = True,
) -> Evaluation:
    """Metrics (and plots) of ``bundle`` on ``test``, against the baseline and the truth if given.

    ``truth`` is indexed by ``customer_id`` with the synthetic generator's columns
    (``true_churn``, ``true_purchase_<c>``, ``true_default``, ``true_margin``: ``oracle_*``
    metrics) and, when joined in (:func:`join_record`), the best prediction from the record
    (``record_churn``, ``record_purchase_<c>``, ``record_default``, ``record_margin``:
    ``record_*`` metrics).
    """
    kind = bundle.kind
    out = Evaluation()
    if kind is ModelKind.PROPENSITY:
        return _evaluate_propensity(bundle, test, targets, truth, with_plots)
    label = label or SPECS[kind].label
    y_all = _labels(test, label)
    rows = test.loc[~np.isnan(y_all)]
    y = y_all[~np.isnan(y_all)]
    X = bundle.encode(rows)
    pred = bundle.predict(X)
    title = kind.value.replace("_", " ")
    if kind.is_classifier:
        out.metrics.update(ev.binary_metrics(y, pred))
        if kind is not ModelKind.CREDIT_RISK:
            out.metrics.pop("ks", None)
            out.metrics.pop("gini", None)
        if with_plots:
            out.figures.update(ev.plots(y, pred, title, "test", classifier=True, ks=kind is ModelKind.CREDIT_RISK))
            out.tables["importance"], out.figures["importance"] = ev.explained(bundle, X, title, "test")
        out.tables["lift"] = ev.lift_table(y, pred)
        if kind is ModelKind.CREDIT_RISK and bundle.scorecard is not None:
            points = bundle.scorecard.points(pred)
            grades = pd.Series(bundle.scorecard.grade(points))
            table = pd.DataFrame({"grade": grades, "default": y}).groupby("grade")["default"].agg(["count", "mean"])
            out.tables["grades"] = table.reset_index().rename(columns={"mean": "default_rate"})
    else:
        out.metrics.update(ev.regression_metrics(y, pred))
        positive_total = float(np.sum(y)) > 0  # deciles' shares and the aggregate error need one
        if not positive_total:
            logger.warning("%s: the test margins net to %g: no predicted-against-actual plot or lift table",
                           kind.value, float(np.sum(y)))
        if with_plots:
            if positive_total:
                out.figures.update(ev.plots(y, pred, title, "test", classifier=False))
            out.tables["importance"], out.figures["importance"] = ev.explained(bundle, X, title, "test")
        if positive_total:
            out.tables["lift"] = ev.lift_table(y, pred)
    if baseline is not None and features is not None:
        base_pred = predict_baseline(baseline, kind, rows, features)
        if kind.is_classifier:
            b = ev.binary_metrics(y, base_pred)
            out.metrics.update({"baseline_auc": b["auc"], "baseline_brier": b["brier"],
                                "auc_lift_over_baseline": out.metrics["auc"] - b["auc"]})
        else:
            b = ev.regression_metrics(y, base_pred)
            out.metrics.update({"baseline_rmse": b["rmse"], "baseline_spearman": b["spearman"],
                                "rmse_gain_over_baseline": b["rmse"] - out.metrics["rmse"]})
    if truth is not None:
        outcome = {"churn": "churn", "credit_risk": "default", "expected_margin": "margin"}[kind.value]
        for prefix, column in REFERENCES:
            if f"{column}_{outcome}" not in truth.columns:
                continue
            matched = truth[f"{column}_{outcome}"].reindex(rows["customer_id"].astype(str)).to_numpy(dtype=np.float64)
            ok = ~np.isnan(matched)
            if ok.sum() > 10:
                oracle = ev.oracle_ratios if kind.is_classifier else ev.regression_oracle_ratio
                r = oracle(y[ok], pred[ok], matched[ok])
                out.metrics.update({_reference_metric(prefix, k): v for k, v in r.items()})
    return out


def _evaluate_propensity(bundle, test, targets, truth, with_plots) -> Evaluation:
    out = Evaluation()
    X = bundle.encode(test)
    pred = bundle.predict(X)
    aucs, eces, truth_eces = [], [], []
    ratios: dict[str, list[float]] = {prefix: [] for prefix, _ in REFERENCES}
    stacked_y, stacked_p = [], []
    for j, t in enumerate(targets):
        y = _labels(test, t.label)
        ok = ~np.isnan(y)
        if len(np.unique(y[ok])) < 2:
            continue
        m = ev.binary_metrics(y[ok], pred[ok, j])
        slug = t.label.removeprefix("label_purchase_")
        out.metrics.update({f"{slug}_auc": m["auc"], f"{slug}_ece": m["ece"], f"{slug}_base_rate": m["base_rate"]})
        aucs.append(m["auc"])
        eces.append(m["ece"])
        stacked_y.append(y[ok])
        stacked_p.append(pred[ok, j])
        for prefix, column in REFERENCES:
            if truth is None or f"{column}_purchase_{t.category}" not in truth.columns:
                continue
            matched = truth[f"{column}_purchase_{t.category}"].reindex(test["customer_id"].astype(str)).to_numpy(dtype=np.float64)
            good = ok & ~np.isnan(matched)
            r = ev.oracle_ratios(y[good], pred[good, j], matched[good])
            out.metrics[f"{slug}_{prefix}_auc_ratio"] = r["auc_ratio"]
            ratios[prefix].append(r["auc_ratio"])
            if prefix == "oracle":
                # the truth's own ECE on these rows: the sampling-noise floor of the model's ECE
                out.metrics[f"{slug}_oracle_ece_truth"] = r["ece_truth"]
                truth_eces.append(r["ece_truth"])
    if aucs:
        out.metrics.update({"mean_auc": float(np.mean(aucs)), "mean_ece": float(np.mean(eces)),
                            "max_ece": float(np.max(eces))})
    for prefix, values in ratios.items():
        if values:
            out.metrics[f"{prefix}_mean_auc_ratio"] = float(np.mean(values))
            out.metrics[f"{prefix}_min_auc_ratio"] = float(np.min(values))
    if truth_eces:
        out.metrics["oracle_mean_ece_truth"] = float(np.mean(truth_eces))
    if stacked_y and with_plots:
        y, p = np.concatenate(stacked_y), np.concatenate(stacked_p)
        out.figures["calibration"] = ev.plot_calibration(y, p, "propensity: calibration, all categories (test)")
        out.figures["gain"] = ev.plot_gain(y, p, "propensity: gain, all categories (test)")
        out.tables["importance"], out.figures["importance"] = ev.explained(bundle, X, "propensity", "test")
    return out


# --- train ---------------------------------------------------------------------------------


#: target-specific propensity features: name -> customer column pattern per category slug
TARGET_FEATURE_PATTERNS = {
    "target_revenue_share_365d": "revenue_share_365d_{slug}",
    "target_days_since_last_purchase": "days_since_last_purchase_{slug}",
    "target_line_count_365d": "line_count_365d_{slug}",
    "target_line_count_lifetime": "line_count_lifetime_{slug}",
}


def propensity_targets(frame: pd.DataFrame, categories: Sequence[str]) -> list[PropensityTarget]:
    """One target per category, with the category's own columns of the customer features."""
    from crmscore.features.catalogue import category_slugs

    out = []
    for category, slug in zip(categories, category_slugs(categories), strict=True):
        own = {name: pattern.format(slug=slug) for name, pattern in TARGET_FEATURE_PATTERNS.items()}
        own = {name: column for name, column in own.items() if column in frame.columns}
        out.append(PropensityTarget(category, f"label_purchase_{slug}", own))
    return out


@dataclass
class TrainingData:
    """The stacked snapshots a training run learns from, and where they came from.

    ``samples`` holds the customer samples the snapshots were built for ("train", "test",
    "truth"; absent: every customer); :meth:`sampling` describes them for the run's record.
    """

    frame: pd.DataFrame
    train_dates: list[date]
    test_date: date
    features: FeatureSet
    categories: list[str]
    truth: pd.DataFrame | None = None
    samples: dict[str, CustomerSample] = field(default_factory=dict)
    #: rows of the base set aside because they fail the data contract, per table (``Base.set_aside``)
    set_aside: dict[str, int] = field(default_factory=dict)
    _parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None = field(default=None, init=False, repr=False)

    @property
    def labels(self) -> list[str]:
        return [c for c in self.frame.columns if c.startswith("label_")]

    def split(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Train, validation (by customer) and out-of-time test rows; computed once, then reused
        (each kind reads the same three frames, so they are not copied again per kind)."""
        if self._parts is None:
            as_of = self.frame["as_of"].to_numpy()
            test_at = np.datetime64(pd.Timestamp(self.test_date).to_datetime64(), "ns")
            in_history = as_of < test_at
            in_valid = validation_mask(self.frame["customer_id"])
            self._parts = (self.frame[in_history & ~in_valid], self.frame[in_history & in_valid],
                           self.frame[as_of == test_at])
        return self._parts

    def sampling(self) -> dict[str, str]:
        """One line per sample (train, test, truth): what the run learnt and was measured on."""
        out = {}
        for purpose, default in (("train", "every customer"), ("test", "every customer known at the test as-of"),
                                 ("truth", "every test customer")):
            sample = self.samples.get(purpose)
            out[purpose] = sample.describe() if sample is not None else f"{default} (not sampled)"
        return out


def prepare_training_data(
    base_path: Path,
    config: TrainConfig,
    *,
    test_as_of: date | None = None,
    engine: str = "local",
    master: str | None = None,
    test_max_customers: int = TEST_MAX_CUSTOMERS,
    truth_max_customers: int = TRUTH_MAX_CUSTOMERS,
    set_aside_rejects: bool = False,
    timezone: str | None = None,
) -> TrainingData:
    """Validate the base, stack the snapshots, and (synthetic bases) load the truth.

    On a large base the snapshots are built for seeded samples of customers, drawn before any
    feature is computed (``training.split``): the training snapshots for the customers whose
    training rows fill ``config.max_train_rows`` (the fits would sample down to it anyway), the
    test snapshot for at most ``test_max_customers`` customers known at the test as-of, the
    truth for at most ``truth_max_customers`` of those (a subset of the test sample). Below
    these caps nothing is sampled. Seeds: ``config.random_state``.
    """
    from crmscore.features.pipeline import (
        base_categories,
        build_training_frame,
        catalogue_specs,
        monthly_as_of_dates,
    )
    from crmscore.features.validate import load_base

    base = load_base(base_path, set_aside_rejects=set_aside_rejects, timezone=timezone)
    available = monthly_as_of_dates(base, config.horizon_days)
    train_dates, test_date = choose_as_of_dates(available, config.horizon_days, config.train_snapshots, test_as_of)
    logger.info("training on as-of %s; testing out of time on %s", ", ".join(map(str, train_dates)), test_date)
    customers = base.customers[["customer_id", "signup_date"]]
    drawn = {
        "train": training_sample(customers, train_dates, config.max_train_rows, config.random_state),
        "test": evaluation_sample(customers, test_date, test_max_customers, config.random_state),
        "truth": evaluation_sample(customers, test_date, truth_max_customers, config.random_state, "truth"),
    }
    samples = {purpose: sample for purpose, sample in drawn.items() if sample is not None}
    for purpose, sample in samples.items():
        logger.info("%s: %s", purpose, sample.describe())

    build = {"horizon_days": config.horizon_days, "engine": engine, "master": master}
    if "train" in samples or "test" in samples:
        parts = [build_training_frame(base, dates, customers=None if sample is None else sample.customer_ids, **build)
                 for dates, sample in ((train_dates, samples.get("train")), ([test_date], samples.get("test")))]
        frame = pd.concat(parts, ignore_index=True)
        del parts
    else:
        frame = build_training_frame(base, [*train_dates, test_date], **build)
    categories = list(base_categories(base))
    set_aside = dict(base.set_aside)
    del base, customers  # the base is the largest object alive; the truth reads its own copy
    descriptions = {s.name: s.phrase for s in catalogue_specs(categories)}
    descriptions.update({
        "target_category": "Product category scored",
        "target_revenue_share_365d": "Share of 365-day revenue in the scored category",
        "target_days_since_last_purchase": "Days since the last purchase in the scored category",
        "target_line_count_365d": "Purchases in the scored category over 365 days",
        "target_line_count_lifetime": "Purchases in the scored category before T",
    })
    labels = [c for c in frame.columns if c.startswith("label_")]
    features = infer_feature_set(frame, [*ID_COLUMNS, *labels], descriptions)
    truth_sample = samples.get("truth")
    truth = load_truth(base_path, test_date, config.horizon_days,
                       customers=None if truth_sample is None else truth_sample.customer_ids)
    return TrainingData(frame, train_dates, test_date, features, categories, truth, samples, set_aside)


def load_truth(
    base_path: Path, as_of: date, horizon_days: int, *, customers: pd.Series | None = None
) -> pd.DataFrame | None:
    """The synthetic generator's truth at (as_of, horizon), computed if not written; None for real bases.

    ``customers`` limits it to those ids: read from the written truth when there is one, else
    computed for them only (``compute_truth`` costs ~1 ms per customer; not written, as it is
    not the whole base's truth). The best prediction from the record (``record_*`` columns,
    ``synthetic.record_posterior``) is joined in when written (``crmscore truth --record``):
    :func:`evaluate_bundle` then measures each model against it as well (``record_*`` metrics).
    """
    from crmscore.features import synthetic

    traits = Path(base_path) / "_truth" / "traits.parquet"
    if not traits.is_file():
        return None
    truth = _compute_or_read_truth(base_path, as_of, horizon_days, customers)
    record_path = synthetic.truth_path(base_path, as_of, horizon_days, "record")
    if record_path.is_file():  # written by `crmscore truth --record`: measured against it too
        truth = join_record(truth, pd.read_parquet(record_path))
    return truth


def join_record(truth: pd.DataFrame, record: pd.DataFrame) -> pd.DataFrame:
    """``truth`` (indexed by customer id) with the ``record_*`` columns of
    ``synthetic.record_posterior``'s frame joined in: :func:`evaluate_bundle` then measures each
    model against the best prediction from the record as well as against the truth."""
    record = record.drop(columns=["record_ess", "record_spend", "record_credit"], errors="ignore")  # checks, not predictions
    record = record.assign(customer_id=record["customer_id"].astype(str))
    return truth.join(record.set_index("customer_id"), how="left")


def _compute_or_read_truth(
    base_path: Path, as_of: date, horizon_days: int, customers: pd.Series | None
) -> pd.DataFrame:
    from crmscore.features import synthetic

    path = synthetic.truth_path(base_path, as_of, horizon_days)
    if path.is_file():
        truth = pd.read_parquet(path)
        if customers is not None:
            truth = truth[truth["customer_id"].astype(str).isin(set(customers))]
    elif customers is not None:
        truth = synthetic.compute_truth(synthetic.load_synthetic_base(base_path).restrict(customers),
                                        as_of, horizon_days)
    else:
        truth = synthetic.compute_truth(synthetic.load_synthetic_base(base_path), as_of, horizon_days)
        synthetic.write_parquet_atomic(truth, path)
    truth["customer_id"] = truth["customer_id"].astype(str)
    return truth.set_index("customer_id")


def missing_input(kind: ModelKind, data: TrainingData) -> str | None:
    """Why the base cannot train ``kind``, or None. Invoices are optional in the data contract,
    and without them there is no default to learn from: no credit-risk model, and batch scoring
    and the API leave credit scores empty (``serving.registry.OPTIONAL_KINDS``)."""
    if kind is ModelKind.CREDIT_RISK and SPECS[kind].label not in data.frame.columns:
        return "the credit-risk model needs an invoices table in the base; this base has none"
    return None


def fit_kind(kind: ModelKind, data: TrainingData, config: TrainConfig, *, with_plots: bool = True) -> TrainedModel:
    """Fit, evaluate (test, baseline, oracle) one kind on prepared data. No MLflow."""
    if (missing := missing_input(kind, data)) is not None:
        raise ValueError(missing)
    train, valid, test = data.split()
    targets = propensity_targets(data.frame, data.categories) if kind is ModelKind.PROPENSITY else []
    cap = config.max_train_rows // max(1, len(targets))
    if len(train) > cap:
        logger.info("%s: training on a seeded sample of %d of %d rows (max_train_rows)", kind.value, cap, len(train))
        train = train.sample(n=cap, random_state=config.random_state).sort_index()
    bundle = fit_bundle(kind, train, valid, data.features, config, targets=targets)
    baseline = None
    if kind is not ModelKind.PROPENSITY:
        baseline = fit_baseline(kind, train, data.features, SPECS[kind].label, config)
    evaluation = evaluate_bundle(bundle, test, targets=targets, baseline=baseline, features=data.features,
                                 truth=data.truth, with_plots=with_plots)
    bundle.metrics = dict(evaluation.metrics)
    bundle.info.update({"train_as_of": [str(d) for d in data.train_dates], "test_as_of": str(data.test_date)})
    return TrainedModel(kind, bundle, evaluation)


def train_job(
    base_path: Path,
    kinds: Sequence[ModelKind],
    config: TrainConfig,
    *,
    test_as_of: date | None = None,
    engine: str = "local",
    master: str | None = None,
    home: Path | None = None,
    register: bool = True,
    test_max_customers: int = TEST_MAX_CUSTOMERS,
    truth_max_customers: int = TRUTH_MAX_CUSTOMERS,
    set_aside_rejects: bool = False,
    timezone: str | None = None,
) -> TrainReport:
    """``crmscore train``: fit each kind, log and register it in MLflow.

    A kind the base cannot support (:func:`missing_input`: credit risk without invoices) is
    left out with a warning when other kinds were asked for too (``--kind all`` on a base
    without invoices trains the other three), and is an error, raised before anything is
    fitted or registered, when it is all that was asked for.

    The customer samples of large bases (:func:`prepare_training_data`) are logged with every
    run: params ``train_customers``, ``test_customers``, ``truth_customers``, ``sample_seed``,
    ``<train|test|truth>_sampled`` and tags ``crmscore.data.sample.<train|test|truth>``.
    """
    data = prepare_training_data(base_path, config, test_as_of=test_as_of, engine=engine, master=master,
                                 test_max_customers=test_max_customers, truth_max_customers=truth_max_customers,
                                 set_aside_rejects=set_aside_rejects, timezone=timezone)
    skipped = {kind: reason for kind in kinds if (reason := missing_input(kind, data)) is not None}
    if skipped and len(skipped) == len(kinds):
        raise ValueError("; ".join(skipped.values()))
    for kind, reason in skipped.items():
        logger.warning("%s not trained: %s", kind.registered_name, reason)
    kinds = [kind for kind in kinds if kind not in skipped]
    tracking.setup_tracking(home)
    identity = {
        "crmscore.data.base": str(Path(base_path).resolve()),
        "crmscore.data.train_as_of": ",".join(map(str, data.train_dates)),
        "crmscore.data.test_as_of": str(data.test_date),
        "crmscore.data.rows": str(len(data.frame)),
        "crmscore.data.hash": tracking.frame_fingerprint(data.frame),
        "crmscore.data.truth": "yes" if data.truth is not None else "no",
        # rows that failed the data contract and were left out (--set-aside-rejects)
        "crmscore.data.set_aside": set_aside_text(data.set_aside),
        # the customer samples the snapshots were built for (training.split): what the run
        # learnt from and what its test metrics and logged test frame measure
        **{f"crmscore.data.sample.{purpose}": line for purpose, line in data.sampling().items()},
        # governance: the code and the whole training configuration behind the version, and the
        # scoring policy baked into the bundle (scorecard anchors, CLV horizon and discount rate);
        # the portfolio policy is applied at scoring time and recorded with every scored row
        "crmscore.code_version": tracking.code_version(),
        "crmscore.train_config": config.model_dump_json(),
        "crmscore.scoring_policy": (
            f"scorecard {config.scorecard.base_points:g} points at {config.scorecard.base_odds:g}:1, "
            f"{config.scorecard.pdo:g} to double; clv {config.clv.years:g} years at "
            f"{config.clv.discount_rate:g} discount"
        ),
    }
    train, valid, test = data.split()
    sampled = {"sample_seed": config.random_state,  # customers of the training snapshots, validation included
               "train_customers": int(train["customer_id"].nunique() + valid["customer_id"].nunique()),
               "test_customers": len(test),
               "truth_customers": 0 if data.truth is None else len(data.truth),
               **{f"{purpose}_sampled": purpose in data.samples for purpose in ("train", "test", "truth")}}
    # Every kind is fitted before any is logged: a kind that cannot be fitted (a constant label,
    # too few rows) stops the run with the registry as it was, not with the kinds before it
    # registered and those after it never trained.
    fitted: list[TrainedModel] = []
    for kind in kinds:
        try:
            fitted.append(fit_kind(kind, data, config))
        except ValueError as exc:
            for model in fitted:
                _close(model.evaluation.figures)
            raise ValueError(f"{kind.value}: {exc}; nothing was registered") from exc
    for model in fitted:
        kind = model.kind
        params = {"horizon_days": config.horizon_days, "train_snapshots": len(data.train_dates),
                  **config.lightgbm.model_dump(), "trees": model.bundle.booster.num_trees(),
                  "features": len(data.features.names), **sampled}
        if kind is ModelKind.CREDIT_RISK:
            params.update({f"scorecard_{k}": v for k, v in config.scorecard.model_dump().items()})
        if kind is ModelKind.EXPECTED_MARGIN:
            params.update({f"clv_{k}": v for k, v in config.clv.model_dump().items()})
        keep = [c for c in test.columns if c in data.features.names or c in ID_COLUMNS or c.startswith("label_")]
        model.run = tracking.log_run(
            model.bundle, params=params, metrics=model.evaluation.metrics, tags=identity,
            figures=model.evaluation.figures, input_example=test[data.features.names],
            test_frame=test[keep], tables=model.evaluation.tables, register=register, home=home,
            run_name=f"{kind.value}-{data.test_date}",
        )
        _close(model.evaluation.figures)
    return TrainReport(fitted, skipped)


def _close(figures: dict[str, Any]) -> None:
    for fig in figures.values():
        fig.clear()


# --- promote -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionDecision:
    kind: ModelKind
    challenger: str | None
    champion: str | None
    promoted: bool
    reason: str


def headline(kind: ModelKind, metrics: dict[str, float]) -> float:
    return float(metrics[SPECS[kind].headline])


def decide(kind: ModelKind, challenger: float, champion: float, config: TrainConfig) -> tuple[bool, str]:
    """The promotion gate: not worse than the champion beyond the tolerance (pure)."""
    spec = SPECS[kind]
    name = spec.headline
    if spec.higher_is_better:
        ok = challenger >= champion - config.auc_tolerance
        bound = f"tolerance {config.auc_tolerance}"
    else:
        ok = challenger <= champion * (1 + config.rmse_tolerance)
        bound = f"tolerance {config.rmse_tolerance:.0%}"
    verdict = "not worse than" if ok else "worse than"
    return ok, (f"{name} {challenger:.4f} (challenger) vs {champion:.4f} (champion) on the same "
                f"out-of-time data: {verdict} the champion ({bound})")


def promote_job(
    kinds: Sequence[ModelKind], config: TrainConfig, *, version: str | None = None, home: Path | None = None
) -> list[PromotionDecision]:
    """``crmscore promote``: move alias ``champion`` to the newest version when it earns it."""
    tracking.setup_tracking(home)
    decisions = []
    for kind in kinds:
        challenger = version or tracking.latest_version(kind)
        if challenger is None:
            reason = f"no registered version of {kind.registered_name}; `crmscore train` registers one"
            if kind is ModelKind.CREDIT_RISK:
                reason += " from a base with invoices"
            decisions.append(PromotionDecision(kind, None, None, False, reason))
            continue
        champion = tracking.champion_version(kind)
        if champion is None:
            reason = "first version: promoted without a comparison"
            tracking.set_champion(kind, challenger, reason)
            decisions.append(PromotionDecision(kind, challenger, None, True, reason))
            continue
        if champion == challenger:
            decisions.append(PromotionDecision(kind, challenger, champion, False, f"version {challenger} already is the champion"))
            continue
        test = tracking.download_test_frame(tracking.version_run_id(kind, challenger))
        scores = {}
        for role, v in (("challenger", challenger), ("champion", champion)):
            bundle = tracking.download_bundle(kind, v)
            targets = propensity_targets(test, bundle.targets) if kind is ModelKind.PROPENSITY else []
            try:
                scores[role] = headline(kind, evaluate_bundle(bundle, test, targets=targets, with_plots=False).metrics)
            except KeyError as exc:  # the champion reads features the new data lacks
                scores[role] = float("-inf") if SPECS[kind].higher_is_better else float("inf")
                logger.warning("%s version %s cannot score the new test data: %s", kind.value, v, exc)
        ok, reason = decide(kind, scores["challenger"], scores["champion"], config)
        if ok:
            tracking.set_champion(kind, challenger, reason)
        decisions.append(PromotionDecision(kind, challenger, champion, ok, reason))
    return decisions
