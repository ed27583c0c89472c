"""``ctxscale plan``: the GPU plan of every evaluate job (:mod:`ctxscale.plan.evaluation`) and extend job
(:mod:`ctxscale.plan.extension`) of a workflow config as tables or JSON lines; with ``--cost``, what every
evaluate and extend job will cost in tokens and GPU-hours (:mod:`ctxscale.plan.cost`), each GPU preset of
``cost.gpus`` planned for its own memory.

``ctxscale plan --configfile config/config.yaml``; ``python -m ctxscale.plan`` runs the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any, Mapping

import yaml

from ctxscale.errors import UserError
from ctxscale.plan import cost, extension
from ctxscale.plan.evaluation import format_plan, plan_config
from ctxscale.steps import cli_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctxscale plan",
        description="Print the GPU plan of every evaluate job (max_model_len, tensor parallel size, GPUs) and of "
        "every extend job (GPUs, per-GPU memory; ctxscale.plan.extension) for a workflow config. Uses prepared "
        "data and downloaded checkpoints where present; otherwise the length-filter bound and the hub's "
        "config.json. With --cost: what the run will cost (tokens, GPU-hours).",
    )
    parser.add_argument("--configfile", default="config/config.yaml", help="workflow config (default: the paper)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an evaluation value, e.g. --set gpu_memory_gib=139.8; extension.KEY sets "
                        "an extension value (extension.gpus=4), extend.KEY a recipe value of every extend job "
                        "(extend.cpu_offload=true) (repeatable)")  # fmt: skip
    parser.add_argument("--per-dataset", action="store_true", help="one row per job instead of grouped rows")
    parser.add_argument("--json", action="store_true", help="print the plans as JSON lines (key job: evaluate|extend)")
    parser.add_argument("--cost", action="store_true",
                        help="print what the run will cost instead: per job, prompt tokens submitted and prefilled "
                        "with vLLM's prefix reuse, decode tokens, and roofline GPU-hours, plus the extend jobs' "
                        "training (ctxscale.plan.cost documents the model)")  # fmt: skip
    parser.add_argument("--gpu", action="append", metavar="PRESET",
                        help="with --cost: a GPU preset of the config's cost.gpus (default presets: h100, h200); "
                        "repeatable; default: every preset")  # fmt: skip
    return parser


def _apply_overrides(config: dict, items: list[str]) -> dict[str, Any]:
    """--set values into ``config`` (evaluation.KEY or extension.KEY); returns the extend.KEY recipe overrides."""
    from ctxscale.config import schema_defaults

    recipe: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.rpartition(".")
        section = section if dot else "evaluation"
        known = schema_defaults("extend_spec") if section == "extend" else config.get(section)
        if not sep or section not in ("evaluation", "extension", "extend") or name not in (known or {}):
            raise UserError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(config['evaluation'])}, "
                            "or extension.KEY, or extend.KEY (a recipe key)")  # fmt: skip
        target = recipe if section == "extend" else config[section]
        target[name] = yaml.safe_load(value)  # as the YAML file would read it
    return recipe


def _print_cost(config: dict, recipe: Mapping[str, Any], names: list[str] | None, *, as_json: bool) -> int:
    presets = cost.gpu_presets(config)
    unknown = [name for name in names or [] if name not in presets]
    if unknown:
        raise UserError(f"--gpu {unknown[0]}: not a preset of cost.gpus ({', '.join(presets)})")
    costs = {name: (presets[name], *cost.cost_config(config, presets[name], recipe)) for name in names or presets}
    if not as_json:
        print(cost.format_cost(costs))
        return 0
    for _, evaluate_jobs, extend_jobs in costs.values():
        for job in evaluate_jobs:
            print(json.dumps({"job": "evaluate", **asdict(job)}, sort_keys=True))
        for job in extend_jobs:
            print(json.dumps({"job": "extend", **asdict(job)}, sort_keys=True))
    return 0


@cli_main
def main(argv: list[str] | None = None) -> int:
    from ctxscale import config as ctxconfig

    args = build_parser().parse_args(argv)
    config = ctxconfig.load_config(args.configfile)
    recipe = _apply_overrides(config, args.set)
    config = ctxconfig.validate_config(config)
    if args.gpu and not args.cost:
        raise UserError("--gpu selects a preset of --cost; add --cost")
    if args.cost:
        return _print_cost(config, recipe, args.gpu, as_json=args.json)
    plans = plan_config(config)
    extend_plans = extension.plan_extension_config(config, recipe)
    if args.json:
        for p in plans:
            print(json.dumps({"job": "evaluate", **asdict(p)}, sort_keys=True))
        for e in extend_plans:
            print(json.dumps({"job": "extend", **asdict(e)}, sort_keys=True))
        return 0
    print(format_plan(plans, collapse=not args.per_dataset))
    if extend_plans:
        print(f"\nextend jobs (per-GPU GiB; {extension.__name__} documents the terms):\n")
        print(extension.format_extension_plan(extend_plans))
    return 0


if __name__ == "__main__":
    sys.exit(main())
