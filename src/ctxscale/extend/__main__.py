"""Context extension of a Llama checkpoint (paper-spec §3.3; see the :mod:`ctxscale.extend` package).

    python -m ctxscale.extend --base DIR --out DIR --spec JSON --state-dir DIR [--data-dir DIR]
                              [--processes N] [--threads N]

``--spec``: the model's ``extend`` mapping (``$defs/extend_spec``) plus ``n_ctx``, ``rope_scaling`` and
optionally ``data_column``. ``--processes N`` (N > 1, not already under torchrun) re-launches this command under
``torch.distributed.run --standalone`` with N processes; SIGUSR1/SIGTERM to this parent are passed to the
workers, which finish the current update, save a checkpoint in ``--state-dir`` and exit non-zero (rerun to
continue). User mistakes print one line ``error: ...`` and exit 2, checked before any process is launched.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from ctxscale.errors import UserError

from ctxscale.steps import cli_main, parse_json_option, setup_logging

log = logging.getLogger("ctxscale.extend")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ctxscale.extend", description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="base checkpoint folder (Hugging Face Llama)")
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    parser.add_argument("--spec", required=True, help="JSON: the extend mapping plus n_ctx and rope_scaling")
    parser.add_argument("--state-dir", required=True,
                        help="resumable training state (removed once the output is written)")
    parser.add_argument("--data-dir", help="folder of parquet files (data.source other than synthetic)")
    parser.add_argument("--processes", type=int, default=1,
                        help="training processes (GPUs); default 1; 0 (a CPU-only job's GPU count) means 1")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (weights depend on it)")
    return parser.parse_args(argv)


def checked_spec(args) -> dict:
    """The validated spec; every user mistake is found here, before any process is launched."""
    import transformers

    from ctxscale.extend.recipe import SYNTHETIC, accumulation_steps, read_spec

    base = Path(args.base)
    if not (base / "config.json").is_file():
        raise UserError(f"--base {base} is not a Hugging Face checkpoint folder (no config.json)")
    config = transformers.AutoConfig.from_pretrained(base)
    if getattr(config, "model_type", None) != "llama":
        raise UserError(f"--base {base} is a {config.model_type!r} model; the extension supports llama")
    if (config.rope_parameters or {}).get("rope_type", "default") != "default":
        raise UserError(f"--base {base} already has RoPE scaling {config.rope_parameters}; extend a base model")
    spec = read_spec(parse_json_option(args.spec, "--spec"), config.max_position_embeddings)
    if args.processes < 0 or args.threads < 1:
        raise UserError("--processes must be at least 0 (0: one process) and --threads at least 1")
    args.processes = max(1, args.processes)
    processes = int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ else args.processes
    accumulation_steps(spec, processes)
    if "WORLD_SIZE" not in os.environ:  # once, in the launching process
        check_gpu_memory(args, spec, processes)
    if spec["data"]["source"] != SYNTHETIC:
        if not args.data_dir:
            raise UserError(f"data.source {spec['data']['source']!r} needs --data-dir (a folder of parquet files)")
        if not Path(args.data_dir).is_dir():
            raise UserError(f"--data-dir {args.data_dir} does not exist")
        from ctxscale.extend.data import ParquetCorpus

        rows = ParquetCorpus(args.data_dir, spec["data_column"]).rows  # files and column, from the metadata only
        if rows <= spec["validation"]["sequences"]:
            raise UserError(f"--data-dir {args.data_dir} has {rows} rows, not more than the "
                            f"{spec['validation']['sequences']} validation sequences")
    return spec


def check_gpu_memory(args, spec: dict, processes: int) -> None:
    """On GPUs, the job's memory plan (:mod:`ctxscale.plan.extension`) against the memory of the GPUs it got, so a
    job that cannot fit stops with one line before any model loads (the workflow plans with the config's GPU
    size; this checks the real one). Nothing to check on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return
    if processes > torch.cuda.device_count():
        raise UserError(f"--processes {processes} but only {torch.cuda.device_count()} GPU(s) are visible "
                        "(CUDA_VISIBLE_DEVICES)")
    from ctxscale.config import schema_defaults
    from ctxscale.extend.recipe import WORKFLOW_KEYS
    from ctxscale.plan.extension import plan_extension_from_files

    total = min(torch.cuda.get_device_properties(i).total_memory for i in range(processes))
    settings = {"gpu_memory_gib": total / 2**30, "gpu_overhead_gib": schema_defaults("evaluation")["gpu_overhead_gib"],
                "max_gpus": processes, "gpus": processes, "on_gpu": True}  # fmt: skip
    recipe = {k: v for k, v in spec.items() if k not in WORKFLOW_KEYS}
    plan = plan_extension_from_files(model=Path(args.out).name, base=Path(args.base).name,
                                     base_checkpoint_dir=args.base, n_ctx=spec["n_ctx"], spec=recipe,
                                     settings=settings, rope_scaling=spec["rope_scaling"])  # fmt: skip
    log.info("memory plan: %.1f of %.1f GiB per GPU on %d GPU(s)%s", plan.needed_gib, plan.available_gib, plan.gpus,
             f" ({plan.note})" if plan.note else "")


