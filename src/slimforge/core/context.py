"""The run context: where outputs go, the progress callback, the seed, and data shared by steps."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator


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


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path with the same name as ``final`` in a private folder beside it (same file system);
    flush it to disk and rename it (and any side files written next to it, such as ONNX external data or an
    OpenVINO ``.bin``) into place only if the block succeeds. On failure nothing is left behind; a killed run's
    temporary folder carries its PID and is swept by the next run that writes there. An existing folder is
    replaced only where slimforge made it; names are recorded in the folder's manifest before they appear.

    Example:
        >>> with atomic_path(Path("/tmp/slimforge-doc/x.txt")) as tmp:
        ...     _ = tmp.write_text("hi")
    """
    from slimforge.core.outputs import (describe_os_error, fsync_tree, make_dirs, read_manifest, record,
                                        storage_error, writing)
    from slimforge.core.scratch import TMP_PREFIX, note_temporary
    from slimforge.errors import OutputError

    final = Path(final)
    with writing(final):
        make_dirs(final.parent)
        tmpdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{final.name[:40]}.", dir=final.parent))
    note_temporary(tmpdir)
    tmp = tmpdir / final.name
    try:
        try:
            yield tmp
        except Exception as exc:
            cause = storage_error(exc)
            if cause is not None:  # a full disk or a read-only folder, whatever wrapped it: name the output
                raise OutputError(describe_os_error(cause, final)) from exc
            raise
        if not tmp.exists():
            raise FileNotFoundError(f"the step did not write {final.name}")
        with writing(final):
            siblings = sorted(tmpdir.iterdir(), key=lambda p: p == tmp)  # the main file last
            owned = read_manifest(final.parent)
            for sibling in siblings:
                target = final.parent / sibling.name
                if target.is_dir() and not target.is_symlink():
                    if sibling.name not in (owned or ()) and read_manifest(target) is None:
                        raise OutputError(f"{target}: is a folder slimforge did not write; it is left as it is")
                elif owned is not None and sibling.name not in owned and (target.exists() or target.is_symlink()):
                    raise OutputError(f"{target}: the file exists and slimforge did not write it; it is left as "
                                      "it is (choose another output folder)")
                fsync_tree(sibling)
                record(final.parent, sibling.name)
            for sibling in siblings:
                target = final.parent / sibling.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(sibling, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
