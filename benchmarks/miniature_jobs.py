"""Where a finished workflow run's time went: job-seconds per rule, from Snakemake's own log of the run.

Run it in the folder where the workflow ran (a clone's root, after the README's first command), or give that
folder. It reads the newest ``.snakemake/log/*.snakemake.log`` that records finished jobs, pairs each job's start
and finish (1-second resolution) and prints the CPU, job-seconds per rule (the sum of its jobs' wall times),
the workflow's wall time and how busy it kept the cores. Comparing two machines' tables says which rules a
slower machine slows most.

    python benchmarks/miniature_jobs.py [WORKDIR] [--cores 2]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def cpu_model() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
    except OSError:
        return "unknown CPU"
    return f"{names[0]} x {len(names)}" if names else "unknown CPU"


def job_times(log: Path) -> tuple[dict[str, list[float]], float]:
    """Per rule, its jobs' wall seconds; and the run's wall seconds (first start to last finish)."""
    started: dict[str, tuple[str, datetime]] = {}
    per_rule: dict[str, list[float]] = defaultdict(list)
    now = first = last = None
    rule = None
    for line in log.read_text().splitlines():
        if match := STAMP.match(line):
            now = datetime.strptime(match.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or now
        elif match := RULE.match(line):
            rule = match.group(1)
        elif (match := JOBID.match(line)) and rule:
            started[match.group(1)] = (rule, now)
            rule = None
        elif (match := FINISHED.match(line)) and match.group(1) in started:
            name, start = started.pop(match.group(1))
            per_rule[name].append((now - start).total_seconds())
            last = now
    return dict(per_rule), (last - first).total_seconds() if first and last else 0.0


def newest_log(workdir: Path) -> Path:
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), key=os.path.getmtime, reverse=True)
    for log in logs:
        if "Finished jobid" in log.read_text():
            return log
    sys.exit(f"no Snakemake log with finished jobs under {workdir / '.snakemake' / 'log'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", nargs="?", default=".", help="where the workflow ran (default: here)")
    parser.add_argument("--cores", type=int, default=2, help="cores the run had (default 2, the local profile's)")
    args = parser.parse_args()
    log = newest_log(Path(args.workdir))
    per_rule, wall = job_times(log)
    total = sum(sum(times) for times in per_rule.values())
    print(f"{log}\nCPU: {cpu_model()}; {os.cpu_count()} cores here, the run had {args.cores}")
    print(f"{'rule':<20} {'jobs':>5} {'job-seconds':>12} {'share':>6} {'longest':>8}")
    for name, times in sorted(per_rule.items(), key=lambda item: -sum(item[1])):
        print(f"{name:<20} {len(times):>5} {sum(times):>12.0f} {sum(times) / total:>6.0%} {max(times):>8.0f}")
    print(f"{'total':<20} {sum(map(len, per_rule.values())):>5} {total:>12.0f}")
    if wall:
        print(f"wall {wall:.0f} s ({wall / 60:.1f} min); the cores were busy {total / (wall * args.cores):.0%} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
