"""Shared fixtures: small seeded bases, built once per session."""

from __future__ import annotations

import pytest

from crmscore.features.io import Base
from crmscore.features.synthetic import SyntheticBase, generate_base


@pytest.fixture(scope="session")
def synthetic_small() -> SyntheticBase:
    """2,000 synthetic customers, seed 7 (tables, and the traits behind them)."""
    return generate_base(2_000, seed=7)


@pytest.fixture(scope="session")
def base_small(synthetic_small: SyntheticBase) -> Base:
    """The same 2,000 customers as typed frames, per the data contract."""
    return synthetic_small.to_base()
