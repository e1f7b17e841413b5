"""Third-party chatter kept out of the user's terminal, and in slimforge's log instead.

Inside ``quiet_libraries()`` (every public API call and every step is run inside it):

- Python warnings (torch.export, TracerWarning, FutureWarning, ...) are logged, not printed;
- the loggers of the libraries slimforge drives (ONNX Runtime, torch, torchao, NNCF, OpenVINO, transformers, ...)
  and direct calls of ``logging.warning`` on the root logger (ONNX Runtime's quantization tools do that, which
  would also configure the root logger of the host program) are sent to slimforge's log instead of their handlers;
- ONNX Runtime's C++ log goes through its logging callback into the same log (errors only unless debugging).

They land under the ``slimforge.thirdparty.<library>`` loggers at DEBUG level (the text starts with the library's
own level and logger name), so ``--debug``, ``SLIMFORGE_LOG=debug`` or a host program that logs ``slimforge`` at
DEBUG shows them. Everything is put back as it was when the outermost block ends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import threading
import warnings
from typing import Any, Iterator

LIBRARIES = ("onnxruntime", "onnx", "onnxscript", "onnx_ir", "onnxslim", "torch", "torchao", "torch_pruning",
             "nncf", "openvino", "transformers", "sentence_transformers", "huggingface_hub", "optimum", "PIL",
             "matplotlib", "py.warnings")
log = logging.getLogger("slimforge.thirdparty")

_state: dict[str, Any] = {"depth": 0, "saved": None}
_lock = threading.RLock()


def debugging() -> bool:
    """Whether third-party output should be shown: ``SLIMFORGE_LOG=debug`` or the slimforge logger at DEBUG."""
    return os.environ.get("SLIMFORGE_LOG", "").lower() == "debug" or \
        logging.getLogger("slimforge").getEffectiveLevel() <= logging.DEBUG


def _relog(name: str, level: str, message: str) -> None:
    top = name.split(".")[0] if name not in ("root", "py.warnings") else name.replace("py.", "")
    logging.getLogger(f"slimforge.thirdparty.{top}").debug("%s %s: %s", level, name, message)


class _Redirect(logging.Handler):
    """Sends a library's records to slimforge's log (DEBUG), whatever their level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _relog(record.name, record.levelname, record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed record must not break the library call
            pass


class _RootFilter(logging.Filter):
    """Records logged on the root logger itself (``logging.warning(...)`` in a library) go to slimforge's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root":
            return True
        _relog("root", record.levelname, record.getMessage())
        return False


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    module = os.path.basename(os.path.dirname(filename)) if filename else "warnings"
    _relog(f"warnings.{module}", category.__name__, f"{message} ({filename}:{lineno})")


def _ort_callback(severity: int, category: str, logid: str, location: str, message: str) -> None:
    level = {0: "VERBOSE", 1: "INFO", 2: "WARNING", 3: "ERROR", 4: "FATAL"}.get(severity, str(severity))
    _relog(f"onnxruntime.{category or 'C++'}", level, message)


def _ort(install: bool) -> None:
    """ONNX Runtime's C++ log: into slimforge's log while quiet (warnings only when debugging), back after."""
    if importlib.util.find_spec("onnxruntime") is None:
        return
    ort = sys.modules.get("onnxruntime")
    if ort is None:
        if not install:
            return
        import onnxruntime as ort  # (a tenth of a second, once: its default logger must be set before use)
    severity = 2 if debugging() else 3
    with contextlib.suppress(Exception):
        if hasattr(ort, "set_default_logger_callback"):
            ort.set_default_logger_callback(_ort_callback if install else None, severity)
        ort.set_default_logger_severity(severity if install else 2)


def _prints(handler: logging.Handler) -> bool:
    """Whether a handler writes to the terminal (not to a file, not a tracing sink such as ``torch.__trace``'s)."""
    if type(handler).__name__.startswith("Rich"):
        return True
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) and \
        getattr(handler, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)


def _library_loggers() -> list[logging.Logger]:
    """The libraries' top loggers, and those below them with handlers of their own that print. (A logger without
    such handlers is left alone: torch, for one, emits its structured trace to ``torch.__trace``'s own sink.)"""
    found = [logging.getLogger(name) for name in LIBRARIES]
    for name, lg in list(logging.root.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger) and name.split(".")[0] in LIBRARIES and name not in LIBRARIES \
                and any(_prints(h) for h in lg.handlers):
            found.append(lg)
    return found


def _install() -> dict[str, Any]:
    root = logging.getLogger()
    saved: dict[str, Any] = {"loggers": [], "root_null": None, "filters": warnings.filters[:],
                             "showwarning": warnings.showwarning}
    redirect = saved["redirect"] = _Redirect()
    for lg in _library_loggers():
        saved["loggers"].append((lg, lg.handlers[:], lg.propagate))
        lg.handlers = [redirect]
        lg.propagate = False
    root.addFilter(_ROOT_FILTER)
    if not root.handlers:  # logging.warning() would otherwise configure the host's root logger (basicConfig)
        saved["root_null"] = logging.NullHandler()
        root.addHandler(saved["root_null"])
    warnings.simplefilter("default")
    warnings.showwarning = _show_warning
    _ort(True)
    return saved


def _restore(saved: dict[str, Any]) -> None:
    root = logging.getLogger()
    for lg, handlers, propagate in saved["loggers"]:
        if lg.handlers == [saved["redirect"]] and not lg.propagate:  # (a library that set itself up meanwhile,
            lg.handlers = handlers                                  # as torch does when first imported, keeps it)
            lg.propagate = propagate
    root.removeFilter(_ROOT_FILTER)
    if saved["root_null"] is not None:
        root.removeHandler(saved["root_null"])
    warnings.filters[:] = saved["filters"]
    getattr(warnings, "_filters_mutated", lambda: None)()  # (as catch_warnings does on exit)
    warnings.showwarning = saved["showwarning"]
    _ort(False)


_ROOT_FILTER = _RootFilter()


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Run a block with third-party warnings and logs sent to slimforge's log (see the module docstring);
    re-entrant, usable as a decorator.

    Example:
        >>> import warnings
        >>> with quiet_libraries():
        ...     warnings.warn("a library's warning")  # logged under slimforge.thirdparty, not printed
    """
    with _lock:
        _state["depth"] += 1
        if _state["depth"] == 1:
            _env_handler()
            _state["saved"] = _install()
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and _state["saved"] is not None:
                _restore(_state["saved"])
                _state["saved"] = None


def _env_handler() -> None:
    """``SLIMFORGE_LOG=debug|info|warning``: slimforge's log on stderr at that level, for API users who configured
    no logging (the CLI configures its own)."""
    level = os.environ.get("SLIMFORGE_LOG", "").upper()
    lg = logging.getLogger("slimforge")
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR") or any(
            not isinstance(h, logging.NullHandler) for h in lg.handlers) or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    lg.addHandler(handler)
    lg.setLevel(level)


@contextlib.contextmanager
def native_stderr_to_log(library: str) -> Iterator[None]:
    r"""Run a block whose native code writes to file descriptor 2 (C++ logging that no Python setting reaches, e.g.
    kineto's ``USDT: ... profiler_start`` lines at every ``torch.profiler`` start and stop) with that output sent to
    ``slimforge.thirdparty.<library>`` at DEBUG instead of the terminal. Keep the block short: every thread's writes
    to descriptor 2 go to the log while it runs.

    Example:
        >>> with native_stderr_to_log("example"):
        ...     _ = os.write(2, b"native chatter\n")  # logged, not printed
    """
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace").strip()
            if text:
                logging.getLogger(f"slimforge.thirdparty.{library}").debug("%s", text)