def relaunch(argv: list[str], processes: int, state_dir: Path) -> int:
    """Run this command under ``torch.distributed.run --standalone`` with ``processes`` workers.

    torchrun's agent runs in a session of its own; a stop signal to this process is sent to the workers
    (their pids in ``state_dir/pids``), never to the agent.
    """
    from ctxscale.extend.state import (EXIT_INTERRUPTED, INTERRUPTED_FILE, PID_DIR, STOP_FILE, STOP_SIGNALS,
                                       worker_pids)

    pid_dir = state_dir / PID_DIR
    for stale in pid_dir.glob("*.pid") if pid_dir.is_dir() else []:
        stale.unlink()
    state_dir.mkdir(parents=True, exist_ok=True)
    for marker in (STOP_FILE, INTERRUPTED_FILE):
        (state_dir / marker).unlink(missing_ok=True)

    def forward(signum, frame):
        (state_dir / STOP_FILE).touch()  # read by workers that are not listening yet
        pids = worker_pids(state_dir)
        log.warning("passing %s to the %d workers", signal.Signals(signum).name, len(pids))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    for sig in STOP_SIGNALS:  # before the workers exist, so no request is lost
        signal.signal(sig, forward)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "ctxscale.extend", *argv]
    code = subprocess.Popen(command, start_new_session=True).wait()
    if code != 0 and (state_dir / INTERRUPTED_FILE).exists():
        return EXIT_INTERRUPTED  # stopped on request after a checkpoint, not failed
    return code


def work(args, spec: dict) -> int:
    """One training process (alone, or one worker under torchrun)."""
    from ctxscale.datasets.tokenizer import load_tokenizer
    from ctxscale.extend import state, train

    train.configure_torch(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if "WORLD_SIZE" not in os.environ:  # alone: no parent cleared an earlier run's stop markers
        for marker in (state.STOP_FILE, state.INTERRUPTED_FILE):
            (state_dir / marker).unlink(missing_ok=True)
    stop = state.StopFlag(state_dir)
    stop.install()
    run = train.Run(spec)
    try:
        state.write_pid(state_dir)
        tokenizer = load_tokenizer(args.base)
        result = train.train(spec, args.base, state_dir, args.data_dir, run=run, tokenizer=tokenizer, stop=stop)
        if result is None:
            if run.rank == 0:
                (state_dir / state.INTERRUPTED_FILE).touch()
            return state.EXIT_INTERRUPTED
        train.write_output(args.out, args.base, spec, result, run, tokenizer, args.threads)
        if run.rank == 0:
            train.clear_state(state_dir)
            log.info("saved %s (%d updates, final loss %.4f)", args.out, result["progress"]["updates_done"],
                     result["progress"]["loss"][-1])
        return 0
    finally:
        run.close()


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # under torchrun only rank 0 reports progress; the others log warnings and errors
    setup_logging(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    spec = checked_spec(args)
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        return relaunch(argv, args.processes, Path(args.state_dir))
    return work(args, spec)


if __name__ == "__main__":
    sys.exit(main())
