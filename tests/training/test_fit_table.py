"""crmscore fit-table: every kind on CSV and Parquet, and each bad input named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from crmscore.bundle import ModelKind
from crmscore.cli import app
from crmscore.training.config import LightGBMSettings, TrainConfig
from crmscore.training.table import TableError, fit_table, suspected_leaks
from crmscore.training.train import describe_choice, model_choice

OUTCOMES = ["churned", "defaulted", "margin_next_90d", "status"]


def split(table: pd.DataFrame, target: str, drop: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = table[table[target].notna()].drop(columns=drop)
    cut = int(len(rows) * 0.7)
    return rows.iloc[:cut], rows.iloc[cut:]


@pytest.mark.parametrize(
    ("kind", "target", "positive", "fmt"),
    [
        ("churn", "status", "lapsed", "csv"),
        ("churn", "churned", None, "parquet"),
        ("propensity", "churned", None, "csv"),
        ("credit_risk", "defaulted", None, "parquet"),
        ("expected_margin", "margin_next_90d", None, "csv"),
        ("expected_margin", "margin_next_90d", None, "parquet"),
    ],
)
def test_fit_table_each_kind(customer_table, mlflow_home, tmp_path: Path, kind, target, positive, fmt) -> None:
    train, test = split(customer_table, target, [c for c in OUTCOMES if c != target])
    paths = {}
    for name, frame in (("train", train), ("test", test)):
        paths[name] = tmp_path / f"{name}.{fmt}"
        frame.to_csv(paths[name], index=False) if fmt == "csv" else frame.to_parquet(paths[name], index=False)
    args = ["fit-table", kind, "--train", str(paths["train"]), "--target", target, "--id", "customer_id",
            "--test", str(paths["test"]), "--predictions", str(tmp_path / "p.csv"), "--metrics", str(tmp_path / "m.json")]
    if positive:
        args += ["--positive", positive]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert list(predictions.columns) == ["id", "score"]
    assert len(predictions) == len(test)
    assert predictions["id"].astype(str).tolist() == test["customer_id"].astype(str).tolist()
    metrics = json.loads((tmp_path / "m.json").read_text())
    if kind == "expected_margin":
        assert (predictions["score"] >= 0).all()
        assert metrics["test"]["spearman"] > 0.5
    else:
        assert predictions["score"].between(0, 1).all()
        assert metrics["test"]["auc"] > 0.75
        assert metrics["test"]["auc"] >= metrics["test"]["baseline"]["auc"] - 0.03


def test_fit_table_tracks_a_run_without_registering(customer_table, mlflow_home) -> None:
    import mlflow

    from crmscore.training import tracking
    from crmscore.training.table import fit_table_job

    train, _ = split(customer_table, "churned", ["defaulted", "margin_next_90d", "status"])
    path = mlflow_home / "flat.parquet"
    train.to_parquet(path, index=False)
    result = fit_table_job(ModelKind.CHURN, path, "churned", id_column="customer_id")
    tracking.setup_tracking()
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["crmscore.mode"] == "fit-table"
    assert "validation_auc" in run.data.metrics
    # plotted like any other run: out of fold here (no test table), as PNGs, with the lift table
    artifacts = {a.path for folder in ("plots", "tables") for a in mlflow.MlflowClient().list_artifacts(result.run_id, folder)}
    assert artifacts == {"plots/calibration_out_of_fold.png", "plots/gain_out_of_fold.png",
                         "plots/roc_out_of_fold.png", "tables/lift_out_of_fold.csv",
                         "plots/importance.png", "tables/importance.csv"}
    png = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="plots/gain_out_of_fold.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_table_plots_the_test_rows_when_they_have_the_target(customer_table, mlflow_home) -> None:
    import mlflow

    from crmscore.training import tracking
    from crmscore.training.table import fit_table_job

    for kind, target, drop in ((ModelKind.CREDIT_RISK, "defaulted", ["churned", "margin_next_90d", "status"]),
                               (ModelKind.EXPECTED_MARGIN, "margin_next_90d", ["churned", "defaulted", "status"])):
        train, test = split(customer_table, target, drop)
        train.to_parquet(mlflow_home / "train.parquet", index=False)
        test.to_parquet(mlflow_home / "test.parquet", index=False)
        result = fit_table_job(kind, mlflow_home / "train.parquet", target, id_column="customer_id",
                               test_path=mlflow_home / "test.parquet")
        tracking.setup_tracking()
        names = {a.path.split("/")[-1] for a in mlflow.MlflowClient().list_artifacts(result.run_id, "plots")}
        if kind.is_classifier:  # credit risk: the KS curve too; test and out of fold alike
            assert names == {f"{p}{s}.png" for p in ("calibration", "gain", "roc", "ks") for s in ("", "_out_of_fold")} | {"importance.png"}
        else:
            assert names == {"predicted_vs_actual.png", "predicted_vs_actual_out_of_fold.png", "importance.png"}


@pytest.fixture
def churn_frame(customer_table) -> pd.DataFrame:
    return customer_table[customer_table["churned"].notna()].drop(columns=["defaulted", "margin_next_90d"])


def test_missing_target_column(churn_frame) -> None:
    with pytest.raises(TableError, match=r"^target column 'lapse' is not in train; its columns are customer_id, "):
        fit_table(ModelKind.CHURN, churn_frame, "lapse")


def test_labels_need_a_positive_class(churn_frame) -> None:
    with pytest.raises(TableError) as err:
        fit_table(ModelKind.CHURN, churn_frame, "status")
    assert str(err.value) == (
        "target 'status' of train holds labels ('active', 'lapsed'), not 0/1 or true/false; "
        "name the positive class with --positive"
    )


def test_positive_class_absent(churn_frame) -> None:
    with pytest.raises(TableError) as err:
        fit_table(ModelKind.CHURN, churn_frame, "status", positive="gone")
    assert str(err.value) == "positive class 'gone' does not occur in target 'status' of train; its values are 'active', 'lapsed'"


def test_constant_target(churn_frame) -> None:
    frame = churn_frame.assign(churned=1.0)
    with pytest.raises(TableError) as err:
        fit_table(ModelKind.CHURN, frame, "churned")
    assert str(err.value) == "target 'churned' of train is constant (1 for every row): there is nothing to learn"


def test_too_few_rows(churn_frame) -> None:
    with pytest.raises(TableError) as err:
        fit_table(ModelKind.CHURN, churn_frame.head(40), "churned")
    assert str(err.value) == "train has 40 rows with a target; at least 100 are needed to train, validate and calibrate a model"


def test_junk_in_a_numeric_column(churn_frame) -> None:
    frame = churn_frame.copy()
    frame["revenue_90d"] = frame["revenue_90d"].astype(object)
    frame.iloc[3, frame.columns.get_loc("revenue_90d")] = "12 EUR"
    with pytest.raises(TableError) as err:
        fit_table(ModelKind.CHURN, frame, "churned")
    assert str(err.value).startswith("non-numeric values in numeric column(s) of train: 'revenue_90d' (1 of ")
    assert "e.g. '12 EUR'" in str(err.value)


def test_junk_only_in_the_test_table_names_the_test_table(churn_frame) -> None:
    train, test = churn_frame.iloc[:800], churn_frame.iloc[800:].copy()
    test["revenue_90d"] = test["revenue_90d"].astype(object)
    test.iloc[0, test.columns.get_loc("revenue_90d")] = "12 EUR"
    with pytest.raises(TableError) as err:
        fit_table(ModelKind.CHURN, train, "churned", test=test)
    assert str(err.value).startswith("non-numeric values in numeric column(s) of test: 'revenue_90d' (1 of ")


def test_a_column_of_numbers_in_train_and_of_text_in_test_is_an_error(churn_frame) -> None:
    train, test = churn_frame.iloc[:800], churn_frame.iloc[800:].copy()
    test["revenue_90d"] = np.where(np.arange(len(test)) % 2 == 0, "high", "low")
    with pytest.raises(TableError) as err:
        fit_table(ModelKind.CHURN, train, "churned", test=test)
    assert str(err.value) == (
        "column 'revenue_90d' holds numbers in train but text in test (e.g. 'high', 'low'); the tables must agree"
    )


def flat_table(n: int = 1_500, seed: int = 0) -> pd.DataFrame:
    """A small table with a learnable churn signal in a number, a category and a date."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, n)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n)
    signup = pd.Timestamp("2024-12-31") - pd.to_timedelta(tenure * 30, unit="D")
    logit = -0.5 + 1.5 * (contract == "Month-to-month") - 0.05 * tenure
    churned = rng.uniform(size=n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({
        "customer_id": [f"{i:05d}-X" for i in range(n)],
        "Contract": contract,
        "Monthly charges ($)": rng.uniform(18, 120, n).round(2),
        "total[charges]": (tenure * 50.0).round(2),
        "signup, first": signup,
        "Churn": np.where(churned, "Yes", "No"),
    })


def test_blanks_and_missing_markers_read_as_missing_and_number_text_as_numbers(tmp_path: Path) -> None:
    """Telco-style exports: the total charges of new customers blank, '?' for unknown (UCI)."""
    table = flat_table()
    total = table["total[charges]"].astype(str).astype(object)
    total[table.index % 50 == 0] = " "
    total[table.index % 50 == 1] = "?"
    total[table.index % 50 == 2] = "n/a"
    table["total[charges]"] = total
    result = fit_table(ModelKind.CHURN, table.iloc[:1_000], "Churn", id_column="customer_id", test=table.iloc[1_000:])
    bundle = result.bundle
    assert "total_charges" in bundle.feature_names
    assert "total_charges" not in bundle.categorical_levels  # a number, not 1,000 category levels
    assert result.example["total_charges"].dtype == np.float64
    assert result.example["total_charges"].isna().sum() == 3  # rows 1000-1002: " ", "?", "n/a"
    assert result.metrics["test"]["auc"] > 0.7


def assert_read_as_plain(written: pd.DataFrame, plain: pd.DataFrame, columns: list[str], tmp_path: Path) -> None:
    """``written`` through a CSV gives the model ``plain`` gives: ``columns`` (model names) are
    numeric features, not categories, and the boosters are the same to the byte."""
    written.to_csv(tmp_path / "written.csv", index=False)
    from_text = fit_table(ModelKind.CHURN, pd.read_csv(tmp_path / "written.csv"), "Churn", id_column="customer_id")
    from_plain = fit_table(ModelKind.CHURN, plain, "Churn", id_column="customer_id")
    for name in columns:
        assert name in from_text.bundle.feature_names and name not in from_text.bundle.categorical_levels
    pd.testing.assert_frame_equal(from_text.example, from_plain.example)
    assert from_text.bundle.booster.model_to_string() == from_plain.bundle.booster.model_to_string()


def test_numbers_written_for_people_are_numbers(tmp_path: Path) -> None:
    """Currency symbols, thousands separators and percent signs, as spreadsheets and loan books
    write them (Lending Club's ``int_rate`` is "10.65%"): the same model as the plain numbers."""
    table = flat_table()
    written = table.copy()
    written["Monthly charges ($)"] = [f"${v:,.2f}" if i % 2 else f"{v:.2f} $" for i, v in enumerate(table["Monthly charges ($)"])]
    written["total[charges]"] = [f"{v:,.0f}" for v in table["total[charges]"]]  # "3,550"
    table["discount"] = (np.arange(len(table)) % 7) * 2.5
    written["discount"] = [f"{v:g}%" for v in table["discount"]]
    written.loc[5, "discount"] = " "  # blank: missing, as for plain numbers
    table.loc[5, "discount"] = np.nan
    assert_read_as_plain(written, table, ["Monthly_charges_($)", "total_charges", "discount"], tmp_path)
    # a unit after a number is still junk, not a format: the error names it
    written.loc[3, "discount"] = "12 EUR"
    with pytest.raises(TableError, match="'discount' \\(1 of 1499 values, e.g. '12 EUR'\\)"):
        fit_table(ModelKind.CHURN, written, "Churn", id_column="customer_id")


def test_dates_written_for_people_are_days(tmp_path: Path, caplog) -> None:
    """Dates as spreadsheets and exports write them (``21-08-2013``, Lending Club's ``Dec-2011``,
    a US date with its time): the same model as the dates themselves. Readings that cannot be
    told apart (every day and month <= 12) and dotted version numbers stay text."""
    table = flat_table()
    written = table.copy()
    signup = table["signup, first"]
    written["signup, first"] = signup.dt.strftime("%d-%m-%Y").where(table.index % 3 > 0, signup.dt.strftime("%-d-%m-%Y"))
    table["issued"] = signup.dt.to_period("M").dt.to_timestamp()
    written["issued"] = signup.dt.strftime("%b-%Y").str.upper()
    table["seen"] = signup + pd.to_timedelta(table.index % 24, unit="h")
    written["seen"] = table["seen"].dt.strftime("%m/%d/%Y %H:%M")
    written.loc[7, "seen"] = " "  # blank: missing, as for a date
    table.loc[7, "seen"] = pd.NaT
    assert_read_as_plain(written, table, ["signup_first", "issued", "seen"], tmp_path)

    from crmscore.training.table import plan_columns

    odd = pd.DataFrame({"ambiguous": ["01/02/2020", "03/04/2020", "12/11/2021"], "version": ["1.2.3", "1.2.4", "2.0.1"],
                        "code": ["A1-2", "B3-4", "C5-6"]})
    with caplog.at_level(logging.WARNING):
        plan = plan_columns(list(odd.columns), [(odd, "train")])
    assert plan.days == () and plan.written_dates == {}
    assert "column 'ambiguous' reads as dates in 2 ways (%d/%m/%Y or %m/%d/%Y" in caplog.text


def test_the_index_a_csv_export_wrote_is_left_out_and_a_row_count_is_named(tmp_path: Path, caplog) -> None:
    """``DataFrame.to_csv`` writes the index unless told not to: pandas reads it back as
    ``Unnamed: 0``, a row number that is no trait of a customer. It is left out, in a test table
    too (written with or without one), with a warning; a named running number (``RowNumber``
    of a bank's churn table) is kept and named."""
    table = flat_table()
    table.iloc[:1_000].to_csv(tmp_path / "train.csv")  # with the index
    table.iloc[1_000:].to_csv(tmp_path / "test.csv", index=False)  # without
    train, test = pd.read_csv(tmp_path / "train.csv"), pd.read_csv(tmp_path / "test.csv")
    assert train.columns[0] == "Unnamed: 0"
    with caplog.at_level(logging.WARNING):
        indexed = fit_table(ModelKind.CHURN, train, "Churn", id_column="customer_id", test=test)
    plain = fit_table(ModelKind.CHURN, train.drop(columns="Unnamed: 0"), "Churn", id_column="customer_id", test=test)
    assert "Unnamed_0" not in indexed.bundle.feature_names
    assert indexed.bundle.booster.model_to_string() == plain.bundle.booster.model_to_string()
    assert "column 'Unnamed: 0' of train is a row number with no header" in caplog.text

    caplog.clear()
    numbered = table.iloc[:1_000].assign(RowNumber=np.arange(1, 1_001))
    with caplog.at_level(logging.WARNING):
        kept = fit_table(ModelKind.CHURN, numbered, "Churn", id_column="customer_id")
    assert "RowNumber" in kept.bundle.feature_names
    assert "column 'RowNumber' of train counts the rows (1, 2, ...)" in caplog.text


def test_awkward_names_dates_and_a_semicolon_csv(tmp_path: Path) -> None:
    """Column names LightGBM refuses (JSON's characters), a date column, a ';' CSV with decimal commas."""
    table = flat_table()
    table.iloc[:1_000].to_csv(tmp_path / "train.csv", sep=";", decimal=",", index=False)
    table.iloc[1_000:].to_parquet(tmp_path / "test.parquet", index=False)  # the date as a datetime
    result = CliRunner().invoke(app, [
        "fit-table", "churn", "--train", str(tmp_path / "train.csv"), "--target", "Churn", "--id", "customer_id",
        "--test", str(tmp_path / "test.parquet"), "--predictions", str(tmp_path / "p.csv"),
        "--metrics", str(tmp_path / "m.json"),
    ])
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert predictions["id"].tolist() == table["customer_id"].iloc[1_000:].tolist()
    assert predictions["score"].between(0, 1).all()
    assert json.loads((tmp_path / "m.json").read_text())["test"]["auc"] > 0.7

    rows = fit_table(ModelKind.CHURN, pd.read_csv(tmp_path / "train.csv", sep=";", decimal=","), "Churn",
                     id_column="customer_id")
    bundle = rows.bundle
    assert bundle.feature_names == ["Contract", "Monthly_charges_($)", "total_charges", "signup_first"]
    assert bundle.descriptions == {"Monthly_charges_($)": "Monthly charges ($)", "total_charges": "total[charges]",
                                   "signup_first": "signup, first"}
    days = rows.example["signup_first"]  # ISO text read as days since 1970-01-01
    expected = (pd.to_datetime(table["signup, first"].iloc[:5]) - pd.Timestamp("1970-01-01")).dt.days
    assert days.tolist() == expected.astype(float).tolist()


def test_a_compressed_csv_is_read_like_its_plain_one(tmp_path: Path) -> None:
    from crmscore.training.table import read_table

    table = flat_table(200)
    table.to_csv(tmp_path / "train.csv.gz", sep=";", decimal=",", index=False)  # gzip, by the name
    read = read_table(tmp_path / "train.csv.gz", "train")
    assert list(read.columns) == list(table.columns)
    assert read["Monthly charges ($)"].tolist() == table["Monthly charges ($)"].tolist()
    with pytest.raises(TableError, match=r"must be \.csv .* or \.parquet; got \.xlsx$"):
        (tmp_path / "train.xlsx").write_bytes(b"PK")
        read_table(tmp_path / "train.xlsx", "train")


def test_a_zip_of_one_table_is_read_like_the_table(tmp_path: Path) -> None:
    import zipfile

    from crmscore.training.table import read_table

    table = flat_table(200)
    table.to_csv(tmp_path / "telco.csv", index=False)
    with zipfile.ZipFile(tmp_path / "telco.zip", "w") as z:  # as a dataset download comes
        z.write(tmp_path / "telco.csv", "data/WA_Telco.csv")
        z.writestr("__MACOSX/data/._WA_Telco.csv", b"junk")
    read = read_table(tmp_path / "telco.zip", "train")
    pd.testing.assert_frame_equal(read, read_table(tmp_path / "telco.csv", "train"))
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as z:
        z.write(tmp_path / "telco.csv", "a.csv")
        z.write(tmp_path / "telco.csv", "b.csv")
    with pytest.raises(TableError, match=r"^train archive .*two\.zip must hold exactly one \.csv or \.parquet file; "
                                         r"it holds a\.csv, b\.csv$"):
        read_table(tmp_path / "two.zip", "train")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(TableError, match=r"^train table .*bad\.zip is not a readable ZIP archive"):
        read_table(tmp_path / "bad.zip", "train")


def test_a_positive_class_given_as_a_number_matches_a_column_read_as_floats(churn_frame) -> None:
    # without "status", the text copy of the target (a perfect predictor: 2,000 trees a fit)
    frame = churn_frame.drop(columns=["status"]).assign(churned=churn_frame["churned"].astype(float))
    expected = fit_table(ModelKind.CHURN, frame, "churned").metrics["validation"]["auc"]
    assert fit_table(ModelKind.CHURN, frame, "churned", positive="1").metrics["validation"]["auc"] == expected


def test_a_yes_no_target_needs_no_positive_class() -> None:
    table = flat_table()
    yes = fit_table(ModelKind.CHURN, table, "Churn", id_column="customer_id")
    assert yes.metrics["validation"]["base_rate"] == pytest.approx((table["Churn"] == "Yes").mean())


def test_labels_match_without_the_spaces_around_them() -> None:
    """UCI's Adult writes ', >50K' (a space after each comma): --positive '>50K' finds it, and
    ' Yes' / ' No' are still booleans. The model is the one the clean labels give."""
    table = flat_table()
    clean = fit_table(ModelKind.CHURN, table, "Churn", id_column="customer_id")
    spaced = table.assign(Churn=" " + table["Churn"])
    as_positive = fit_table(ModelKind.CHURN, spaced, "Churn", positive="Yes", id_column="customer_id")
    as_boolean = fit_table(ModelKind.CHURN, spaced, "Churn", id_column="customer_id")
    for result in (as_positive, as_boolean):
        assert result.bundle.booster.model_to_string() == clean.bundle.booster.model_to_string()
        assert result.metrics["validation"] == clean.metrics["validation"]


def test_a_margin_target_written_as_money_is_read_as_numbers(customer_table) -> None:
    """A value exported as '$1,169.50' is the number 1169.5, as in a feature column."""
    frame = customer_table[customer_table["churned"].notna()].drop(columns=["status"])
    frame = frame.assign(margin_next_90d=frame["margin_next_90d"].round(2))  # as written: to the cent
    plain = fit_table(ModelKind.EXPECTED_MARGIN, frame, "margin_next_90d")
    written = frame.assign(margin_next_90d=[f"${v:,.2f}" if v >= 0 else f"-${-v:,.2f}" for v in frame["margin_next_90d"]])
    assert written["margin_next_90d"].str.contains(",").any()  # thousands are separated
    result = fit_table(ModelKind.EXPECTED_MARGIN, written, "margin_next_90d")
    assert result.metrics["validation"] == pytest.approx(plain.metrics["validation"], rel=1e-9)


def test_test_columns_must_match(churn_frame) -> None:
    train, test = churn_frame.iloc[:800], churn_frame.iloc[800:].drop(columns=["tenure_days"]).assign(extra=1)
    with pytest.raises(TableError) as err:
        fit_table(ModelKind.CHURN, train, "churned", test=test)
    assert str(err.value) == "test columns differ from train: missing tenure_days; unexpected extra"


def test_unknown_kind_on_the_command_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fit-table", "lifetime", "--train", "x.csv", "--target", "y"])
    assert result.exit_code == 2
    assert "unknown model kind 'lifetime'" in result.output


def test_missing_file_on_the_command_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fit-table", "churn", "--train", str(tmp_path / "none.csv"), "--target", "y"])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_margin_target_must_be_numeric(customer_table) -> None:
    frame = customer_table[customer_table["churned"].notna()].copy()
    frame["margin_next_90d"] = frame["margin_next_90d"].astype(object)
    frame.iloc[0, frame.columns.get_loc("margin_next_90d")] = "lots"
    with pytest.raises(TableError, match=r"must be numeric for expected_margin; got 'lots'"):
        fit_table(ModelKind.EXPECTED_MARGIN, frame.drop(columns=["status"]), "margin_next_90d")
    assert np.isfinite(frame["tenure_days"]).all()


def test_a_category_of_numbers_is_learnt_by_its_levels() -> None:
    """A Parquet category whose levels are numbers (product codes 1, 2, 3) is encoded, not missing."""
    table = flat_table()
    codes = {"Month-to-month": 1, "One year": 12, "Two year": 24}
    table["Contract"] = pd.Categorical(table["Contract"].map(codes))
    result = fit_table(ModelKind.CHURN, table.iloc[:1_000], "Churn", id_column="customer_id", test=table.iloc[1_000:])
    bundle = result.bundle
    assert bundle.categorical_levels["Contract"] == ["1", "12", "24"]
    assert not np.isnan(bundle.encode(result.example)[:, bundle.feature_names.index("Contract")]).any()
    assert bundle.booster.feature_importance()[bundle.feature_names.index("Contract")] > 0


def test_database_date_sentinels_are_missing(caplog) -> None:
    """MySQL's zero date and the open-ended 9999-12-31 (beyond pandas' 2262) read as missing, named in a warning."""
    table = flat_table()
    table["signup, first"] = table["signup, first"].dt.strftime("%Y-%m-%d %H:%M:%S")
    table.loc[table.index % 10 == 0, "signup, first"] = "0000-00-00 00:00:00"
    table.loc[table.index % 10 == 1, "signup, first"] = "9999-12-31"
    result = fit_table(ModelKind.CHURN, table.iloc[:1_000], "Churn", id_column="customer_id", test=table.iloc[1_000:])
    assert result.example["signup_first"].isna().tolist() == [True, True, False, False, False]  # test rows 1000-1004
    assert "column 'signup, first' of train: 200 values are not dates in 1677-2262 (e.g. '0000-00-00 00:00:00', " \
           "'9999-12-31') and read as missing" in caplog.text


def test_a_windows_1252_csv_is_read(tmp_path: Path) -> None:
    """Excel on Windows saves CSV in its legacy code page: accents in names and labels survive."""
    from crmscore.training.table import fit_table_job

    table = flat_table().rename(columns={"Contract": "Catégorie", "Churn": "Résilié"})
    table["Résilié"] = table["Résilié"].map({"Yes": "résilié", "No": "actif"})
    table.to_csv(tmp_path / "train.csv", sep=";", decimal=",", index=False, encoding="cp1252")
    result = fit_table_job(ModelKind.CHURN, tmp_path / "train.csv", "Résilié", positive="résilié",
                           id_column="customer_id", track=False)
    assert "Catégorie" in result.bundle.feature_names
    assert result.metrics["validation"]["auc"] > 0.7


def test_blank_and_marked_targets_are_unlabelled(caplog) -> None:
    table = flat_table()
    table.loc[table.index % 20 == 0, "Churn"] = "?"
    table.loc[table.index % 20 == 1, "Churn"] = " "
    result = fit_table(ModelKind.CHURN, table, "Churn", id_column="customer_id")
    assert result.bundle.info["train_rows"] == 1_350
    assert "150 rows of train have no target and are left out of training" in caplog.text


def test_a_ragged_csv_is_an_error_naming_the_file(tmp_path: Path) -> None:
    """An unquoted comma in a text field: pandas' message gives the line, this names the file."""
    from crmscore.training.table import read_table

    path = tmp_path / "train.csv"
    path.write_text("id,city,churn\n1,Paris,0\n2,Paris, France,1\n")
    with pytest.raises(TableError) as err:
        read_table(path, "train")
    assert str(err.value) == (f"train table {path} is not a readable CSV: Error tokenizing data. C error: "
                              "Expected 3 fields in line 3, saw 4\n")


def test_columns_that_give_the_target_away_are_named(churn_frame, caplog) -> None:
    frame = churn_frame.copy()
    # a consequence of the outcome: days since cancelling, missing for every customer who stayed
    rng = np.random.default_rng(0)
    frame["days_since_cancel"] = np.where(frame["churned"] == 1, rng.integers(1, 90, len(frame)), np.nan)
    # a perfect predictor keeps the loss falling: 300 rounds instead of 2,000 keep the test short
    config = TrainConfig(lightgbm=LightGBMSettings(max_rounds=300))
    with caplog.at_level(logging.WARNING, logger="crmscore.training.table"):
        result = fit_table(ModelKind.CHURN, frame, "churned", id_column="customer_id", config=config)
    assert result.metrics["suspected_leaks"] == ["status", "days_since_cancel"]
    assert "column 'status' of train predicts the target 'churned' perfectly" in caplog.text
    # the record's own features give nothing away: no false alarm
    y = churn_frame["churned"].to_numpy(dtype=np.float64)
    features = [c for c in churn_frame.columns if c not in ("churned", "status", "customer_id")]
    assert suspected_leaks(churn_frame, features, y, ModelKind.CHURN) == []


def test_suspected_leaks_of_each_shape() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.3).astype(float)
    frame = pd.DataFrame({
        "copy_as_text": np.where(y == 1, "gone", "active"),
        "threshold": y * 10 + rng.random(500),  # every churner above every stayer
        "identifier": [f"C{i}" for i in range(500)],  # pure levels, but one per row: not a leak
        "honest": y + rng.normal(0, 1, 500),
        "honest_text": rng.choice(["a", "b", "c"], 500),
    })
    assert suspected_leaks(frame, list(frame.columns), y, ModelKind.CHURN) == ["copy_as_text", "threshold"]
    margin = rng.gamma(1.0, 50.0, 500)
    frame = pd.DataFrame({"in_eur": margin * 0.92, "same": margin, "honest": margin + rng.normal(0, 20, 500)})
    assert suspected_leaks(frame, list(frame.columns), margin, ModelKind.EXPECTED_MARGIN) == ["in_eur", "same"]


