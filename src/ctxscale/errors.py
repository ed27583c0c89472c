"""The one exception type for mistakes a user can fix (bad input, bad config, missing access), and the
command-line convention around it.

Command-line entry points catch it and print ``error: <message>`` with exit code 2 instead of a
traceback; library callers can catch it like any exception.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Callable


class UserError(Exception):
    """A problem with the user's input or environment, described in one line."""

    exit_code = 2


def handle_user_errors(body: Callable[[], int | None]) -> int:
    """Run ``body()``; a :class:`UserError` becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        return int(body() or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


def cli_main(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a ``main(argv=None) -> int`` with :func:`handle_user_errors`."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        return handle_user_errors(lambda: main(argv))

    return wrapper


def verbosity_level(verbosity: int) -> int:
    """-q (-1): warnings only; default (0): progress; -v (1): debug details."""
    return logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO


def setup_logging(level: str | int = logging.INFO) -> None:
    """Progress and diagnostics go to stderr (the workflow's job logs)."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def step_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of one workflow step's command line (``python -m ctxscale.<step>``), with
    ``--log-level``; read it with :func:`parse_step_args`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="stderr detail (INFO)")
    return parser


def parse_step_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a step's arguments and send its log to stderr at the chosen level."""
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    return args


def parse_json_option(text: str, option: str):
    """The value of a command-line option that holds JSON (``--spec``, ``--settings``, ...)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{option} is not valid JSON ({error.msg} at character {error.pos})") from None


def read_json_object(path, what: str) -> dict:
    """A JSON file that must hold an object; ``what`` names it in errors (e.g. "fit file")."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"cannot read {what} {path}: it does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {what} {path}: not valid JSON ({error})") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error}") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} does not hold a JSON object")
    return value
