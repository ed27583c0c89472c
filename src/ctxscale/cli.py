"""The ``ctxscale`` command: one subcommand per workflow step or tool, each the ``main`` of a step module.

Subcommands are registered by name in :data:`COMMANDS`; ``ctxscale NAME ARGS...`` runs the same ``main`` that
``python -m MODULE ARGS...`` runs (with the step's job first for a module with several, e.g. ``ctxscale table1``
is ``python -m ctxscale.tables table1``). The module is imported only when its subcommand runs, so
``ctxscale --help`` stays fast and heavy dependencies (torch, lm-eval) load only for the steps that need them.
To add a step, add one line to :data:`COMMANDS` (or call :func:`register`).
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    help: str
    job: str | None = None  # the subcommand of the module's main, for a module with several jobs
    function: str = "main"


COMMANDS: dict[str, Command] = {
    "fit": Command("ctxscale.experiments", "fit the law to an observations table (one task, one experiment)"),
    "predict": Command("ctxscale.fitting", "predict performance from a saved fit"),
    "solve": Command("ctxscale.solve", "planning queries with intervals: compute for a target, shortest prompt, window"),
    "ingest": Command("ctxscale.ingest", "lm-evaluation-harness output folders (--log_samples) -> observations table"),
    "external": Command("ctxscale.external", "convert an external result table (RULER, HELMET, Pythia) to observations"),
    "compare": Command("ctxscale.compare", "compare the law variants out of sample (law_comparison table)"),
    "table1": Command("ctxscale.tables", "print the paper's Table 1 (N, D, C) for a workflow config", job="table1"),
    "tables": Command("ctxscale.tables", "write the paper's tables (CSV and Markdown) from the fits", job="write"),
    "figures": Command("ctxscale.figures.render", "render the paper's figures from the observations and the fits"),
    "model-info": Command("ctxscale.model_info", "write results/models/{model}.json for one model"),
    "plan": Command("ctxscale.plan.cli", "print the GPU plan (max_model_len, tensor parallel size, GPUs) of every evaluate job"),
    "pin-revisions": Command("ctxscale.download", "resolve the config's model revisions (branches) to commits",
                             function="pin_main"),
}


def register(name: str, module: str, function: str = "main", help: str = "", job: str | None = None) -> None:
    """Add (or replace) a subcommand."""
    COMMANDS[name] = Command(module, help, job, function)


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: ctxscale COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in sorted(COMMANDS.items())]
    lines += ["", "Run `ctxscale COMMAND --help` for the arguments of one command."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        import ctxscale

        print(f"ctxscale {ctxscale.__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(sorted(COMMANDS))}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    function = getattr(importlib.import_module(command.module), command.function)
    return int(function([command.job, *rest] if command.job else rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
