"""Scratch space: one folder per run, named after the run's PID, removed on exit; the next run sweeps the folders
of runs that died (``kill -9``), and child processes die with their parent.

Hidden temporary folders that ``atomic_path`` makes beside an output (``.slimforge-tmp-<pid>-...``) carry the PID
too, so a later run that writes to the same folder removes those a killed run left.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

RUN_PREFIX = "slimforge-run-"
TMP_PREFIX = ".slimforge-tmp-"
_OWNER = "owner.json"
_PID_RE = re.compile(r"^(?:slimforge-run-|\.slimforge-tmp-)(\d+)-")
_state: dict[str, Path | None] = {"dir": None}


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def scratch_dir() -> Path:
    """This process's scratch folder (made on first use, removed at exit).

    Example:
        >>> scratch_dir().name.startswith(f"slimforge-run-{os.getpid()}-")
        True
    """
    current = _state["dir"]
    if current is not None and current.is_dir() and _owned_here(current):
        return current
    sweep(Path(tempfile.gettempdir()))
    atexit.register(remove_scratch)  # (registering twice is harmless: the second call finds nothing to remove)
    blocked = _block_termination()
    try:  # a SIGTERM between making the folder and recording it would leave it behind
        folder = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-"))
        _state["dir"] = folder
    finally:
        _unblock(blocked)
    (folder / _OWNER).write_text(json.dumps({"pid": os.getpid(), "created": _create_time(os.getpid())}))
    return folder


def _block_termination() -> object:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def _unblock(previous: object) -> None:
    import signal

    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # type: ignore[arg-type]


def child_env() -> dict[str, str]:
    """The environment for a child process: its temporary files go into this run's scratch folder, so they are
    removed with it even when the child is killed."""
    folder = str(scratch_dir())
    return {**os.environ, "TMPDIR": folder, "TEMP": folder, "TMP": folder}


def _owned_here(folder: Path) -> bool:
    m = _PID_RE.match(folder.name)
    return m is not None and int(m.group(1)) == os.getpid()


def remove_scratch() -> None:
    """Remove this process's scratch folder (a forked child never removes its parent's)."""
    folder = _state["dir"]
    if folder is not None and _owned_here(folder):
        shutil.rmtree(folder, ignore_errors=True)
        _state["dir"] = None


def owner_alive(path: Path) -> bool:
    """Whether the process that made ``path`` (PID in its name; start time in its owner file) is still running."""
    m = _PID_RE.match(path.name)
    if m is None:
        return True  # not ours to judge
    pid = int(m.group(1))
    started = _create_time(pid)
    if started is None:
        return False
    try:
        recorded = json.loads((path / _OWNER).read_text()).get("created")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded is not None and abs(float(recorded) - started) > 1.0:
        return False  # the PID was reused by another process
    return True


_ELSEWHERE = "elsewhere.txt"


def note_temporary(path: Path) -> None:
    """Remember a temporary folder made outside the scratch folder (beside an output), so that if this run is
    killed, the sweep that removes its scratch folder removes that one too."""
    try:
        with open(scratch_dir() / _ELSEWHERE, "a", encoding="utf-8") as fh:
            fh.write(str(Path(path).resolve()) + "\n")
    except OSError:
        pass


def _remove_dead(p: Path) -> None:
    pid = _PID_RE.match(p.name).group(1)  # type: ignore[union-attr]
    try:
        others = (p / _ELSEWHERE).read_text(encoding="utf-8").splitlines()
    except OSError:
        others = []
    for line in others:
        other = Path(line)
        if other.name.startswith(f"{TMP_PREFIX}{pid}-") and other.is_dir() and not other.is_symlink():
            shutil.rmtree(other, ignore_errors=True)
    shutil.rmtree(p, ignore_errors=True)


def sweep(folder: Path) -> list[Path]:
    """Remove the scratch and temporary folders in ``folder`` whose owning run is dead (and the temporary folders
    such a run had made beside its outputs); returns what went."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        if _PID_RE.match(p.name) and not p.is_symlink() and p.is_dir() and not owner_alive(p):
            _remove_dead(p)
            if not p.exists():
                removed.append(p)
    if removed:
        log.info("removed %d folder(s) left by killed slimforge runs in %s", len(removed), folder)
    return removed


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: on Linux the child gets SIGKILL when its parent dies."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass


def handle_termination_on_the_thread_stack(*signums: int) -> bool:
    """Run the handlers of ``signums`` on the interrupted thread's own stack, not on an alternate signal stack.

    Python installs its handlers with ``SA_ONSTACK``, and OpenVINO's CPU plugin sets an alternate stack for the
    thread that creates it and, when two plugins (two ``ov.Core`` objects, e.g. NNCF's and ours) are released out of
    order, restores one it has already unmapped: the next SIGTERM or Ctrl-C then dies with SIGSEGV (exit 139,
    scratch left behind) instead of running the exit handlers. Without ``SA_ONSTACK`` that stale stack is never
    used. Linux x86-64 and arm64 (glibc's ``struct sigaction``); elsewhere nothing is changed and False returned.

    Example:
        >>> import signal
        >>> handle_termination_on_the_thread_stack(signal.SIGINT) in (True, False)
        True
    """
    import ctypes
    import platform
    import sys

    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return False

    class _Action(ctypes.Structure):  # glibc's struct sigaction on 64-bit Linux
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                    ("restorer", ctypes.c_void_p)]

    on_stack = 0x08000000  # SA_ONSTACK
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for signum in signums:
            action = _Action()
            if libc.sigaction(int(signum), None, ctypes.byref(action)) != 0:
                return False
            if action.flags & on_stack:
                action.flags &= ~on_stack
                if libc.sigaction(int(signum), ctypes.byref(action), None) != 0:
                    return False
    except (OSError, AttributeError):
        return False
    return True
