"""Training settings: one pydantic model, validated when built, misspelt options fail loudly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field

from crmscore.bundle import ClvConfig, ScorecardConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LightGBMSettings(Strict):
    """Booster settings shared by the four kinds; early stopping picks the number of trees.

    Learning rate 0.1 (LightGBM's own default) with a patience of 50 rounds: on the 50k
    synthetic base it gave the oracle ratios of 0.05 / 100 within 0.002 (churn 0.980 both,
    credit 0.991 vs 0.993, margin 1.336 vs 1.334) with 2.3x fewer trees per customer (1,256 vs
    2,917 tree evaluations), which batch scoring, TreeSHAP and training all pay for
    (docs/benchmarks.md, "Model size").
    """

    learning_rate: float = Field(0.1, gt=0, le=1)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(50, ge=1)
    feature_fraction: float = Field(0.9, gt=0, le=1)
    bagging_fraction: float = Field(0.9, gt=0, le=1)
    bagging_freq: int = Field(1, ge=0)
    lambda_l2: float = Field(1.0, ge=0)
    max_rounds: int = Field(2000, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    num_threads: int = Field(0, ge=0, description="0 = all cores")
    tweedie_variance_power: float = Field(1.3, gt=1, lt=2)
    #: categorical features of more than 8 levels (LightGBM's ``max_cat_to_onehot`` here) are
    #: split many-vs-many, their levels ordered by gradient / (hessian + ``cat_smooth``), each
    #: split penalised by ``cat_l2``; LightGBM's defaults (10, 10)
    cat_smooth: float = Field(10.0, ge=0)
    cat_l2: float = Field(10.0, ge=0)


class ScorecardSettings(Strict):
    base_points: float = 600.0
    base_odds: float = Field(50.0, gt=0)
    pdo: float = Field(20.0, gt=0)

    def build(self) -> ScorecardConfig:
        return ScorecardConfig(self.base_points, self.base_odds, self.pdo)


class ClvSettings(Strict):
    years: float = Field(3.0, gt=0, le=50)
    discount_rate: float = Field(0.10, ge=0, lt=1)

    def build(self) -> ClvConfig:
        return ClvConfig(self.years, self.discount_rate)


class TrainConfig(Strict):
    """Everything ``crmscore train`` and ``crmscore fit-table`` can be told."""

    horizon_days: int = Field(90, gt=0)
    train_snapshots: int = Field(12, ge=1, description="stacked monthly as-of dates to train on")
    lightgbm: LightGBMSettings = LightGBMSettings()
    scorecard: ScorecardSettings = ScorecardSettings()
    clv: ClvSettings = ClvSettings()
    #: below this positive rate the positive class is up-weighted by sqrt(neg/pos);
    #: calibration on unweighted held-out rows then restores honest probabilities
    imbalance_threshold: float = Field(0.1, gt=0, lt=0.5)
    #: cap on training rows (customer x as-of) per model, a seeded sample beyond it; propensity
    #: counts its (customer, category) rows. Keeps training of 1M-customer bases within minutes:
    #: 2M rows took 611 s for all four on 1M customers (fits 437 s), over the 10-minute goal
    #: (docs/benchmarks.md, "benchmarks/train.py").
    max_train_rows: int = Field(1_500_000, ge=1000)
    #: rows for the scikit-learn baseline (a random sample when there are more)
    baseline_max_rows: int = Field(200_000, ge=100)
    random_state: int = 0
    #: expected margin: also try boosting the trees from a log-linear Tweedie GLM on log-scaled
    #: features (bundle.LogLinearBase) and keep it when its held-out deviance is lower. In
    #: fit-table (5-fold CV) out of fold, cross-fitted: each fold's GLM is fitted without that
    #: fold (docs/cdnow.md); in ``crmscore train`` on the validation customers, which neither
    #: the GLM nor the trees are fitted on (50k synthetic base: RMSE ratio 1.347 -> 1.231,
    #: docs/benchmarks.md "Model quality")
    margin_log_linear_base: bool = True
    #: expected margin in fit-table: also try least squares boosted from an additive GLM (the
    #: numbers as they are, categorical levels by level) and keep it when its cross-fitted
    #: out-of-fold RMSE and Tweedie deviance are both lower than the log-link model's
    #: (docs/tables.md: credit balances RMSE 104 -> 37, Carseats 1.28 -> 1.06; CDNOW kept the
    #: log link). A margin that can be negative (least squares already) gets the additive base
    #: against trees alone, by the out-of-fold squared error
    margin_additive_base: bool = True
    #: classifiers in fit-table: also try boosting the trees from a logistic GLM (the same
    #: base, on the log-odds) and keep it when its cross-fitted out-of-fold log loss is lower
    classifier_base: bool = True
    #: classifiers in fit-table (with ``classifier_base``): also try the GLM and the trees alone
    #: averaged on the log-odds, with these weights on the GLM, and keep the weight with the
    #: lowest cross-fitted out-of-fold log loss when it beats the choice above (docs/tables.md)
    classifier_blend_weights: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = (0.25, 0.5, 0.75)
    #: fit-table: also try trees of these numbers of leaves (besides ``lightgbm.num_leaves``),
    #: largest first, and keep the size with the lowest out-of-fold loss, on tables of up to
    #: ``leaves_search_max_rows`` rows (each size is one more cross-validation: 65 s for a
    #: 5,000 x 500 table here). On the real tables of docs/tables.md (400-10,000 rows) 7
    #: leaves won on 19 of 25 splits
    leaves_search: tuple[int, ...] = (7, 15)
    leaves_search_max_rows: int = Field(50_000, ge=0)
    #: fit-table: when a categorical feature reads like an identifier (more than one level per
    #: 20 rows: a surname, a customer code), also try this stronger smoothing of its levels
    #: (``cat_smooth`` and ``cat_l2`` both) and keep it when the out-of-fold loss is lower, on
    #: tables of up to ``leaves_search_max_rows`` rows. A surname-like column of no signal cost
    #: Caravan 0.005 AUC with LightGBM's defaults and nothing with the choice; 50 for every
    #: table would cost German credit 0.0014 (its 10-level loan purpose; docs/tables.md)
    cat_smooth_search: tuple[float, ...] = (50.0,)
    #: promotion gate: a challenger may be this much worse than the champion and still win
    auc_tolerance: float = Field(0.005, ge=0)
    rmse_tolerance: float = Field(0.01, ge=0, description="relative")


def load_config(path: Path | None) -> TrainConfig:
    """Read a YAML config (any subset of the fields), or the defaults when ``path`` is None."""
    if path is None:
        return TrainConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return TrainConfig.model_validate(data)
