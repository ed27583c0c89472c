"""The one exception type for mistakes a user can fix (bad input, bad config, missing access).

Steps (:mod:`ctxscale.steps`) print it as ``error: <message>`` with exit code 2 instead of a traceback;
library callers can catch it like any exception.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, described in one line."""

    exit_code = 2
