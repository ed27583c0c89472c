"""Resumable training state: sharded checkpoints with torch distributed checkpoint, and stop-on-signal.

A checkpoint is a folder ``update-NNNNNN`` of ``--state-dir`` (``NNNNNN`` = updates done) holding the model's
and the optimizer's sharded state (``torch.distributed.checkpoint``, each process writes its shards),
``progress.json`` (updates done, the data stream's state, the per-update log so far) and ``rng-rank<r>.pt``
(each process's torch RNG state). It is written to ``.tmp-update-NNNNNN`` and renamed when complete, so a
folder named ``update-*`` is always whole; older ones are then removed. The one with the most updates is
resumed.

SIGUSR1 or SIGTERM set a flag; the loop finishes the current update, all processes agree (an all-reduce of the
flag), save a checkpoint and exit with :data:`EXIT_INTERRUPTED` so the scheduler requeues or reruns the job.
Workers write their process ids to ``--state-dir/pids`` so the re-launching parent can signal the workers
directly instead of torchrun's agent (which would kill them after 30 s on SIGTERM, and dies on SIGUSR1).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

log = logging.getLogger("ctxscale.extend")

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped on request after a checkpoint; rerun to continue
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
CHECKPOINT_NAME = re.compile(r"^update-(\d{6})$")
PID_DIR = "pids"
# Written by the re-launching parent before it signals the workers: a worker not yet listening (still loading)
# sees the request at its first update instead of losing it
STOP_FILE = "stop-requested"
# Written by rank 0 when it stops on request: torchrun turns the workers' EXIT_INTERRUPTED into 1, the parent
# turns it back
INTERRUPTED_FILE = "interrupted"


class StopFlag:
    """Set by SIGUSR1/SIGTERM; read once per update."""

    def __init__(self, state_dir: Path | None = None):
        self.requested = False
        self.signal_name = None
        self.stop_file = Path(state_dir) / STOP_FILE if state_dir is not None else None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def agreed(self, distributed: bool, device) -> bool:
        """Whether any process has been asked to stop (all processes return the same answer)."""
        if self.stop_file is not None and not self.requested and self.stop_file.exists():
            self.requested, self.signal_name = True, "a stop request (stop file)"
        if not distributed:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def write_pid(state_dir: Path) -> None:
    folder = Path(state_dir) / PID_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{_rank()}.pid").write_text(f"{os.getpid()}\n")


def worker_pids(state_dir: Path) -> list[int]:
    folder = Path(state_dir) / PID_DIR
    pids = []
    for path in sorted(folder.glob("rank-*.pid")) if folder.is_dir() else []:
        try:
            pids.append(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def latest_checkpoint(state_dir: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in Path(state_dir).glob("update-*")
             if (m := CHECKPOINT_NAME.match(p.name)) and (p / "progress.json").is_file()]
    return max(found)[1] if found else None


def save(state_dir: Path, wrapper, optimizer, progress: dict) -> Path:
    """Write the checkpoint after ``progress['updates_done']`` updates atomically; return its folder."""
    state_dir = Path(state_dir)
    name = f"update-{progress['updates_done']:06d}"
    final, temporary = state_dir / name, state_dir / f".tmp-{name}"
    if _rank() == 0:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    _barrier()
    model_state, optimizer_state = get_state_dict(wrapper, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(temporary))
    torch.save(torch.get_rng_state(), temporary / f"rng-rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        # progress.json last: a folder with it is complete (also checked by latest_checkpoint)
        (temporary / "progress.json").write_text(json.dumps(progress) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        for older in state_dir.glob("update-*"):
            if older != final and CHECKPOINT_NAME.match(older.name):
                shutil.rmtree(older, ignore_errors=True)
    _barrier()
    log.info("saved the training state after %d updates to %s", progress["updates_done"], final)
    return final


def load(folder: Path, wrapper, optimizer) -> dict:
    """Restore model, optimizer and torch RNG state from a checkpoint folder; return its progress record."""
    folder = Path(folder)
    model_state, optimizer_state = get_state_dict(wrapper, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(wrapper, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    rng_path = folder / f"rng-rank{_rank()}.pt"
    if rng_path.is_file():
        torch.set_rng_state(torch.load(rng_path, weights_only=True))
    progress = json.loads((folder / "progress.json").read_text())
    log.info("resuming after %d updates from %s", progress["updates_done"], folder)
    return progress