def test_the_command_names_suspected_leaks_and_the_model_it_chose(customer_table, mlflow_home, tmp_path: Path) -> None:
    train, _ = split(customer_table, "churned", ["defaulted", "margin_next_90d"])  # "status" stays: a leak
    train.to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "config.yaml").write_text("lightgbm:\n  max_rounds: 200\n")  # a perfect predictor: keep it short
    result = CliRunner().invoke(app, ["fit-table", "churn", "--train", str(tmp_path / "train.csv"), "--target", "churned",
                                      "--id", "customer_id", "--metrics", str(tmp_path / "m.json"),
                                      "--config", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["suspected_leaks"] == ["status"]
    output = " ".join(result.output.split())  # the log's console wraps long lines
    assert "suspected leaks (columns that predict the target perfectly): status" in output
    assert "model: 200 trees of up to 31 leaves" in output


def test_an_identifier_like_column_is_smoothed_out_of_fold_and_the_command_says_so(mlflow_home, tmp_path: Path) -> None:
    # rare defaults (6%) driven by one number, beside a surname-like text column of no signal
    # (~3 rows a name): LightGBM's default smoothing lets trees fit the names' noise, the
    # stronger smoothing wins out of fold, and the surname stays out of the GLM base
    rng = np.random.default_rng(0)
    n, k = 3000, 1000
    x = rng.normal(size=n)
    weights = np.exp(rng.normal(0.0, 0.8, k))
    table = pd.DataFrame({
        "id": np.arange(n), "x": x, "noise": rng.normal(size=n),
        "surname": np.array([f"name{i}" for i in range(k)])[rng.choice(k, n, p=weights / weights.sum())],
        "bad": (rng.random(n) < 1 / (1 + np.exp(3.2 - 1.2 * x))).astype(int),
    })
    result = fit_table(ModelKind.CREDIT_RISK, table, "bad", id_column="id")
    info, base = result.bundle.info, result.bundle.base
    assert info["cv_cat_smooth"]["50"] < info["cv_cat_smooth"]["10"] and info["cat_smooth"] == 50.0
    assert base is not None and base.categorical == []  # the base kept, without the surname's levels
    table.to_csv(tmp_path / "train.csv", index=False)
    cli = CliRunner().invoke(app, ["fit-table", "credit_risk", "--train", str(tmp_path / "train.csv"), "--target", "bad",
                                   "--id", "id"])
    assert cli.exit_code == 0, cli.output
    assert "identifier-like text smoothed more (cat_smooth 50)" in " ".join(cli.output.split())


def test_a_value_a_straight_line_fits_gets_least_squares_and_the_command_says_so(mlflow_home, tmp_path: Path) -> None:
    # a card balance close to linear in the limit and the income, plus a student's shift (ISLP's
    # Credit): least squares from an additive base is kept, and never predicts below zero
    rng = np.random.default_rng(2)
    n = 600
    limit, income = rng.uniform(1_000, 12_000, n), rng.lognormal(3.6, 0.6, n)
    student = rng.choice(["yes", "no"], n, p=[0.1, 0.9])
    linear = 100 + 0.17 * limit - 2.0 * income + np.where(student == "yes", 400.0, 0.0)
    table = pd.DataFrame({"id": np.arange(n), "limit": limit, "income": income, "student": student,
                          "balance": np.maximum(linear + rng.normal(0, 40, n), 0.0)})
    table.iloc[:450].to_csv(tmp_path / "train.csv", index=False)
    table.iloc[450:].to_csv(tmp_path / "test.csv", index=False)
    cli = CliRunner().invoke(app, ["fit-table", "expected_margin", "--train", str(tmp_path / "train.csv"), "--target", "balance",
                                   "--id", "id", "--test", str(tmp_path / "test.csv"), "--predictions", str(tmp_path / "p.csv"),
                                   "--metrics", str(tmp_path / "m.json")])
    assert cli.exit_code == 0, cli.output
    assert "least squares boosted from an additive GLM base" in " ".join(cli.output.split())
    assert pd.read_csv(tmp_path / "p.csv")["score"].min() >= 0.0
    assert json.loads((tmp_path / "m.json").read_text())["test"]["rmse"] < 45  # the noise is 40


def test_a_spend_table_with_returns_can_keep_tweedie_on_the_floored_target_scaled_to_the_net() -> None:
    # holdout spend, count x value, of which some customers send an order back: a few net below
    # zero. Tweedie on the spend floored at zero (scaled out of fold to the net total) against
    # least squares on the net, by out-of-fold RMSE: a choice per table (on 4 seeds of this
    # table each won twice); on this one the floored fit wins, and the totals still add up
    rng = np.random.default_rng(0)
    n = 3000
    rate, value = rng.gamma(0.8, 1.0, n), rng.lognormal(3.0, 0.8, n)
    orders = rng.poisson(rate * 12.0)
    past = np.array([rng.lognormal(np.log(v), 0.3, k).sum() for v, k in zip(value, orders, strict=True)])
    spend = rng.poisson(rate * 3) * value
    back = (orders > 0) & (rng.random(n) < 0.08)
    spend[back] -= value[back] * rng.lognormal(0.0, 0.3, int(back.sum()))
    table = pd.DataFrame({"id": np.arange(n), "orders": orders.astype(float), "revenue": past, "spend": spend})
    assert (table["spend"] < 0).mean() > 0.02
    result = fit_table(ModelKind.EXPECTED_MARGIN, table.iloc[:2400], "spend", id_column="id", test=table.iloc[2400:])
    info = result.bundle.info
    rmse = info["cv_floored_rmse"]
    assert rmse["tweedie_floored"] < rmse["least_squares"] and info["objective"] == "tweedie"
    assert model_choice(info)["target_floored"] is True
    assert "Tweedie on the target floored at zero, scaled to its net total" in describe_choice(info)
    assert result.predictions["score"].min() >= 0
    assert abs(result.metrics["test"]["aggregate_error"]) < 0.05


def test_a_margin_of_losses_and_gains_gets_an_additive_base_and_its_defined_metrics() -> None:
    # customer profit that can be negative (a cost to serve above the gross margin) and nets to
    # a loss: least squares from an additive base against trees alone, no rescaling of totals
    rng = np.random.default_rng(3)
    n = 800
    orders, tickets = rng.poisson(6, n).astype(float), rng.poisson(2, n).astype(float)
    segment = rng.choice(["retail", "trade"], n)
    profit = 12.0 * orders - 45.0 * tickets + np.where(segment == "trade", 30.0, 0.0) - 5.0 + rng.normal(0, 10, n)
    table = pd.DataFrame({"id": np.arange(n), "orders": orders, "tickets": tickets, "segment": segment, "profit": profit})
    train, test = table.iloc[:600], table.iloc[600:].copy()
    test["profit"] -= test["profit"].sum() / len(test) + 1.0  # the test rows net to a loss
    result = fit_table(ModelKind.EXPECTED_MARGIN, train, "profit", id_column="id", test=test)
    info = result.bundle.info
    assert info["objective"] == "regression" and info["additive_base"] is True
    rmse = info["cv_floored_rmse"]  # Tweedie on the floored target was tried, and lost
    assert rmse["least_squares"] < rmse["tweedie_floored"]
    assert model_choice(info)["target_floored"] is False and model_choice(info)["glm_base"] == "additive"
    assert describe_choice(info).endswith("least squares boosted from an additive GLM base, least squares (the target has losses)")
    assert not result.bundle.base.log_scaled and "margin_scale" not in info
    assert result.predictions["score"].min() < 0  # losses are predicted as losses
    metrics = result.metrics["test"]
    assert {"rmse", "mae", "spearman", "r2"} <= set(metrics) and "top20_capture" not in metrics
    assert metrics["spearman"] > 0.9
    # the run's plots: no gain or predicted-against-actual of a total that nets to a loss, and
    # no failure either; what drives the score is still shown
    from crmscore.training.table import run_plots

    figures, tables = run_plots(ModelKind.EXPECTED_MARGIN, result)
    assert set(figures) == {"importance"} and set(tables) == {"importance"}
    assert tables["importance"]["feature"].iloc[0] == "tickets"  # 45 a ticket against 12 an order
    # crmscore train's evaluation of such a margin: its metrics, without the shares of a total
    from crmscore.training.jobs import evaluate_bundle

    evaluation = evaluate_bundle(result.bundle, test.rename(columns={"profit": "label"}), label="label")
    assert evaluation.metrics["rmse"] > 0 and set(evaluation.figures) == {"importance"}
    assert "lift" not in evaluation.tables


def test_predictions_can_carry_each_rows_reasons(mlflow_home, tmp_path: Path) -> None:
    # a default risk that rises with the days late and not with the noise: the first reason of
    # the riskiest rows is their days late, pushing the risk up, with its stable code
    rng = np.random.default_rng(4)
    n = 1500
    days_late = rng.gamma(1.5, 8.0, n)
    table = pd.DataFrame({"id": [f"C{i:05d}" for i in range(n)], "days_late": days_late, "noise": rng.normal(size=n),
                          "plan": rng.choice(["basic", "plus"], n),
                          "bad": (rng.random(n) < 1 / (1 + np.exp(3.0 - 0.12 * days_late))).astype(int)})
    table.iloc[:1000].to_csv(tmp_path / "train.csv", index=False)
    table.iloc[1000:].drop(columns=["bad"]).to_csv(tmp_path / "test.csv", index=False)
    args = ["fit-table", "credit_risk", "--train", str(tmp_path / "train.csv"), "--target", "bad", "--id", "id",
            "--test", str(tmp_path / "test.csv")]
    cli = CliRunner().invoke(app, [*args, "--predictions", str(tmp_path / "p.csv"), "--reasons"])
    assert cli.exit_code == 0, cli.output
    p = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(p.columns) == ["id", "score", *(f"reason{s}_{i}" for i in (1, 2, 3) for s in ("_code", ""))]
    assert p["id"].tolist() == table["id"].iloc[1000:].tolist()
    riskiest = p.nlargest(50, "score")
    assert (riskiest["reason_code_1"] == "CRD.days_late.UP").mean() > 0.9
    assert riskiest["reason_1"].str.startswith("days late = ").all() and riskiest["reason_1"].str.endswith("raises default risk").all()
    # without --reasons the file is id,score as before; --reasons needs a predictions file
    cli = CliRunner().invoke(app, [*args, "--predictions", str(tmp_path / "plain.csv")])
    assert cli.exit_code == 0 and list(pd.read_csv(tmp_path / "plain.csv").columns) == ["id", "score"]
    # options that cannot work together are usage errors, before any fit
    cli = CliRunner().invoke(app, [*args, "--reasons"])
    assert cli.exit_code == 2 and "--reasons needs --predictions" in " ".join(cli.output.split())
    assert "trees chosen" not in cli.output
    no_test = [a for a in args if a not in ("--test", str(tmp_path / "test.csv"))]
    cli = CliRunner().invoke(app, [*no_test, "--predictions", str(tmp_path / "q.csv")])
    assert cli.exit_code == 2 and "--predictions needs --test" in " ".join(cli.output.split())
    assert not (tmp_path / "q.csv").exists()


def test_a_date_in_a_reason_reads_as_a_date(tmp_path: Path) -> None:
    # accounts opened recently default more: the opening date is the reason, shown as a date
    from crmscore.training.table import fit_table_job

    rng = np.random.default_rng(5)
    n = 1200
    opened = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 1500, n), unit="D")
    age = (pd.Timestamp("2024-03-01") - opened).days.to_numpy()
    table = pd.DataFrame({"id": np.arange(n), "opened": opened.strftime("%Y-%m-%d"), "noise": rng.normal(size=n),
                          "bad": (rng.random(n) < 1 / (1 + np.exp(-2.0 + age / 300))).astype(int)})
    table.iloc[:900].to_csv(tmp_path / "train.csv", index=False)
    table.iloc[900:].to_csv(tmp_path / "test.csv", index=False)
    fit_table_job(ModelKind.CREDIT_RISK, tmp_path / "train.csv", "bad", id_column="id", test_path=tmp_path / "test.csv",
                  predictions_path=tmp_path / "p.csv", reasons=True, track=False)
    p = pd.read_csv(tmp_path / "p.csv")
    first = p.loc[p["reason_code_1"].str.startswith("CRD.opened."), "reason_1"]
    assert len(first) > 200
    dates = first.str.extract(r"^opened = (\d{4}-\d{2}-\d{2}): (?:raises|lowers) default risk$")[0]
    assert dates.notna().all()
    # each row's date is its own opening date
    test = table.iloc[900:].set_index("id")
    assert (dates.to_numpy() == test.loc[p.loc[first.index, "id"], "opened"].to_numpy()).all()


