"""Helpers shared by the workflow tests."""

from __future__ import annotations

import re


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
