"""The portfolio policy: a named, versioned YAML file holding every cut-off and threshold.

Customer portfolio analysis (Buttle 2009, ch. 5) needs numbers a company chooses: where
"currently profitable" starts, what counts as high future potential, which default risk
calls for a credit review. They live in one policy file, read into pydantic models with
``extra="forbid"`` so a misspelt key fails loudly, and the policy's ``name@version`` is
recorded with every portfolio result. The rules that use these numbers are in
:mod:`crmscore.serving.portfolio`; ``docs/portfolio.md`` explains each key.

A cut-off may be a number or ``"median"`` (the portfolio median, resolved on a batch by
:func:`crmscore.serving.portfolio.resolve_cutoffs` into a :class:`Cutoffs`, which the API then
reuses for single customers).

Example::

    name: default
    version: "1"
    current_value_cutoff: 0          # currently profitable: current value > 0
    future_potential_cutoff: median  # high potential: risk-adjusted CLV > portfolio median
    loss_given_default: 0.6
    high_value_quantile: 0.9
    flags:
      - {name: benchmark, column: is_reference_account, equals: true}
    retention_churn_prob: 0.5
    retention_min_future_potential: median
    cross_sell_min_propensity: 0.3
    cross_sell_quadrants: [invest, nurture, re-engineer]
    credit_review_default_prob: 0.1
    prepayment_default_prob: 0.3
"""

from __future__ import annotations

import difflib
import math
import re
from datetime import date
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "DEFAULT_POLICY",
    "CompanyFlag",
    "Cutoffs",
    "Policy",
    "PolicyError",
    "Quadrant",
    "load_policy",
    "parse_policy",
]

#: The policy shipped with the package (``serving/policies/default.yaml``).
DEFAULT_POLICY = "policies/default.yaml"
MEDIAN: Literal["median"] = "median"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FLAG_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Quadrant(StrEnum):
    """Buttle's customer portfolio quadrants (current value x future potential)."""

    INVEST = "invest"  # currently profitable, high future potential
    NURTURE = "nurture"  # currently profitable, low future potential
    RE_ENGINEER = "re-engineer"  # not currently profitable, high future potential
    SACK = "sack"  # neither


class PolicyError(ValueError):
    """A policy file that cannot be read or breaks a rule; the message names the key."""


# --- value checks, each raising ValueError("must ...; got ...") for the formatter below -----


def _number(value: Any) -> float:
    # bool is an int in Python and `yes` is True in YAML: refuse it rather than read 1.0.
    if value is None:
        raise ValueError("has no value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number; got {value!r}")
    return float(value)


def _probability(value: Any, *, open_interval: bool = False) -> float:
    x = _number(value)
    if open_interval and not 0 < x < 1:
        raise ValueError(f"must be a probability strictly between 0 and 1; got {value!r}")
    if not 0 <= x <= 1:
        raise ValueError(f"must be a probability between 0 and 1; got {value!r}")
    return x


def _number_or_median(value: Any) -> float | Literal["median"]:
    if isinstance(value, str):
        if value.strip().lower() == MEDIAN:
            return MEDIAN
        raise ValueError(f"must be a number or 'median'; got {value!r}")
    try:
        return _number(value)
    except ValueError as exc:
        if value is None:
            raise
        raise ValueError(f"must be a number or 'median'; got {value!r}") from exc


