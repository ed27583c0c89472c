"""The one exception type for mistakes a user can fix (bad input, bad config, missing access), and the
command-line convention around it.

Command-line entry points catch it and print ``error: <message>`` with exit code 2 instead of a
traceback; library callers can catch it like any exception.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input or environment, described in one line."""

    exit_code = 2


def cli_main(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a ``main(argv=None) -> int``: a :class:`UserError` prints ``error: ...`` and returns exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code

    return wrapper


def setup_logging(level: str | int = "INFO") -> None:
    """Progress and diagnostics go to stderr (the workflow's job logs)."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
