"""Rendering the library's progress events as rich progress bars."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from slimforge.core.context import ProgressEvent, ProgressFn


@contextlib.contextmanager
def progress_bars(console: Console, *, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """Yield a progress callback that draws one bar per task name."""
    if not enabled:
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False, style="bold"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bars:
        tasks: dict[str, int] = {}

        def on_event(event: ProgressEvent) -> None:
            if event.task not in tasks:
                tasks[event.task] = bars.add_task(event.task, total=event.total)
            bars.update(tasks[event.task], completed=event.completed, total=event.total)

        yield on_event
