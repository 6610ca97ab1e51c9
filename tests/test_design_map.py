"""DESIGN.md's map of the code names only files and folders the repository holds, and every module
of the package appears in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compresskit"
MODULE = re.compile(r"(?<![\w/.])((?:[a-z_]+/)*[a-z_]+\.py)\b")


def _design() -> str:
    return (ROOT / "DESIGN.md").read_text(encoding="utf-8")


def _modules() -> list[Path]:
    return sorted(p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py"))


def test_every_python_file_design_names_exists():
    """A name like ``prune.py`` or ``compress/any_model.py`` must be the end of some module's path."""
    paths = [str(p) for p in _modules()] + [str(p.relative_to(ROOT)) for p in ROOT.glob("*/*.py")]
    named = set(MODULE.findall(_design()))
    missing = sorted(n for n in named if not any(p == n or p.endswith("/" + n) for p in paths))
    assert not missing, f"DESIGN.md names files the repository does not hold: {missing}"


def test_every_package_folder_design_names_exists():
    folders = set(re.findall(r"^[\s│]*([a-z_]+)/\s", _design(), flags=re.MULTILINE))
    missing = sorted(f for f in folders if not (PACKAGE / f).is_dir() and not (PACKAGE / "jobs" / f).is_dir())
    assert not missing, f"DESIGN.md names folders the package does not hold: {missing}"


def test_every_module_appears_in_the_map():
    """The map is complete: each module's file name (``__init__.py`` aside) is mentioned."""
    text = _design()
    absent = [str(p) for p in _modules() if p.name != "__init__.py" and p.name not in text]
    assert not absent, f"DESIGN.md does not mention: {absent}"
