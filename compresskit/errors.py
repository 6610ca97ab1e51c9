"""The exceptions that the command line turns into a clean message and exit code 2.

The library names its own parameters (``ratio must be in (0, 1); got 1.5``), as scikit-learn does;
the command line shows the same message with its flags (``--ratio must be …``). A `ParameterError`
carries both: its message names each parameter as a placeholder, and `spelled` fills them in. The
command line's parameter → flag table is `compresskit.cli.flags`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_PLACEHOLDER = re.compile(r"\{(\d)\}")


class CompresskitError(Exception):
    """Bad input a user can fix: one sentence naming the parameter or file and what is allowed."""


class ParameterError(CompresskitError, ValueError):
    """A bad value of one or more named parameters.

    `message` names the i-th of `parameters` as ``{i}``, e.g.
    ``ParameterError("{0} must be in (0, 1); got 1.5", "ratio")``. ``str()`` gives the library's
    names ("ratio must be …"); `spelled` gives any other spelling (the CLI's "--ratio must be …").
    Nothing else in the message is read as a placeholder, so values may contain braces; a value
    that itself holds ``{0}``-style text (a regex such as ``a{2}``) is respelled too, a known limit.
    """

    def __init__(self, message: str, *parameters: str) -> None:
        self.template = message
        self.parameters = parameters
        super().__init__(self.spelled(lambda name: name))

    def spelled(self, spell: Callable[[str], str]) -> str:
        """The message with parameter i written as ``spell(parameters[i])``."""

        def fill(match: re.Match) -> str:
            index = int(match.group(1))
            return spell(self.parameters[index]) if index < len(self.parameters) else match.group(0)

        return _PLACEHOLDER.sub(fill, self.template)
