"""A griffe extension for the API reference (mkdocs.yml, mkdocstrings' python handler): doctest-style
lines in a docstring (``>>>``, ``...`` and the output lines after them, up to a blank line) become
a fenced ``pycon`` block, so the page shows them as written rather than as nested quotes."""

from __future__ import annotations

import re

import griffe

PROMPT = re.compile(r"^(\s*)(>>>|\.\.\.)(\s|$)")
FENCE = re.compile(r"^\s*(```|~~~)")


def fence_doctests(text: str) -> str:
    """`text` with every run of doctest lines outside a fenced block wrapped in a ``pycon`` fence,
    blank lines around it."""
    lines, out, fenced, i = text.splitlines(), [], False, 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            fenced = not fenced
        match = None if fenced else PROMPT.match(line)
        if match is None:
            out.append(line)
            i += 1
            continue
        indent = match.group(1)
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(lines[i][len(indent) :])
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fence the doctest lines of every object's docstring once the object tree is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
