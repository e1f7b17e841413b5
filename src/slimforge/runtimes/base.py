"""The Runtime / Session protocol and the runtime registry."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from slimforge.core.artifact import Artifact, Format
from slimforge.errors import ConfigError, InputError, UnsupportedModelError

_BUILTIN = ("slimforge.runtimes.torch_eager", "slimforge.runtimes.torch_compile", "slimforge.runtimes.onnxruntime",
            "slimforge.runtimes.openvino")


@runtime_checkable
class Session(Protocol):
    """An opened model. Inputs and outputs are numpy arrays, in the artifact's IO order."""

    input_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class Runtime(Protocol):
    """A backend able to open artifacts of some formats on some devices."""

    name: str
    formats: tuple[Format, ...]

    def available(self) -> bool: ...

    def devices(self) -> tuple[str, ...]: ...

    def open(self, art: Artifact, *, device: str = "cpu", threads: int | None = None,
             precision: str | None = None) -> Session: ...


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(rt: Runtime) -> Runtime:
    _RUNTIMES[rt.name] = rt
    return rt


def _ensure_loaded() -> None:
    for mod in _BUILTIN:
        importlib.import_module(mod)


def get_runtime(name: str) -> Runtime:
    """Look a runtime up by name (``torch``, ``onnxruntime``, ``openvino``).

    Example:
        >>> get_runtime("torch").name
        'torch'
    """
    _ensure_loaded()
    aliases = {"ort": "onnxruntime", "ov": "openvino", "eager": "torch", "pytorch": "torch", "compile": "torch_compile"}
    rt = _RUNTIMES.get(aliases.get(name, name))
    if rt is None:
        raise ConfigError(f"unknown runtime {name!r}; known: {', '.join(sorted(_RUNTIMES))}")
    return rt


def available_runtimes() -> list[str]:
    _ensure_loaded()
    return [n for n, rt in _RUNTIMES.items() if rt.available()]


def default_runtime(art: Artifact) -> str:
    """The natural runtime for an artifact's format."""
    _ensure_loaded()
    for name in ("torch", "onnxruntime", "openvino"):
        rt = _RUNTIMES.get(name)
        if rt is not None and art.format in rt.formats and rt.available():
            return name
    raise UnsupportedModelError(f"no installed runtime can open a {art.format.value} model")


def open_session(art: Artifact, runtime: str | None = None, *, device: str = "cpu", threads: int | None = None,
                 precision: str | None = None, profiling: bool = False) -> Session:
    """Open ``art`` on a runtime (default: the natural one for its format).

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> sess = open_session(art)
        >>> sess.run(art.examples)[0].shape
        (1, 2)
    """
    rt = get_runtime(runtime or default_runtime(art))
    if threads is None:
        threads = tuned_threads(art, rt.name, device)
    if art.format not in rt.formats:
        raise UnsupportedModelError(f"runtime {rt.name} cannot open a {art.format.value} model; it opens "
                                    f"{', '.join(f.value for f in rt.formats)} (export it first)")
    if not rt.available():
        from slimforge.errors import MissingDependencyError, extra_for

        raise MissingDependencyError(rt.name, extra=extra_for(rt.name))
    if device not in rt.devices():
        raise ConfigError(f"runtime {rt.name} has no device {device!r} here; available: {', '.join(rt.devices())}")
    if profiling:  # the runtime's own per-node profiler on (ONNX Runtime, OpenVINO): see bench.profile
        if rt.name not in ("onnxruntime", "openvino"):
            raise ConfigError(f"runtime {rt.name} has no per-node profiler; torch models are profiled with "
                              "torch.profiler (slimforge.profile)")
        return rt.open(art, device=device, threads=threads, precision=precision, profiling=True)  # type: ignore
    return rt.open(art, device=device, threads=threads, precision=precision)


def tuned_threads(art: Artifact, runtime: str | None = None, device: str = "cpu") -> int | None:
    """The intra-op thread count measured fastest for ``art`` (``bench.tune_threads``; ``meta["threads"]``), or None
    (the runtime's default: all cores). Used only on the CPU, for the runtime it was measured on (any, when
    ``runtime`` is None) and on a machine with as many physical cores as the one that measured it.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> tuned_threads(art) is None
        True
    """
    n, how = art.meta.get("threads"), art.meta.get("thread_tuning") or {}
    if not isinstance(n, int) or n < 1 or device != "cpu" or not isinstance(how, dict):
        return None
    if runtime is not None and how.get("runtime") != runtime:
        return None
    cores = physical_cores()
    return n if how.get("default") == cores and n <= cores else None


def physical_cores() -> int:
    """One per physical core: the thread count ONNX Runtime and OpenVINO use by default."""
    import psutil

    return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)


@contextlib.contextmanager
def ort_spin_off() -> Iterator[None]:
    """Sessions opened in the block have ONNX Runtime's workers sleep between runs instead of spin-waiting: where
    several sessions take turns (timing side by side) or share the cores with a server, a spinning pool slows the
    others down."""
    old = os.environ.get("SLIMFORGE_ORT_SPIN")
    os.environ["SLIMFORGE_ORT_SPIN"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SLIMFORGE_ORT_SPIN", None)
        else:
            os.environ["SLIMFORGE_ORT_SPIN"] = old


def check_feeds(art: Artifact, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Order feeds by the artifact's inputs, checking names, ranks, fixed dims and dtype kinds."""
    missing = [t.name for t in art.io.inputs if t.name not in feeds]
    if missing:
        raise InputError(f"{art.name}: missing input(s) {missing}; the model takes {art.io.input_names}")
    out: list[np.ndarray] = []
    for spec in art.io.inputs:
        arr = np.asarray(feeds[spec.name])
        if spec.shape and arr.ndim != len(spec.shape):
            raise InputError(f"{art.name}: input '{spec.name}' must have {len(spec.shape)} dimensions "
                             f"{_fmt_shape(spec.shape)}, got shape {tuple(arr.shape)}")
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise InputError(f"{art.name}: input '{spec.name}' has size {got} on axis {axis}, the model needs "
                                 f"{want} {_fmt_shape(spec.shape)}")
        want_kind = np.dtype(spec.dtype).kind
        if arr.dtype.kind != want_kind and not (want_kind in "iu" and arr.dtype.kind in "iu"):
            raise InputError(f"{art.name}: input '{spec.name}' must be {spec.dtype}, got {arr.dtype}")
        out.append(arr.astype(spec.dtype, copy=False))
    seen: dict[str, tuple[str, int, int]] = {}  # a named dynamic dimension must have one size across inputs
    for spec, arr in zip(art.io.inputs, out):
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim.strip() not in ("", "?", "-1") and axis < arr.ndim:  # '?' is anonymous
                first = seen.setdefault(dim, (spec.name, axis, arr.shape[axis]))
                if first[2] != arr.shape[axis]:
                    raise InputError(f"{art.name}: dimension '{dim}' is {first[2]} in input '{first[0]}' but "
                                     f"{arr.shape[axis]} in input '{spec.name}'; inputs must agree on it")
    return out


def _fmt_shape(shape: Sequence[object]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
