"""The portfolio policy file: defaults, reading, and errors that name the key (exact match)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from crmscore.serving.policy import (
    CompanyFlag,
    Cutoffs,
    Policy,
    PolicyError,
    Quadrant,
    load_policy,
    parse_policy,
)


def test_packaged_default_policy_loads_with_the_documented_numbers() -> None:
    policy = load_policy()
    assert policy.label == "default@1"
    assert policy.current_value_cutoff == 0.0
    assert policy.future_potential_cutoff == "median"
    assert policy.loss_given_default == 0.6
    assert policy.high_value_quantile == 0.9
    assert policy.retention_churn_prob == 0.5
    assert policy.retention_min_future_potential == "median"
    assert policy.cross_sell_min_propensity == 0.3
    assert policy.cross_sell_quadrants == (Quadrant.INVEST, Quadrant.NURTURE, Quadrant.RE_ENGINEER)
    assert policy.credit_review_default_prob == 0.1
    assert policy.prepayment_default_prob == 0.3
    assert policy.flags == (
        CompanyFlag(
            name="benchmark",
            column="is_reference_account",
            equals=True,
            description="Reference accounts other customers copy (Buttle's benchmark customers).",
        ),
    )


def test_the_packaged_file_and_the_model_defaults_agree() -> None:
    """A file with only name and version gets the same numbers as the shipped default."""
    shipped = load_policy()
    minimal = parse_policy({"name": "default", "version": "1"})
    fields = set(Policy.model_fields) - {"description", "flags"}
    assert {f: getattr(minimal, f) for f in fields} == {f: getattr(shipped, f) for f in fields}


def _package_folder(package: str, package_dir: dict[str, str], root: Path) -> Path:
    """The folder setuptools builds ``package`` from: its longest prefix in ``package-dir``."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:i]))
        if mapped is not None:
            return root.joinpath(mapped, *parts[i:])
    return root.joinpath(*parts)


def test_the_policy_files_ship_as_package_data_of_a_listed_package() -> None:
    """The wheel carries ``serving/policies/*.yaml`` without setuptools' "absent from the
    `packages` configuration" warning: each package-data file lies in the folder of a package
    listed in ``packages`` (a data folder without ``__init__.py`` is still importable, as a
    namespace package, so setuptools wants it listed rather than reached from its parent)."""
    root = Path(__file__).resolve().parents[2]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]
    listed, package_dir = set(setuptools["packages"]), setuptools["package-dir"]
    shipped: set[Path] = set()
    for package, patterns in setuptools["package-data"].items():
        assert package in listed, f"package-data of {package}, which is not in packages"
        folder = _package_folder(package, package_dir, root)
        for pattern in patterns:
            files = set(folder.glob(pattern))
            assert files, f"package-data {package}: {pattern!r} matches no file in {folder}"
            nested = sorted(str(f.relative_to(root)) for f in files if f.parent != folder)
            assert nested == [], f"package-data {package}: {pattern!r} reaches into a subfolder; list it as a package"
            shipped |= files
    policies = root / "serving" / "policies"
    assert {f for f in shipped if f.parent == policies} == set(policies.glob("*.yaml")) != set()


def test_a_policy_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "strict.yaml"
    path.write_text(
        "name: strict\nversion: 3\ncurrent_value_cutoff: 50\nfuture_potential_cutoff: 1200.5\n"
        "flags:\n  - {name: cost_magnet, column: absorbs_fixed_cost}\n"
        "cross_sell_quadrants: [invest]\n"
    )
    policy = load_policy(path)
    assert policy.label == "strict@3"  # YAML reads 3 as an int; the version is text
    assert policy.current_value_cutoff == 50.0
    assert policy.future_potential_cutoff == 1200.5
    assert policy.flags[0].output_column == "flag_cost_magnet"
    assert policy.flags[0].equals is True
    assert policy.cross_sell_quadrants == (Quadrant.INVEST,)
    assert load_policy(str(path)) == policy


def test_policy_is_frozen() -> None:
    policy = load_policy()
    with pytest.raises(ValueError):
        policy.current_value_cutoff = 5.0  # type: ignore[misc]


