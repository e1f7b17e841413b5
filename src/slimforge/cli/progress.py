"""Rendering the library's progress events as rich progress bars."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from slimforge.core.context import ProgressEvent, ProgressFn


@contextlib.contextmanager
def progress_bars(console: Console, *, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """Yield a progress callback that draws one bar per task name; the display starts with the first event, so a
    run that fails before any work prints nothing but its error."""
    if not enabled:
        yield None
        return
    bars = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False, style="bold"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)
    tasks: dict[str, int] = {}

    def on_event(event: ProgressEvent) -> None:
        if not tasks:
            bars.start()
        if event.task not in tasks:
            tasks[event.task] = bars.add_task(event.task, total=event.total)
        bars.update(tasks[event.task], completed=event.completed, total=event.total)

    try:
        yield on_event
    finally:
        if tasks:
            bars.stop()
