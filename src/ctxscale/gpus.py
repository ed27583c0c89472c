"""One GPU set per concurrent job on one machine: reserve devices, then run the job on them alone.

Snakemake's ``--resources gpu=N`` caps how many GPUs the running jobs take together, but it does not say
which: every job would see the same ``CUDA_VISIBLE_DEVICES``. The evaluate rule therefore starts through::

    python -m ctxscale.gpus --count K --lock-dir resources/gpu-locks -- python -m ctxscale.evaluate ...

which takes an exclusive ``flock`` on one lock file per device for K free devices, sets
``CUDA_VISIBLE_DEVICES`` to them and replaces itself with the command (``exec``). The locks are held by
the command's own process, so they end with it however it ends (a crash or ``kill -9`` leaves no stale
lock). Because Snakemake never runs more than N GPUs' worth of jobs at once, K free devices exist; if
another program holds some, the job waits for them and says so.

The devices: ``CTXSCALE_GPU_DEVICES`` (a comma-separated list; also how the tests fake a machine),
else the ``CUDA_VISIBLE_DEVICES`` Snakemake was started with, else one per GPU that ``nvidia-smi -L``
lists. Under SLURM (``SLURM_JOB_ID`` set) the scheduler already gives each job its own devices; with
``--count 0``, or on a machine with no GPU at all (a CPU evaluation that still requests one), nothing is
reserved: the command runs unchanged.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ctxscale.errors import UserError

from ctxscale.steps import cli_main

WAIT_LOG_SECONDS = 60


def available_devices(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    for variable in ("CTXSCALE_GPU_DEVICES", "CUDA_VISIBLE_DEVICES"):
        value = env.get(variable)
        if value is not None and value.strip():
            return [d.strip() for d in value.split(",") if d.strip()]
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
        return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]
    return []


def reserve(count: int, lock_dir: str | Path, devices: list[str], poll_seconds: float = 1.0) -> tuple[list[str], list[int]]:
    """Lock ``count`` of ``devices`` (waiting while others hold them); return the devices and the lock fds."""
    if count > len(devices):
        raise UserError(
            f"the job needs {count} GPU(s) but this machine has {len(devices)} ({','.join(devices) or 'none'}); "
            "set CTXSCALE_GPU_DEVICES or CUDA_VISIBLE_DEVICES, or run on a machine with more GPUs"
        )
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = last_log = time.monotonic()
    while True:
        taken: list[tuple[str, int]] = []
        for device in devices:
            fd = os.open(lock_dir / f"gpu-{device}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            taken.append((device, fd))
            if len(taken) == count:
                return [d for d, _ in taken], [fd for _, fd in taken]
        for _, fd in taken:
            os.close(fd)  # closing releases the lock: never hold a partial set while waiting
        if time.monotonic() - last_log >= WAIT_LOG_SECONDS:
            last_log = time.monotonic()
            print(f"ctxscale.gpus: waiting {last_log - started:.0f} s for {count} free GPU(s) of {devices}",
                  file=sys.stderr)  # fmt: skip
        time.sleep(poll_seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ctxscale.gpus",
        description="Reserve COUNT GPUs of this machine for a command (exclusive locks), then run it with "
        "CUDA_VISIBLE_DEVICES set to them. No-op under SLURM or with --count 0.",
    )
    parser.add_argument("--count", required=True, type=int, help="GPUs to reserve")
    parser.add_argument("--lock-dir", required=True, help="folder of the per-device lock files")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UserError("no command given (python -m ctxscale.gpus --count N --lock-dir DIR -- COMMAND ...)")
    if args.count < 0:
        raise UserError(f"--count must be >= 0, got {args.count}")
    devices = available_devices() if args.count > 0 and not os.environ.get("SLURM_JOB_ID") else []
    if args.count > 0 and not os.environ.get("SLURM_JOB_ID") and not devices:
        # A machine without GPUs (a CPU evaluation that still asks for a GPU, e.g. to land on a GPU
        # partition elsewhere): nothing to share, so nothing to reserve.
        print(f"ctxscale.gpus: {args.count} GPU(s) requested but this machine has none; running without a "
              "reservation", file=sys.stderr)  # fmt: skip
    elif devices:
        devices, fds = reserve(args.count, args.lock_dir, devices)
        for fd in fds:
            os.set_inheritable(fd, True)  # the command inherits the locks and holds them until it ends
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        print(f"ctxscale.gpus: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr)
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as error:
        raise UserError(f"cannot run {command[0]}: {error.strerror}") from None
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