BASE = {"name": "p", "version": "1"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"retention_churn_prb": 0.5},
            "policy p.yaml: unknown key 'retention_churn_prb' (did you mean 'retention_churn_prob'?)",
        ),
        (
            {"zzz": 1},
            "policy p.yaml: unknown key 'zzz'; known keys: name, version, description, "
            "current_value_cutoff, future_potential_cutoff, loss_given_default, "
            "high_value_quantile, flags, retention_churn_prob, retention_min_future_potential, "
            "cross_sell_min_propensity, cross_sell_quadrants, credit_review_default_prob, "
            "prepayment_default_prob",
        ),
        (
            {"retention_churn_prob": "high"},
            "policy p.yaml: retention_churn_prob must be a number; got 'high'",
        ),
        (
            {"current_value_cutoff": "0"},
            "policy p.yaml: current_value_cutoff must be a number; got '0'",
        ),
        (
            {"cross_sell_min_propensity": True},  # YAML `yes`
            "policy p.yaml: cross_sell_min_propensity must be a number; got True",
        ),
        (
            {"credit_review_default_prob": None},  # `credit_review_default_prob:` left empty
            "policy p.yaml: credit_review_default_prob has no value",
        ),
        (
            {"retention_churn_prob": 1.5},
            "policy p.yaml: retention_churn_prob must be a probability between 0 and 1; got 1.5",
        ),
        (
            {"loss_given_default": -0.1},
            "policy p.yaml: loss_given_default must be a probability between 0 and 1; got -0.1",
        ),
        (
            {"loss_given_default": float("nan")},
            "policy p.yaml: loss_given_default must be a finite number; got nan",
        ),
        (
            {"high_value_quantile": 1},
            "policy p.yaml: high_value_quantile must be a probability strictly between 0 and 1; got 1",
        ),
        (
            {"future_potential_cutoff": "mean"},
            "policy p.yaml: future_potential_cutoff must be a number or 'median'; got 'mean'",
        ),
        (
            {"retention_min_future_potential": [1]},
            "policy p.yaml: retention_min_future_potential must be a number or 'median'; got [1]",
        ),
        (
            {"credit_review_default_prob": 0.3},  # equal to prepayment: overlapping
            "policy p.yaml: credit_review_default_prob must be below prepayment_default_prob; "
            "got credit_review_default_prob=0.3, prepayment_default_prob=0.3",
        ),
        (
            {"credit_review_default_prob": 0.4, "prepayment_default_prob": 0.2},
            "policy p.yaml: credit_review_default_prob must be below prepayment_default_prob; "
            "got credit_review_default_prob=0.4, prepayment_default_prob=0.2",
        ),
        (
            {"cross_sell_quadrants": ["invest", "grow"]},
            "policy p.yaml: cross_sell_quadrants must list quadrants among invest, nurture, "
            "re-engineer, sack; got 'grow'",
        ),
        (
            {"flags": [{"name": "benchmark", "colum": "x"}]},
            "policy p.yaml: missing key 'flags[0].column'\n"
            "policy p.yaml: unknown key 'colum' in flags[0] (did you mean 'column'?)",
        ),
        (
            {"flags": [{"name": "Bench mark", "column": "x"}]},
            "policy p.yaml: flags[0].name must be a lower-case identifier like 'benchmark' "
            "(it becomes the column flag_<name>); got 'Bench mark'",
        ),
        (
            {"flags": [{"name": "high_value", "column": "x"}]},
            "policy p.yaml: flags[0].name must not be 'high_value', the computed "
            "high-lifetime-value flag; got 'high_value'",
        ),
        (
            {"flags": [{"name": "b", "column": "x", "equals": [1]}]},
            "policy p.yaml: flags[0].equals must be true/false, a number or a text; got [1]",
        ),
        (
            {"flags": [{"name": "b", "column": "x"}, {"name": "b", "column": "y"}]},
            "policy p.yaml: flags: flag name 'b' is used more than once",
        ),
        (
            {"flags": {"name": "b"}},
            "policy p.yaml: flags must be a list of {name, column, equals} entries; "
            "got {'name': 'b'}",
        ),
        ({"name": None}, "policy p.yaml: name has no value"),
        (
            {"name": "my@policy"},
            "policy p.yaml: name must be a name of letters, digits, '.', '_' or '-' (no '@'); "
            "got 'my@policy'",
        ),
        (
            {"version": True},
            "policy p.yaml: version must be a version like '1' or '2024.1'; got True",
        ),
    ],
)
def test_bad_policy_values_fail_naming_the_key_and_value(
    tmp_path: Path, changes: dict, message: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}, sort_keys=False))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value) == message


def test_missing_required_key() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy({"name": "p"}, "policy p.yaml")
    assert str(info.value) == "policy p.yaml: missing key 'version'"


def test_not_a_mapping_and_not_yaml(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- name: p\n")
    with pytest.raises(PolicyError) as info:
        load_policy(listed)
    assert (
        str(info.value)
        == "policy list.yaml: a policy must be a mapping of keys to values; got list"
    )

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [p\n")
    with pytest.raises(PolicyError, match=r"^policy broken.yaml: not valid YAML: "):
        load_policy(broken)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_policy(tmp_path / "nope.yaml")
    assert str(info.value) == f"policy file not found: {tmp_path / 'nope.yaml'}"


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


def test_cutoffs_round_trip_through_json() -> None:
    cutoffs = Cutoffs(
        policy_name="default",
        policy_version="1",
        current_value=0.0,
        future_potential=71.5,
        high_value=800.0,
        retention_min_future_potential=71.5,
        n_customers=10,
    )
    assert Cutoffs.model_validate_json(cutoffs.model_dump_json()) == cutoffs
    assert cutoffs.label == "default@1"
    with pytest.raises(ValueError, match="extra"):
        Cutoffs.model_validate({**cutoffs.model_dump(), "median": 3.0})
