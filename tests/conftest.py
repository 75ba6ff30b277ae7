"""Shared test fixtures: paths to ../shared, and hypothesis settings for CI."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("default", deadline=None, suppress_health_check=_QUIET)
# CI explores a fixed set of examples, so a landing is never decided by which random inputs a run drew;
# developers' runs (the default profile) keep exploring new ones.
settings.register_profile("ci", deadline=None, suppress_health_check=_QUIET, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (the shared/ folder must sit beside the checkout)")
    return SHARED
