"""The fenced code blocks of a markdown page, and the notes that say how a test runs them.

A ```` ```bash ```` block holds one ``compresskit …`` command per line (``#`` lines are comments);
a ```` ```python ```` block is Python. Either is run by the docs test unless the nearest non-blank
line above its fence is one of these HTML comments (invisible on the rendered page):

* ``<!-- not run: REASON -->``: the block is not run, for the reason given (it needs CIFAR, hours,
  several processes, a notebook, or installs packages). Every block in another language needs one.
* ``<!-- test with: OLD => NEW; OLD2 => NEW2 -->``: the block runs with each OLD text replaced by
  NEW, e.g. fewer epochs, so that a realistic command runs in seconds. Every OLD must occur.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

RUNNABLE = ("bash", "python")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
NOTE = re.compile(r"^\s*<!--\s*(?P<kind>not run|test with):(?P<body>.*?)-->\s*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: where it starts (`line`, 1-based, of the opening fence), its language
    (the info string's first word, "" when none), its code (dedented by the fence's indent) and
    its note: `not_run` (the reason) or `replacements` (``(old, new)`` pairs)."""

    path: Path
    line: int
    language: str
    code: str
    not_run: str | None = None
    replacements: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def test_code(self) -> str:
        """The code as the test runs it: every replacement made, each required to match."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise ValueError(f"{self.where}: the test-with text {old!r} is not in the block.")
            code = code.replace(old, new)
        return code


def _note(line: str, where: str) -> tuple[str | None, tuple[tuple[str, str], ...]] | None:
    """(not-run reason, replacements) of a note line; None when the line is not a note."""
    match = NOTE.match(line)
    if match is None:
        return None
    body = match.group("body").strip()
    if match.group("kind") == "not run":
        if not body:
            raise ValueError(f"{where}: a not-run note must give its reason: <!-- not run: REASON -->.")
        return body, ()
    pairs = []
    for part in filter(None, (p.strip() for p in body.split(";"))):
        old, arrow, new = part.partition("=>")
        if not arrow or not old.strip():
            raise ValueError(
                f"{where}: a test-with note takes 'OLD => NEW' pairs separated by ';', got {part!r}."
            )
        pairs.append((old.strip(), new.strip()))
    if not pairs:
        raise ValueError(f"{where}: a test-with note needs at least one 'OLD => NEW' pair.")
    return None, tuple(pairs)


def code_blocks(path: Path) -> list[CodeBlock]:
    """Every fenced block of the markdown file at `path`, in order. A note not directly above a
    fence (blank lines aside) raises ValueError, so a moved block cannot lose its note silently."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, pending, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        where = f"{path}:{i + 1}"
        note = _note(line, where)
        if note is not None:
            if pending is not None:
                raise ValueError(f"{pending[0]}: a note is followed by another note instead of a code block.")
            pending = (where, note)
            i += 1
            continue
        fence = FENCE.match(line)
        if fence is None:
            if line.strip() and pending is not None:
                raise ValueError(f"{pending[0]}: a note must stand directly above a fenced code block.")
            i += 1
            continue
        indent, marks = fence.group("indent"), fence.group("fence")
        close = re.compile(rf"^[ \t]*{re.escape(marks[0])}{{{len(marks)},}}\s*$")
        body, start = [], i + 1
        i += 1
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1  # the closing fence
        not_run, replacements = pending[1] if pending is not None else (None, ())
        info = fence.group("info").strip().split()
        blocks.append(
            CodeBlock(path, start, info[0] if info else "", "\n".join(body) + "\n", not_run, replacements)
        )
        pending = None
    if pending is not None:
        raise ValueError(f"{pending[0]}: a note must stand directly above a fenced code block.")
    return blocks


def compresskit_commands(block: CodeBlock) -> list[list[str]]:
    """The arguments (after ``compresskit``) of each command line of a bash block, as the test
    runs it; a line that is not a ``compresskit`` command raises ValueError."""
    commands = []
    for number, line in enumerate(block.test_code().splitlines(), start=block.line + 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        args = shlex.split(line)
        if args[0] != "compresskit" or line.rstrip().endswith("\\"):
            raise ValueError(
                f"{block.path}:{number}: a runnable bash block holds one 'compresskit …' command per "
                f"line; mark the block <!-- not run: REASON --> otherwise. Got: {line.strip()}"
            )
        commands.append(args[1:])
    return commands
