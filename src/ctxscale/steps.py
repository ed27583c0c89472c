"""How every step starts: ``python -m ctxscale.<step>`` runs the module's ``main(argv) -> int``, which is
decorated with :func:`cli_main` (which first has the process keep freed memory for reuse,
:mod:`ctxscale.allocator`, and is the one error path: a :class:`~ctxscale.errors.UserError` becomes one
``error: <message>`` line on stderr and exit code 2, never a traceback) and parses its arguments with a
:func:`step_parser` through :func:`parse_step_args` (the one logging flag style: ``-q`` warnings only,
``-v`` debug details, progress otherwise, on stderr). A step with two jobs takes them as argparse subcommands
made by :func:`step_subparser` (``python -m ctxscale.tables write|table1``). The ``ctxscale`` command
(:mod:`ctxscale.cli`) runs the same ``main`` functions by name.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from typing import Callable

from ctxscale.allocator import keep_freed_memory
from ctxscale.errors import UserError


def cli_main(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a step's ``main(argv=None) -> int``: a :class:`UserError` becomes ``error: <message>`` on
    stderr and the error's exit code (2)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        keep_freed_memory()
        try:
            return int(main(argv) or 0)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code

    return wrapper


def setup_logging(level: str | int = logging.INFO) -> None:
    """Progress and diagnostics go to stderr (the workflow's job logs)."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)


def step_parser(prog: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """The argument parser of one step's command line, with ``-q/--quiet`` and ``-v/--verbose``; read it with
    :func:`parse_step_args`."""
    parser = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
    _add_logging_flags(parser, default=False)
    return parser


def step_subparser(subparsers, name: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """One job of a step with several (``subparsers`` from the :func:`step_parser`'s ``add_subparsers``); it
    takes ``-q``/``-v`` too, after its own name."""
    parser = subparsers.add_parser(name, help=description, description=description, **kwargs)
    _add_logging_flags(parser, default=argparse.SUPPRESS)  # unset unless given: the step parser's value stands
    return parser


def _add_logging_flags(parser: argparse.ArgumentParser, default) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", default=default, help="log warnings only")
    verbosity.add_argument("-v", "--verbose", action="store_true", default=default, help="log debug details")


def parse_step_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a step's arguments and send its log to stderr at the chosen detail."""
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    return args


def parse_json_option(text: str, option: str):
    """The value of a command-line option that holds JSON (``--spec``, ``--settings``, ...)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{option} is not valid JSON ({error.msg} at character {error.pos})") from None
