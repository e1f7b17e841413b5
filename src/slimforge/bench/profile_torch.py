"""Per-module profile of a PyTorch model: ``torch.profiler`` with one ``record_function`` range per module (its CPU
time, and on a GPU the CUDA kernel time launched inside it), FLOPs per module from ``FlopCounterMode``, parameters
and activation bytes from forward hooks on one separate run.

A module's self time is its range's time minus its sub-modules' ranges: work a module does itself (the matmuls of a
hand-written attention, say) stays with it. The model's own forward is ``(model)``.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from slimforge.bench.compare import compute_call
from slimforge.bench.profile import LayerProfile
from slimforge.bench.timing import BenchSpec
from slimforge.core.artifact import Artifact

_PREFIX = "sf::"
ROOT = "(model)"


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    return sum(_nbytes(v) for v in x.to_tuple()) if hasattr(x, "to_tuple") else 0


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return {(name or ROOT): m for name, m in model.named_modules()}


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                    **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> Any:
    """``FlopCounterMode`` that also counts the CPU flash-attention kernel (``F.scaled_dot_product_attention`` on a
    CPU), which its registry lacks: without it a transformer's attention products count as zero on CPUs."""
    from torch.utils.flop_counter import FlopCounterMode

    extra = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        extra[op] = _cpu_sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=extra)


def _static_costs(model: nn.Module, args: list[torch.Tensor]) -> tuple[dict[str, dict[str, int]], float]:
    """Per module: self FLOPs (FlopCounterMode's inclusive counts minus the children's), parameters, input and
    output bytes, from one run; and FlopCounterMode's total."""
    mods = _modules(model)
    io: dict[str, dict[str, int]] = {n: {"in": 0, "out": 0} for n in mods}
    handles = []
    for name, m in mods.items():
        def hook(_m: nn.Module, inp: Any, out: Any, _n: str = name) -> None:
            io[_n]["in"] += _nbytes(inp)
            io[_n]["out"] += _nbytes(out)
        handles.append(m.register_forward_hook(hook))
    try:
        with flop_counter() as fc, torch.inference_mode():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    root_cls = type(model).__name__
    inclusive: dict[str, float] = {}
    for key, ops in fc.get_flop_counts().items():
        if key == "Global":
            continue
        name = ROOT if key == root_cls else key[len(root_cls) + 1:] if key.startswith(root_cls + ".") else key
        inclusive[name] = float(sum(ops.values()))
    costs = {}
    for name, m in mods.items():
        children = [f"{'' if name == ROOT else name + '.'}{c}" for c, _ in m.named_children()]
        own = inclusive.get(name, 0.0) - sum(inclusive.get(c, 0.0) for c in children)
        params = sum(p.numel() for p in m.parameters(recurse=False)) + sum(
            b.numel() for b in m.buffers(recurse=False))
        pbytes = sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
        costs[name] = {"flops": max(own, 0.0), "params": params, "out": io[name]["out"],
                       "moved": pbytes + io[name]["in"] + io[name]["out"]}
    return costs, float(fc.get_total_flops())


def _self_times(events: Any, cuda: bool) -> dict[str, tuple[float, int]]:
    """Self time (ms) and calls per module of one profiled run, from the profiler's event tree."""
    out: dict[str, list[float]] = {}

    def total(e: Any) -> float:
        return float(e.device_time_total if cuda else e.cpu_time_total)

    def nearest_modules(e: Any) -> list[Any]:
        found = []
        for c in e.cpu_children:
            found.extend([c] if c.name.startswith(_PREFIX) else nearest_modules(c))
        return found

    from torch.autograd import DeviceType

    for e in events:
        # on CUDA each range is also mirrored as a GPU-side annotation spanning all of its kernels, children's too
        if not e.name.startswith(_PREFIX) or getattr(e, "device_type", DeviceType.CPU) != DeviceType.CPU:
            continue
        own = total(e) - sum(total(c) for c in nearest_modules(e))
        acc = out.setdefault(e.name[len(_PREFIX):], [0.0, 0])
        acc[0] += max(own, 0.0)
        acc[1] += 1
    return {k: (v[0] / 1000.0, int(v[1])) for k, v in out.items()}


def profile_torch(art: Artifact, feeds: Mapping[str, np.ndarray], *, device: str, runs: int, threads: int | None,
                  spec: BenchSpec) -> tuple[list[LayerProfile], float, float, list[str]]:
    from torch.profiler import ProfilerActivity, profile, record_function

    from slimforge.core.logs import native_stderr_to_log

    from slimforge.runtimes import open_session

    sess = open_session(art, "torch", device=device, threads=threads)
    model = sess.module  # the session's own copy where it moved or cast the model: the user's stays as it is
    args = sess.prepare(feeds)  # type: ignore[attr-defined]
    costs, flops = _static_costs(model, args)
    stack: list[Any] = []
    handles: list[Any] = []
    active = [False]  # the module ranges are recorded only in the profiled runs

    def pre(_m: nn.Module, _a: Any, _n: str) -> None:
        if active[0]:
            rf = record_function(_PREFIX + _n)
            rf.__enter__()
            stack.append(rf)

    def post(_m: nn.Module, _a: Any, _o: Any) -> None:
        if active[0]:
            stack.pop().__exit__(None, None, None)

    for name, m in _modules(model).items():
        handles += [m.register_forward_pre_hook(lambda mod, a, _n=name: pre(mod, a, _n)),
                    m.register_forward_hook(post)]
    cuda = device == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    plain = compute_call(sess, feeds)
    per_run: list[dict[str, tuple[float, int]]] = []
    e2e: list[float] = []
    try:
        for _ in range(spec.warmup):
            plain()
        for _ in range(runs):  # plain and profiled runs interleaved: both see the same machine
            sess.sync()
            t = time.perf_counter()
            plain()
            sess.sync()
            e2e.append((time.perf_counter() - t) * 1000.0)
            active[0] = True
            prof = profile(activities=acts)
            with native_stderr_to_log("torch.profiler"):  # kineto prints two lines at every start and stop
                prof.start()
            try:
                sess.run_tensors(args)  # type: ignore[attr-defined]
                sess.sync()
            finally:
                with native_stderr_to_log("torch.profiler"):
                    prof.stop()
            active[0] = False
            per_run.append(_self_times(prof.events(), cuda))
    finally:
        for h in handles:
            h.remove()
        stack.clear()
    names = {n for r in per_run for n in r}
    times = {n: (float(np.median([r.get(n, (0.0, 0))[0] for r in per_run])),
                 int(np.median([r.get(n, (0.0, 0))[1] for r in per_run]))) for n in names}
    mods = _modules(model)
    layers = []
    for name, (ms, calls) in times.items():
        c = costs.get(name, {})
        layers.append(LayerProfile(name=name, kind=type(mods[name]).__name__ if name in mods else "?", self_ms=ms,
                                   calls=calls, flops=c.get("flops") or None, params=c.get("params"),
                                   activation_bytes=c.get("out"), bytes_moved=c.get("moved")))
    notes = [f"torch.profiler, {runs} profiled runs interleaved with {runs} plain timed runs; per layer the median "
             f"over the runs of its {'CUDA kernel' if cuda else 'CPU'} time in its module range minus its "
             "sub-modules'; FLOPs from FlopCounterMode"]
    sess.close()
    return layers, flops, float(np.median(e2e)), notes
