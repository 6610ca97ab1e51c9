"""The documentation under docs/ runs as written: every code block either runs here or says why not
(tests/codeblocks.py has the conventions), and the generated pages (docs/hooks.py) cover the code.

Each page runs in a fresh folder, its blocks in page order: bash blocks through the typer app
(latency timed at batch 1 in one short round, as in tests/test_readme.py), python blocks in one
namespace per page."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from compresskit.cli import app
from tests.codeblocks import RUNNABLE, code_blocks, compresskit_commands
from tests.fastlatency import batch_one_latency

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def _name(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_block_runs_or_says_why():
    assert PAGES, f"no markdown pages under {DOCS}"
    problems = []
    for page in PAGES:
        try:
            blocks = code_blocks(page)
            for block in blocks:
                if block.not_run is None and block.language not in RUNNABLE:
                    problems.append(
                        f"{block.where}: a ```{block.language} block runs only as {' or '.join(RUNNABLE)}; "
                        "mark it <!-- not run: REASON --> otherwise."
                    )
                elif block.not_run is None and block.language == "bash":
                    compresskit_commands(block)
                elif block.not_run is None:
                    block.test_code()
        except ValueError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


def _runs(page: Path) -> bool:
    """Whether `page` has a block to run (a page whose notes are malformed runs, and fails, too)."""
    try:
        return any(block.not_run is None for block in code_blocks(page))
    except ValueError:
        return True


RUN_PAGES = [page for page in PAGES if _runs(page)]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=_name)
def test_page_runs(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for block in code_blocks(page):
        if block.not_run is not None:
            continue
        if block.language == "python":
            exec(compile(block.test_code(), block.where, "exec"), namespace)
            continue
        for args in compresskit_commands(block):
            with batch_one_latency():
                result = CliRunner().invoke(app, args)
            command = " ".join(["compresskit", *args])
            assert result.exit_code == 0, (
                f"{block.where}: {command} exited {result.exit_code}\n{result.output}"
            )


def test_cli_reference_names_every_command():
    hooks = _hooks()
    page = hooks.on_page_markdown((DOCS / "cli.md").read_text(encoding="utf-8"))
    assert hooks.CLI_MARKER not in page
    names = list(typer.main.get_command(app).commands)
    assert "train" in names and "import" in names
    missing = [name for name in names if f"\n## compresskit {name}\n" not in page]
    assert not missing, f"docs/cli.md's generated reference lacks the commands {missing}"


def test_results_page_shows_results_readme_without_file_links():
    hooks = _hooks()
    page = hooks.on_page_markdown((DOCS / "results.md").read_text(encoding="utf-8"))
    assert "<!-- include:" not in page
    readme = (DOCS.parent / "results" / "README.md").read_text(encoding="utf-8")
    last = [line for line in readme.splitlines() if line.strip()][-1]
    assert hooks.LINK.search(last) or last in page  # the whole file, up to its last line
    targets = [m.group(3) for m in hooks.LINK.finditer(page)]
    assert all(t.startswith("#") or re.match(r"[a-z][a-z0-9+.-]*:", t) for t in targets), targets
