"""One error type for everything a user can fix: the CLI prints it as one line and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment.

    The message says what is wrong, where (file, token, option), and what to do.
    The CLI prints it without a traceback and exits with status 2.
    """

    exit_code = 2
