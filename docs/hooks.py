"""MkDocs hooks (registered in mkdocs.yml): pages written from the code and files they describe.

* ``<!-- cli-reference -->`` in a page becomes the reference of every ``compresskit`` command:
  usage, help and every option with its help text, read from the click command behind the typer
  app (`compresskit.cli:app`), so the reference cannot drift from the code.
* ``<!-- include: results/README.md -->`` becomes that file (repository root relative), its title
  dropped and its links to files shown as paths, since those files are not part of the site.
"""

from __future__ import annotations

import html
import inspect
import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_MARKER = "<!-- cli-reference -->"
INCLUDE = re.compile(r"<!-- include: (\S+) -->")
LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]])")


def on_page_markdown(markdown: str, page=None, config=None, files=None, **_) -> str:
    """MkDocs' page hook: replace the markers above in the page's markdown."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return INCLUDE.sub(lambda match: included_markdown(match.group(1)), markdown)


def _text(value: str) -> str:
    """Plain help text as markdown that shows it literally (no emphasis, links or HTML)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(value, quote=False))


def _help(command) -> str:
    """A command's help text: its docstring up to click's ``\\f`` cut, paragraphs kept."""
    return inspect.cleandoc((command.help or "").split("\f")[0])


def _parameters(command, context) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(arguments, options) of `command`: each ``(names and value, help)`` as ``--help`` shows it."""
    arguments, options = [], []
    for param in command.get_params(context):
        record = param.get_help_record(context)
        if record is not None:
            (arguments if param.param_type_name == "argument" else options).append(record)
    return arguments, options


def _parameter_list(records: list[tuple[str, str]]) -> list[str]:
    return [
        f"- `{names}`: {_text(' '.join(text.split()))}" if text else f"- `{names}`" for names, text in records
    ]


def cli_reference() -> str:
    """Markdown for every command of `compresskit.cli:app`, in the order ``compresskit --help`` lists them."""
    import typer.main

    from compresskit.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="compresskit")
    names = group.list_commands(root)
    lines = [_text(_help(group)), "", "| command | what it does |", "|---|---|"]
    for name in names:
        summary = _text(group.get_command(root, name).get_short_help_str(limit=300)).replace("|", "\\|")
        lines.append(f"| [`compresskit {name}`](#compresskit-{name}) | {summary} |")
    _, options = _parameters(group, root)
    lines += ["", "Options of `compresskit` itself:", "", *_parameter_list(options)]
    for name in names:
        command = group.get_command(root, name)
        context = command.context_class(command, info_name=name, parent=root)
        usage = " ".join([context.command_path, *command.collect_usage_pieces(context)])
        arguments, options = _parameters(command, context)
        lines += ["", f"## compresskit {name}", "", _text(_help(command)), "", "```text", usage, "```"]
        if arguments:
            lines += ["", "Arguments:", "", *_parameter_list(arguments)]
        lines += ["", "Options:", "", *_parameter_list(options)]
    return "\n".join(lines) + "\n"


def included_markdown(path: str) -> str:
    """The markdown file at `path` (relative to the repository root) without its first-level
    title; a link to a file becomes its text and its repository path, an anchor or URL stays."""
    source = ROOT / path
    text = source.read_text(encoding="utf-8")
    text = re.sub(r"\A\s*# [^\n]*\n", "", text)
    folder = posixpath.dirname(path)

    def relink(match: re.Match) -> str:
        bang, label, target = match.groups()
        if target.startswith("#") or re.match(r"[a-z][a-z0-9+.-]*:", target):
            return match.group(0)
        where = posixpath.normpath(posixpath.join(folder, target))
        return f"{label} (`{where}`)" if label and not bang else f"`{where}`"

    return LINK.sub(relink, text)
