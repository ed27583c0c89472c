"""Time a dry run of the full paper DAG (issue target: <= 10 s on 2 cores).

    python benchmarks/bench_dryrun.py [--repeats 3] [--ood]

Prints the job count and the wall time of each `snakemake -n` on config/config.yaml, in an empty working
directory (so every job is scheduled), with the ood and pi groups optionally enabled.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ood", action="store_true", help="also enable the ood and pi groups")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if args.ood:
        config["model_groups"]["ood"]["enabled"] = True
        config["model_groups"]["pi"]["enabled"] = True
    times = []
    with tempfile.TemporaryDirectory() as workdir:
        config_file = Path(workdir) / "config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", workdir,
                 "--configfile", str(config_file), "--workflow-profile", "none", "--cores", "2"],
                capture_output=True, text=True, cwd=REPO,
            )
            times.append(time.perf_counter() - start)
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
                return 1
        total = re.search(r"^total\s+(\d+)", result.stdout + result.stderr, re.M)
    print(f"paper DAG dry run ({'with ood+pi' if args.ood else 'default groups'}): "
          f"{total.group(1) if total else '?'} jobs")
    print(f"wall time over {args.repeats} runs: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s  (cores: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
