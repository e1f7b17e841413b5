"""Peak memory of loading and running a model, measured in a fresh process so earlier work cannot hide it.

The figure is the peak resident set size of a child process minus its size after importing the runtime, i.e. what
loading the model and running it at the given batch adds. Models that exist only in memory are pickled for the child;
when that is impossible the measurement falls back to sampling this process (and says so).
"""

from __future__ import annotations

import gc
import json
import logging
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from slimforge.core.artifact import Artifact, Format
from slimforge.core.scratch import child_env, die_with_parent, scratch_dir

log = logging.getLogger(__name__)

_RUNTIME_IMPORTS = {"torch": ("torch",), "onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}


def peak_memory_mb(art: Artifact, runtime: str, feeds: Mapping[str, np.ndarray], *, threads: int | None = None,
                   precision: str | None = None, timeout_s: float = 600.0) -> tuple[float, str]:
    """Returns ``(megabytes, method)`` where method is ``subprocess`` or ``in-process``."""
    with tempfile.TemporaryDirectory(prefix="mem-", dir=scratch_dir()) as tmp:
        source = _source_for(art, Path(tmp))
        if source is None:
            return _in_process(art, runtime, feeds, threads=threads, precision=precision), "in-process"
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **{k: np.asarray(v) for k, v in feeds.items()})
        spec = {"source": str(source), "pickled": source.suffix == ".pkl", "runtime": runtime, "threads": threads,
                "precision": precision, "feeds": str(feeds_path), "meta": dict(art.meta),
                "input_names": art.io.input_names}
        try:
            proc = subprocess.run([sys.executable, "-m", "slimforge.bench.memory", json.dumps(spec, default=str)],
                                  capture_output=True, text=True, timeout=timeout_s, env=child_env(),
                                  preexec_fn=die_with_parent)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
            return float(json.loads(line)["peak_mb"]), "subprocess"
        except (subprocess.SubprocessError, IndexError, ValueError, KeyError) as exc:
            log.warning("memory measurement in a subprocess failed (%s); measuring in-process", exc)
            return _in_process(art, runtime, feeds, threads=threads, precision=precision), "in-process"


def _source_for(art: Artifact, tmp: Path) -> Path | None:
    if art.format in (Format.ONNX, Format.OPENVINO, Format.TORCHSCRIPT, Format.TORCH_EXPORT) and art.path:
        return art.path
    if art.format is Format.TORCH and art.path is not None and art.path.is_dir():
        return art.path
    if art.format is Format.TORCH and art.handle is not None:
        import torch

        target = tmp / "module.pkl"
        try:
            torch.save(art.handle, target)
        except Exception:  # lambdas, local classes: cannot be pickled
            return None
        return target
    return None


class PeakRss:
    """Samples this process's resident memory in a background thread; ``peak_mb`` is the rise over the start."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.start_rss = 0
        self.peak_rss = 0

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.start_rss = self.peak_rss = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return (self.peak_rss - self.start_rss) / 1e6


def _in_process(art: Artifact, runtime: str, feeds: Mapping[str, np.ndarray], *, threads: int | None,
                precision: str | None) -> float:
    from slimforge.runtimes import open_session

    with PeakRss() as mem:
        sess = open_session(art, runtime, threads=threads, precision=precision)
        for _ in range(3):
            sess.run(feeds)
        sess.close()
    return round(max(mem.peak_mb, 0.0), 2)


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak() -> None:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0), so imports do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(spec: dict) -> None:  # pragma: no cover - runs in the child process
    import importlib

    for name in _RUNTIME_IMPORTS.get(spec["runtime"], ("torch",)):
        importlib.import_module(name)
    from slimforge.io.models import load  # the loaders and the runtime's module: imports do not count
    from slimforge.runtimes import get_runtime, open_session

    get_runtime(spec["runtime"])
    feeds = dict(np.load(spec["feeds"]))
    _reset_peak()
    rss0 = _rss_bytes()
    if spec["pickled"]:
        import torch

        module = torch.load(spec["source"], weights_only=False)
        art = load(module, example_inputs={k: feeds[k] for k in spec["input_names"]})
    else:
        kw = {"example_inputs": feeds} if Path(spec["source"]).suffix in (".pt", ".pth", ".ts", ".jit") else {}
        art = load(spec["source"], **kw)
    sess = open_session(art, spec["runtime"], threads=spec["threads"], precision=spec["precision"])
    for _ in range(3):
        sess.run(feeds)
    peak = _peak_bytes()
    print(json.dumps({"peak_mb": round(max(peak - rss0, 0) / 1e6, 2)}))


if __name__ == "__main__":  # pragma: no cover
    _child(json.loads(sys.argv[1]))
