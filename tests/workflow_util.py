"""Helpers shared by the workflow tests: a clone of the checkout to type the README's commands in, and the
parsing of Snakemake's job table."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Never copied into a clone: what a fresh clone does not have.
NOT_IN_A_CLONE = {".git", ".venv", ".snakemake", "results", "resources", "logs", "__pycache__",
                  ".pytest_cache"}  # fmt: skip


def clone(destination: Path) -> Path:
    """Copy the checkout's files into ``destination`` as a clone would have them (git's tracked and untracked
    files that are not ignored; results/ and resources/ keep only their committed files).
    Returns ``destination``; copying again over an earlier clone keeps its outputs."""
    destination.mkdir(parents=True, exist_ok=True)
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True)
    if listing.returncode == 0:
        files = [Path(name) for name in listing.stdout.decode().split("\0") if name]
    else:  # not a git checkout (an unpacked archive): everything but the run outputs
        files = [p.relative_to(REPO) for p in REPO.rglob("*")
                 if p.is_file() and not NOT_IN_A_CLONE & set(p.relative_to(REPO).parts[:-1])]  # fmt: skip
    for relative in files:
        source = REPO / relative
        if source.is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)
    return destination


def user_environment(**extra: str) -> dict[str, str]:
    """The environment of a user who activated the project's virtual environment (`python`, `snakemake` on PATH)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **extra}


def snakemake_in(clone_dir: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None):
    """Run ``snakemake ARGS`` in a clone's root, as the README has users type it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), *args],
        capture_output=True, text=True, cwd=clone_dir, timeout=timeout, env=env or user_environment(),
    )  # fmt: skip


def job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table (rule -> job count, without the total); {} when there is none."""
    if "Job stats:" not in output:
        return {}
    counts = {}
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            if counts:
                break
            continue
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts
