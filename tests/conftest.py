"""Shared test settings: no network, paths to the repository and to the reference data beside it."""

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
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout (reference data); tests needing it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data folder {SHARED} is absent")
    return SHARED
