"""Profiling a model on a runtime: the dispatcher over ``bench.profile_torch`` (torch.profiler) and
``bench.profile_onnx`` (ONNX Runtime, OpenVINO), returning a ``bench.profile.ProfileResult``."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from slimforge.bench.profile import PROFILE_SPEC, ProfileResult, finish
from slimforge.bench.timing import BenchSpec
from slimforge.core.artifact import Artifact, Format
from slimforge.errors import ConfigError


def profile_model(art: Artifact, runtime: str | None = None, *, device: str = "cpu", batch: int = 1,
                  feeds: Mapping[str, np.ndarray] | None = None, runs: int = 20, threads: int | None = None,
                  spec: BenchSpec = PROFILE_SPEC) -> ProfileResult:
    """Profile ``art`` on ``runtime`` (default: its own) at ``batch`` on ``feeds`` (default: its example inputs
    repeated to the batch size). ``runs`` profiled runs follow warm-up runs; the end-to-end latency is timed apart."""
    from slimforge.bench.peaks import device_peaks
    from slimforge.io.inputs import feeds_for
    from slimforge.runtimes import default_runtime

    if batch < 1 or runs < 1:
        raise ConfigError(f"batch and runs must be >= 1, got batch={batch}, runs={runs}")
    runtime = runtime or default_runtime(art)
    feeds = dict(feeds) if feeds is not None else feeds_for(art, None)(batch)
    if runtime == "torch_compile":
        raise ConfigError("profile a PyTorch model on runtime torch: a compiled model runs as one graph whose "
                          "modules the profiler cannot see")
    if runtime == "torch":
        if art.format is not Format.TORCH:
            raise ConfigError(f"runtime {runtime} profiles in-memory PyTorch models; {art.name} is "
                              f"{art.format.value}: choose onnxruntime or openvino")
        from slimforge.bench.profile_torch import profile_torch

        layers, flops, e2e, notes = profile_torch(art, feeds, device=device, runs=runs, threads=threads, spec=spec)
    elif runtime in ("onnxruntime", "openvino"):
        from slimforge.bench.profile_onnx import profile_graph

        layers, flops, e2e, notes = profile_graph(art, runtime, feeds, device=device, runs=runs, threads=threads,
                                                  spec=spec)
    else:
        raise ConfigError(f"runtime must be torch, onnxruntime or openvino to profile, got {runtime!r}")
    return ProfileResult(model=art.name, runtime=runtime, device=device, batch=int(next(iter(feeds.values())).shape[0])
                         if feeds else batch, layers=finish(layers), end_to_end_ms=e2e, flops=flops,
                         peak=device_peaks(device, precision=_precision(art)), notes=tuple(notes))


def _precision(art: Artifact) -> str:
    p = str(art.meta.get("precision") or "fp32")
    return "int8" if p.startswith("int8") else p
