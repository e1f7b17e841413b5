"""One exception tree for slimforge.

User errors (bad config, unsupported model, bad data, missing dependency) propagate with a message that names the
problem and the fix. ``TechniqueFailed`` is recoverable inside a search: the planner may skip the candidate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class SlimforgeError(Exception):
    """Root of every error slimforge raises on purpose."""


class ConfigError(SlimforgeError, ValueError):
    """A technique, recipe or CLI setting is invalid."""


class UnsupportedModelError(SlimforgeError):
    """The model (or its format) is not supported by the requested step."""


class ModelLoadError(SlimforgeError):
    """A model file or folder could not be read: missing, truncated, corrupt or of an unknown kind."""


class DataError(SlimforgeError):
    """Calibration or evaluation data is missing, empty or does not match the model."""


class InputError(SlimforgeError, ValueError):
    """Inputs given to a model do not match its IO spec (names, shapes, dtypes)."""


class MissingDependencyError(SlimforgeError, ImportError):
    """An optional backend library is not installed."""

    def __init__(self, package: str, *, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"this step needs the optional package '{package}', which is not installed; "
            f"install it with: pip install 'slimforge[{extra}]'"
        )


class OutputError(SlimforgeError):
    """An output path cannot be used: it holds files slimforge did not write, equals an input, or cannot be
    written (permissions, a full disk, a file where a folder should be)."""


class TechniqueFailed(SlimforgeError):
    """A technique could not be applied to this model; a search may skip it and go on."""


class NothingQuantized(TechniqueFailed):
    """A quantization method found nothing it applies to in this model: its result would be the input unchanged.
    The message is one line: ``nothing was quantized: <method> applies to <op kinds>; this model has none``."""


class VerificationError(TechniqueFailed):
    """A transformed model's outputs drifted past the tolerance from its reference."""

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


# the extra of pyproject.toml that installs each optional package or runtime
_EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "onnxslim": "onnx", "openvino": "openvino",
           "nncf": "openvino", "transformers": "hf", "sentence_transformers": "hf", "tokenizers": "hf",
           "torchao": "torch", "torch_pruning": "torch", "torch_compile": "torch", "fastapi": "serve",
           "uvicorn": "serve", "prometheus_client": "serve"}


def extra_for(name: str) -> str:
    """The pip extra that installs ``name`` (a package or a runtime), ``all`` when none is known.

    Example:
        >>> extra_for("onnxruntime"), extra_for("openvino")
        ('onnx', 'openvino')
    """
    return _EXTRAS.get(name.replace("-", "_"), "all")


def install_hint(name: str) -> str:
    """``pip install 'slimforge[EXTRA]'`` for a package or runtime."""
    return f"pip install 'slimforge[{extra_for(name)}]'"


def require(module: str, *, extra: str, package: str | None = None) -> Any:
    """Import an optional backend lazily, raising ``MissingDependencyError`` with the pip command when absent.

    Example:
        >>> np = require("numpy", extra="onnx")
    """
    import importlib

    try:
        with _termination_deferred():
            return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(package or module.split(".")[0], extra=extra) from exc


TERMINATION = {"requested": False}  # set by the CLI's SIGTERM handler before it raises SystemExit(143)


@contextlib.contextmanager
def _termination_deferred() -> Iterator[None]:
    """Hold SIGTERM and Ctrl-C until the block ends (main thread, POSIX). A native module's initialisation can
    swallow the exception a signal handler raises inside it (``import openvino`` does: pybind11 clears it), and the
    run then went on to the end and exited 0; held, the signal lands after the import, in Python code. Another
    thread can still take the signal (the mask is per thread) and the handler then runs inside the import: a
    termination requested meanwhile is raised again when the block ends."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if TERMINATION["requested"]:
            raise SystemExit(143)