@pytest.mark.parametrize(("kind", "target", "drop"), [
    (ModelKind.CHURN, "churned", ["defaulted", "margin_next_90d", "status"]),
    (ModelKind.CREDIT_RISK, "defaulted", ["churned", "margin_next_90d", "status"]),
])
def test_fit_table_keeps_the_kinds_monotone_constraints_with_its_glm_base(customer_table, kind, target, drop,
                                                                          worst_step) -> None:
    # a flat table with the catalogue's payment and recency columns gets the kind's monotone
    # constraints; the GLM base (boosted from or averaged with) must not undo them: more days
    # past due never lowers default risk, a more recent purchase never raises churn risk
    train, _ = split(customer_table, target, drop)
    result = fit_table(kind, train.reset_index(drop=True), target, id_column="customer_id")
    bundle = result.bundle
    assert bundle.monotone and bundle.base is not None  # the base is in play on this table
    names = bundle.feature_names
    for j in bundle.base.columns:  # no coefficient against a constraint
        assert bundle.base.coef[bundle.base.columns.index(j)] * bundle.monotone.get(names[j], 0) >= 0
    X = bundle.encode(train.head(200))
    for feature, sign in bundle.monotone.items():
        grid = np.nanquantile(bundle.encode(train)[:, names.index(feature)], np.linspace(0, 1, 12))
        worst = worst_step(bundle, X, feature, sign, grid)
        assert worst >= -1e-12, f"{feature}: the score moves against its constraint by {worst:g}"
