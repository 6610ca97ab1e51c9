"""What the experiment scripts share: run `compresskit` in a fresh process, and start, resume or
skip a run directory by the state its ``run.json`` records. Imported as ``from plan import …``
by the scripts in this folder (Python puts a script's own folder first on the import path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from compresskit.rundir import read_marker


def compresskit(*args: str) -> None:
    """`compresskit ARGS` in a new Python process; raises when it fails."""
    print("$ compresskit " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "compresskit", *args], check=True)


def start_or_resume(run: Path, command: str, flags: list[str], data: list[str]) -> None:
    """Start `run` with `command FLAGS --out RUN`, continue it with ``--resume`` (and the data
    flags) when it stopped, or skip it when it finished."""
    marker = read_marker(run)
    if marker is None:
        compresskit(command, *flags, "--out", str(run), "--quiet")
    elif marker.state == "finished":
        print(f"{run}: finished", flush=True)
    else:
        compresskit(command, "--resume", str(run), *data, "--quiet")
