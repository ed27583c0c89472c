"""The one exception type for mistakes a user can fix (bad input, bad config, missing access).

Command-line entry points catch it and print ``error: <message>`` with exit code 2 instead of a
traceback; library callers can catch it like any exception.
"""


class UserError(Exception):
    """A problem with the user's input or environment, described in one line."""

    exit_code = 2