class CompanyFlag(BaseModel):
    """A strategically significant customer flag a company sets from a customer attribute.

    Buttle's strategically significant customers include benchmarks (customers others copy),
    inspirations (customers who drive improvement), cost magnets (volume that absorbs fixed
    cost) and door openers; none of them can be read off transactions, so the company marks
    them in a column and the policy names it. The output column is ``flag_<name>``, True
    where ``column == equals``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(description="Flag name; the output column is flag_<name>.")
    column: str = Field(description="Column of the scores frame holding the attribute.")
    equals: bool | int | float | str = Field(
        default=True, description="Value of the column that sets the flag."
    )
    description: str = ""

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _FLAG_NAME.match(value):
            raise ValueError(
                f"must be a lower-case identifier like 'benchmark' (it becomes the column "
                f"flag_<name>); got {value!r}"
            )
        if value == "high_value":
            raise ValueError(
                "must not be 'high_value', the computed high-lifetime-value flag; got 'high_value'"
            )
        return value

    @field_validator("equals", mode="before")
    @classmethod
    def _check_equals(cls, value: Any) -> Any:
        if not isinstance(value, bool | int | float | str):
            raise ValueError(f"must be true/false, a number or a text; got {value!r}")
        return value

    @field_validator("column", mode="before")
    @classmethod
    def _check_column(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a column name; got {value!r}")
        return value

    @property
    def output_column(self) -> str:
        return f"flag_{self.name}"


class Policy(BaseModel):
    """Every cut-off and threshold of customer portfolio analysis, named and versioned.

    Attributes
    ----------
    name, version : str
        Recorded with every result as ``policy_version = "<name>@<version>"``.
    current_value_cutoff : float
        Currency. Currently profitable means ``current_value > current_value_cutoff``.
    future_potential_cutoff : float or "median"
        Currency, or the portfolio median. High potential means ``future_potential > cut-off``.
    loss_given_default : float
        Share of the exposure lost when a customer defaults, 0 to 1 (default 0.6; see
        docs/portfolio.md for the Basel context).
    high_value_quantile : float
        Customers with ``future_potential`` at or above this portfolio quantile get
        ``flag_high_value`` (0.9: the top decile of risk-adjusted CLV).
    flags : list of CompanyFlag
        Company-set strategically significant customer flags.
    retention_churn_prob : float
        Probability. A retention offer needs ``churn_prob >= retention_churn_prob`` ...
    retention_min_future_potential : float or "median"
        ... and ``future_potential >= retention_min_future_potential`` (currency): worth keeping.
    cross_sell_min_propensity : float
        Probability. Cross-sell the top category when its propensity is at least this ...
    cross_sell_quadrants : list of Quadrant
        ... and the customer is in one of these quadrants.
    credit_review_default_prob, prepayment_default_prob : float
        Probabilities. ``default_prob`` at or above the first asks for a credit review, at or
        above the second (which must be higher) for prepayment instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    version: str
    description: str = ""
    current_value_cutoff: float = 0.0
    future_potential_cutoff: float | Literal["median"] = MEDIAN
    loss_given_default: float = 0.6
    high_value_quantile: float = 0.9
    flags: tuple[CompanyFlag, ...] = ()
    retention_churn_prob: float = 0.5
    retention_min_future_potential: float | Literal["median"] = MEDIAN
    cross_sell_min_propensity: float = 0.3
    cross_sell_quadrants: tuple[Quadrant, ...] = (
        Quadrant.INVEST,
        Quadrant.NURTURE,
        Quadrant.RE_ENGINEER,
    )
    credit_review_default_prob: float = 0.1
    prepayment_default_prob: float = 0.3

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("has no value")
        if not isinstance(value, str) or not _NAME.match(value):
            raise ValueError(
                f"must be a name of letters, digits, '.', '_' or '-' (no '@'); got {value!r}"
            )
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _check_version(cls, value: Any) -> Any:
        # YAML reads `version: 3` as an int and `version: 1.2` as a float; both are fine.
        if value is None:
            raise ValueError("has no value")
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _NAME.match(value):
            raise ValueError(f"must be a version like '1' or '2024.1'; got {value!r}")
        return value

    @field_validator("current_value_cutoff", mode="before")
    @classmethod
    def _check_number(cls, value: Any) -> float:
        return _number(value)

    @field_validator("future_potential_cutoff", "retention_min_future_potential", mode="before")
    @classmethod
    def _check_number_or_median(cls, value: Any) -> float | Literal["median"]:
        return _number_or_median(value)

    @field_validator(
        "loss_given_default",
        "retention_churn_prob",
        "cross_sell_min_propensity",
        "credit_review_default_prob",
        "prepayment_default_prob",
        mode="before",
    )
    @classmethod
    def _check_probability(cls, value: Any) -> float:
        return _probability(value)

    @field_validator("high_value_quantile", mode="before")
    @classmethod
    def _check_quantile(cls, value: Any) -> float:
        return _probability(value, open_interval=True)

    @field_validator("flags", mode="before")
    @classmethod
    def _check_flags(cls, value: Any) -> Any:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list of {{name, column, equals}} entries; got {value!r}")
        return tuple(value)

    @field_validator("cross_sell_quadrants", mode="before")
    @classmethod
    def _check_quadrants(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list of quadrants; got {value!r}")
        allowed = [q.value for q in Quadrant]
        for item in value:
            if item not in allowed:
                raise ValueError(f"must list quadrants among {', '.join(allowed)}; got {item!r}")
        return tuple(Quadrant(item) for item in value)

    @model_validator(mode="after")
    def _check_consistency(self) -> Policy:
        if self.credit_review_default_prob >= self.prepayment_default_prob:
            raise ValueError(
                "credit_review_default_prob must be below prepayment_default_prob; got "
                f"credit_review_default_prob={self.credit_review_default_prob:g}, "
                f"prepayment_default_prob={self.prepayment_default_prob:g}"
            )
        names = [f.name for f in self.flags]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"flags: flag name {name!r} is used more than once")
        return self

    @property
    def label(self) -> str:
        """``name@version``, the value of the ``policy_version`` column."""
        return f"{self.name}@{self.version}"


