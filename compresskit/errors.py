"""The one exception type that the command line turns into a clean message and exit code 2."""

from __future__ import annotations


class CompresskitError(Exception):
    """Bad input a user can fix: the message is one sentence naming the flag or file and what is allowed."""
