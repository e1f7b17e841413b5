"""The run context: where outputs go, the progress callback, the seed, and data shared by steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable



@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """``completed`` of ``total`` units of ``task`` are done (``total`` None: unknown length)."""

    task: str
    completed: float
    total: float | None = None


ProgressFn = Callable[[ProgressEvent], None]


@dataclass
class RunContext:
    """Shared state for a run.

    Example:
        >>> ctx = RunContext(workdir=Path("/tmp/slimforge-doc"))
        >>> ctx.report_progress("export", 1, 2)
    """

    workdir: Path | None = None  # where intermediate artifacts go; None: this run's scratch folder
    progress: ProgressFn | None = None
    seed: int = 0
    threads: int | None = None
    calibration_data: Any = None  # a slimforge.io.data.Dataset
    output: Path | None = None  # where the run's final artifact goes (set by the engine for the last step only)
    baseline: Any = None  # the artifact the run started from (the teacher for distillation)

    def output_for(self, art: Any, suffix: str) -> Path:
        """The file a step writes ``art`` to: ``output`` for the final step, else a file named by its id."""
        if self.output is not None:
            return Path(self.output)
        return self.workdir / "artifacts" / f"{art.name}-{art.id[:10]}{suffix}"

    def __post_init__(self) -> None:
        from slimforge.core.outputs import make_dirs, writing
        from slimforge.core.scratch import scratch_dir

        self.workdir = Path(self.workdir) if self.workdir is not None else scratch_dir()
        with writing(self.workdir):
            make_dirs(self.workdir)

    def report_progress(self, task: str, completed: float, total: float | None = None) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(task, completed, total))
