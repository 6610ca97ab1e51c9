"""Progress display: a rich bar on a terminal, plain lines elsewhere (logs, CI, pipes)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """`with progress.task("epoch 3/30", total=352) as advance: ... advance()`; `log(line)`.

    With ``enabled=False`` nothing at all is printed (library use, tests).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.interactive = enabled and sys.stderr.isatty()

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        if not self.interactive:
            yield lambda: None
            return
        bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        with bar:
            task_id = bar.add_task(description, total=total)
            yield lambda: bar.advance(task_id)

    def log(self, line: str) -> None:
        if self.enabled:
            print(line, file=sys.stderr, flush=True)
