"""The ``ctxscale`` command: one subcommand per workflow step or tool, dispatched to a module's function.

Subcommands are registered by name in :data:`COMMANDS` as ``(module, function, help)``; the module is
imported only when its subcommand runs, so ``ctxscale --help`` stays fast and heavy dependencies (torch,
lm-eval) load only for the steps that need them. To add a step, add one line to :data:`COMMANDS` (or call
:func:`register`) pointing at a function ``f(argv: list[str] | None) -> int``, usually the module's ``main``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str, str]] = {
    "fit": ("ctxscale.experiments", "fit_main", "fit the law to an observations table (one task, one experiment)"),
    "predict": ("ctxscale.fitting", "predict_main", "predict performance from a saved fit"),
    "solve": ("ctxscale.solve", "main", "planning queries with intervals: compute for a target, shortest prompt, window"),
    "ingest": ("ctxscale.ingest", "main", "lm-evaluation-harness output folders (--log_samples) -> observations table"),
    "external": ("ctxscale.external", "main", "convert an external result table (RULER, HELMET, Pythia) to observations"),
    "compare": ("ctxscale.compare", "main", "compare the law variants out of sample (law_comparison table)"),
    "table1": ("ctxscale.compute", "table1_main", "print the paper's Table 1 (N, D, C) for a workflow config"),
    "model-info": ("ctxscale.compute", "model_info_main", "write results/models/{model}.json for one model"),
    "plan": ("ctxscale.plan", "main", "print the GPU plan (max_model_len, tensor parallel size, GPUs) of every evaluate job"),
    "pin-revisions": ("ctxscale.download", "pin_main", "resolve the config's model revisions (branches) to commits"),
}


def register(name: str, module: str, function: str = "main", help: str = "") -> None:
    """Add (or replace) a subcommand."""
    COMMANDS[name] = (module, function, help)


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: ctxscale COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in sorted(COMMANDS.items())]
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
    module_name, function_name, _ = COMMANDS[name]
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
