"""The evaluate step's command line (``python -m ctxscale.evaluate``, see :mod:`ctxscale.evaluate`): one model
over one or more prepared datasets (``--data-dir``/``--out-dir`` pairs), loaded once, sized by the job's plan
(``--plan``: the largest over its datasets)."""

from __future__ import annotations

import argparse
import logging

from ctxscale.errors import UserError
from ctxscale.evaluate.engines import SharedEngine
from ctxscale.evaluate.runner import evaluate
from ctxscale.evaluate.settings import DEFAULT_SETTINGS, Settings
from ctxscale.steps import cli_main, parse_json_option, parse_step_args, step_parser

log = logging.getLogger("ctxscale.evaluate")


def _parse_settings(text: str) -> dict:
    value = parse_json_option(text, "--settings")
    if not isinstance(value, dict):
        raise UserError("--settings must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ctxscale.config import schema_defaults

    parser = step_parser(
        "python -m ctxscale.evaluate",
        "Evaluate one model on one or more prepared datasets at every shot count (lm-eval, never truncating).",
    )
    parser.add_argument("--model-dir", required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--model-name", required=True, help="model name recorded in the results")
    parser.add_argument("--data-dir", required=True, nargs="+",
                        help="prepared data folder(s) (shots.jsonl, test.jsonl, manifest); several: one model load")
    parser.add_argument("--shots", required=True, type=int, nargs="+", help="shot counts, e.g. 0 1 3 7")
    parser.add_argument("--out-dir", required=True, nargs="+",
                        help="folder(s) for shots_{k}.json and shots_{k}.samples.jsonl.gz, one per --data-dir")
    parser.add_argument("--cache-dir", required=True, help="content-addressed result cache (outside the outputs)")
    parser.add_argument("--settings", default="{}", help="JSON object of evaluation settings (see module doc)")
    parser.add_argument(
        "--plan", action="store_true",
        help="plan this job's max_length and tensor parallel size (ctxscale.plan); a job that cannot fit fails "
        "before loading",
    )  # fmt: skip
    sizing = schema_defaults("evaluation")  # the config's defaults, in the units of these options
    parser.add_argument("--gpu-memory-mib", type=int, default=round(sizing["gpu_memory_gib"] * 1024),
                        help="with --plan: one GPU's memory (MiB; default: the config's gpu_memory_gib)")
    parser.add_argument("--gpu-overhead-mib", type=int, default=round(sizing["gpu_overhead_gib"] * 1024),
                        help="with --plan: per-GPU overhead (MiB; default: the config's gpu_overhead_gib)")
    parser.add_argument("--max-gpus-per-job", type=int, default=sizing["max_gpus_per_job"],
                        help="with --plan: most GPUs for this job (default: the config's max_gpus_per_job)")
    return parser


def planned_settings(args: argparse.Namespace, settings: dict) -> dict:
    """``settings`` with the job's planned ``max_length`` and ``tensor_parallel_size`` (ctxscale.plan) and, for hf
    prefix reuse on a GPU, ``retained_tokens`` unless the settings give it; with several datasets, the largest
    window and parallel size of their plans, so that one loaded model serves them all, and the smallest store
    (the one beside the largest window)."""
    from ctxscale.plan import evaluation as plan

    plan_settings = {
        **{key: settings.get(key, DEFAULT_SETTINGS[key]) for key in plan.RESULT_KEYS},
        "gpu_memory_gib": args.gpu_memory_mib / 1024,
        "gpu_overhead_gib": args.gpu_overhead_mib / 1024,
        "max_gpus_per_job": args.max_gpus_per_job,
    }
    updates = []
    for data_dir in args.data_dir:
        job = plan.plan_from_files(
            model=args.model_name, checkpoint_dir=args.model_dir, data_dir=data_dir, shots=args.shots,
            settings=plan_settings,
        )  # fmt: skip
        log.info("plan: %s", job.summary())
        updates.append(job.settings_update())
    largest = {key: (min if key == "retained_tokens" else max)(update[key] for update in updates)
               for key in updates[0]}  # fmt: skip
    if settings.get("retained_tokens") is not None:
        largest.pop("retained_tokens", None)  # the user's budget stands
    if len(updates) > 1:
        log.info("plan: one model load for %d datasets: %s", len(updates), largest)
    return {**settings, **largest}


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_step_args(build_parser(), argv)
    settings = _parse_settings(args.settings)
    if len(args.out_dir) != len(args.data_dir):
        raise UserError(f"{len(args.data_dir)} --data-dir folder(s) but {len(args.out_dir)} --out-dir folder(s): "
                        "give one output folder per dataset")
    if len(set(args.out_dir)) != len(args.out_dir):
        raise UserError("--out-dir folders repeat: each dataset needs its own")
    if args.plan:
        settings = planned_settings(args, settings)
    resolved = Settings.from_mapping(settings)
    shared = SharedEngine(args.model_dir, resolved)  # one model load for every dataset of the job
    try:
        for data_dir, out_dir in zip(args.data_dir, args.out_dir):
            evaluate(model_dir=args.model_dir, model_name=args.model_name, data_dir=data_dir, shots=args.shots,
                     out_dir=out_dir, cache_dir=args.cache_dir, settings=resolved, engine=shared)  # fmt: skip
    finally:
        shared.close()
    return 0