class Cutoffs(BaseModel):
    """A policy's cut-offs resolved to numbers on one portfolio (one batch scoring).

    Portfolio-relative cut-offs ("median", quantiles) need the whole base; the batch resolves
    them once (:func:`crmscore.serving.portfolio.resolve_cutoffs`) and stores them
    (``cutoffs.json`` next to the report), and the API places single customers with the
    stored numbers. All values are currency.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    policy_name: str
    policy_version: str
    current_value: float
    future_potential: float
    high_value: float
    retention_min_future_potential: float
    n_customers: int = Field(ge=0, description="Customers the cut-offs were computed on.")
    as_of: date | None = None

    @property
    def label(self) -> str:
        return f"{self.policy_name}@{self.policy_version}"


# --- reading ---------------------------------------------------------------------------------


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    model: type[BaseModel] = CompanyFlag if any(isinstance(p, int) for p in loc) else Policy
    key = str(loc[-1])
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
    where = _loc(loc[:-1])
    return f"unknown key {key!r}" + (f" in {where}" if where else "") + hint


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return f"missing key {_loc(loc)!r}"
    if kind == "value_error":
        message = str(error["ctx"]["error"])
    elif error.get("input", ...) is None:
        message = "has no value"
    else:
        message = f"{error['msg'][0].lower()}{error['msg'][1:]}; got {error.get('input')!r}"
    return f"{_loc(loc)} {message}" if loc else message


def parse_policy(data: Any, source: str = "policy") -> Policy:
    """Validate a mapping (a parsed YAML document) into a :class:`Policy`.

    Parameters
    ----------
    data : mapping
        Keys and values as in the policy file.
    source : str
        How to name the policy in error messages, e.g. its file name.

    Raises
    ------
    PolicyError
        ``"<source>: <key> <what is wrong>; got <value>"``, one problem per line.
    """
    if not isinstance(data, dict):
        raise PolicyError(
            f"{source}: a policy must be a mapping of keys to values; got {type(data).__name__}"
        )
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise PolicyError("\n".join(f"{source}: {p}" for p in problems)) from None


def load_policy(path: str | Path | None = None) -> Policy:
    """Read a policy file; ``None`` reads the policy shipped with the package.

    Parameters
    ----------
    path : str or Path, optional
        A YAML policy file. Default: ``crmscore/serving/policies/default.yaml``.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    PolicyError
        The file is not YAML, or a key is unknown, missing, not a number or out of range.
    """
    if path is None:
        text = resources.files("crmscore.serving").joinpath(DEFAULT_POLICY).read_text("utf-8")
        source = "default policy"
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"policy file not found: {path}")
        text = path.read_text("utf-8")
        source = f"policy {path.name}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    return parse_policy(data, source)
