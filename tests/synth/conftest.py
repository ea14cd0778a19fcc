"""Cached generated cities: generation is deterministic, so tests may share one."""

from __future__ import annotations

from functools import lru_cache

import pytest

from cityops.synth.generator import SyntheticCity, generate_city


@lru_cache(maxsize=8)
def _city(buildings: int, seed: int) -> SyntheticCity:
    return generate_city(buildings, seed)


@pytest.fixture(scope="session")
def city10k() -> SyntheticCity:
    """The demo size (DESIGN §8 "Demo": about 10,000 buildings)."""
    return _city(10_000, 1)


@pytest.fixture(scope="session")
def city3k() -> SyntheticCity:
    return _city(3_000, 11)


@pytest.fixture
def make_city():
    return _city
