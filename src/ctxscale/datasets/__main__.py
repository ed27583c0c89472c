"""Command line of the paper's datasets (one workflow step, ``prepare_dataset``)::

    python -m ctxscale.datasets prepare --dataset NAME --tokenizer DIR --out DIR
        [--max-length-per-example 256] [--max-eval-samples 250] [--seed 31337]
        [--revision REV] [--shot-pool-size 1024]
    python -m ctxscale.datasets list [--deepmind-math-configs all|C1,C2,...]

The miniature's generated datasets have their own: ``python -m ctxscale.datasets.synthetic``.
"""

from __future__ import annotations

import sys

from ctxscale.datasets.prepare import (DEFAULT_MAX_EVAL_SAMPLES, DEFAULT_MAX_LENGTH_PER_EXAMPLE, DEFAULT_SEED,
                                       DEFAULT_SHOT_POOL_SIZE, prepare_dataset)
from ctxscale.datasets.registry import DATASETS, expand_dataset_names, get_spec
from ctxscale.steps import cli_main, parse_step_args, step_parser


def _parse_configs(value: str) -> str | list[str]:
    return "all" if value == "all" else [c for c in value.split(",") if c]


def _build_parser():
    parser = step_parser(
        "python -m ctxscale.datasets",
        "Prepare the paper's evaluation datasets (shot pool, fixed test subset, manifest).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="prepare one dataset for one tokenizer")
    prepare.add_argument("--dataset", required=True, help="dataset name, e.g. gsm or deepmind-math.algebra__linear_1d")
    prepare.add_argument("--tokenizer", required=True, help="directory of a Hugging Face tokenizer")
    prepare.add_argument("--out", required=True, help="output directory (shots.jsonl, test.jsonl, manifest.json)")
    prepare.add_argument("--max-length-per-example", type=int, default=DEFAULT_MAX_LENGTH_PER_EXAMPLE)
    prepare.add_argument("--max-eval-samples", type=int, default=DEFAULT_MAX_EVAL_SAMPLES)
    prepare.add_argument("--seed", type=int, default=DEFAULT_SEED)
    prepare.add_argument("--revision", default=None, help="Hub revision (default: the registry's)")
    prepare.add_argument("--shot-pool-size", type=int, default=DEFAULT_SHOT_POOL_SIZE,
                         help="shot rows written (0 = the whole filtered pool)")  # fmt: skip

    listing = commands.add_parser("list", help="print the dataset names with task, metric and source")
    listing.add_argument("--deepmind-math-configs", type=_parse_configs, default="all",
                         help="'all' or comma-separated configs")  # fmt: skip
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_step_args(_build_parser(), argv)
    if args.command == "prepare":
        prepare_dataset(
            args.dataset, args.tokenizer, args.out,
            max_length_per_example=args.max_length_per_example,
            max_eval_samples=args.max_eval_samples, seed=args.seed, revision=args.revision,
            shot_pool_size=args.shot_pool_size,
        )  # fmt: skip
    else:
        for name in expand_dataset_names(DATASETS, args.deepmind_math_configs):
            spec = get_spec(name)
            print("\t".join([name, spec.task, spec.metric, spec.hf_id, spec.config or "", spec.revision]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
