"""Shared test settings: no network, the path to the repository. Every test's data is committed under
tests/data/ (sources and licences in its README), so no test depends on ../shared."""

import os
from pathlib import Path

import pytest

# Tests must never touch the Hugging Face hub (CI has no access); set before any HF import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# In CI the SLURM test must run, not skip (tests/slurm_cluster.py fails instead of skipping when set).
if os.environ.get("CI") == "true":
    os.environ.setdefault("CTXSCALE_REQUIRE_SLURM", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO

