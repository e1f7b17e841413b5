"""GPU engine files: a model placed for the GPU (precision, memory format) compiled ahead of time by AOTInductor
into a ``.pt2`` package, with a dynamic batch (and dynamic image sizes where the model has them) between declared
bounds, like an engine's optimisation profile. Loading one needs neither the model's Python code nor a compile."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import tempfile
import threading
import weakref
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimforge.core.artifact import Artifact, Format
from slimforge.errors import ModelLoadError, TechniqueFailed
from slimforge.torch_utils import Placed, fp32_precision

log = logging.getLogger(__name__)
MAX_BATCH = 256  # the profile's upper bound on the batch dimension
MAX_SIDE = 2048  # and on dynamic image heights and widths


def is_engine(path: Path) -> bool:
    """Whether ``path`` is an AOTInductor package (a zip holding compiled code), not a torch.export program."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(_model_of(n) for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _dynamic_shapes(art: Artifact, lo: int = 1, hi: int = MAX_BATCH) -> tuple[Any, ...]:
    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes = []
    for spec in art.io.inputs:
        axes = {}
        for axis, d in enumerate(spec.shape):
            if isinstance(d, str) or d is None:
                if axis == 0 and lo == hi:
                    continue  # a profile of one batch size: that size, fixed
                name = str(d or f"{spec.name}_{axis}").replace("-", "_").replace("+", "_").replace(" ", "_")
                axes[axis] = dims.setdefault(name, Dim(name if name.isidentifier() else f"d{len(dims)}", min=lo,
                                                       max=hi) if axis == 0 else Dim.AUTO)
        shapes.append(axes or None)
    return tuple(shapes)


@dataclass(frozen=True)
class Profile:
    """One batch range of an engine and the placed model (a ``GpuModule`` artifact) compiled for it."""

    lo: int
    hi: int
    art: Artifact

    @property
    def model(self) -> str:
        return f"batch_{self.lo}_{self.hi}"

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "lo": self.lo, "hi": self.hi, "gpu": self.art.meta.get("gpu"),
                "precision": self.art.meta.get("precision"), "placed_as": self.art.name}


def write_engine(art: Artifact, tmp: Path, profiles: Sequence[Profile] = ()) -> None:
    """Compile the placed model ``art`` (a ``GpuModule``) into an AOTInductor package at ``tmp``; with
    ``profiles``, one compiled model per batch range in the one package (named ``Profile.model``), each of its own
    placed model: an engine's optimisation profiles, so batch 1 and batch 256 may each run their fastest variant."""
    if not profiles:
        _compile(art, tmp, 1, MAX_BATCH)
        return
    with tempfile.TemporaryDirectory(prefix="slimforge-profiles-") as work:
        singles = {}
        for p in profiles:
            singles[p.model] = Path(work) / f"{p.model}.pt2"
            _compile(p.art, singles[p.model], p.lo, p.hi)
        try:
            merge_packages(singles, tmp)
        except (OSError, RuntimeError, ValueError, zipfile.BadZipFile) as exc:
            raise TechniqueFailed(f"the engine's batch ranges could not be packaged together: {exc}") from exc


def merge_packages(singles: dict[str, Path], dest: Path) -> None:
    """One AOTInductor package at ``dest`` holding the compiled model of each single-model package in ``singles``
    under its key (torch's multi-model package format: ``load_package(dest, key)`` opens one)."""
    from torch._inductor.package import package_aoti

    with tempfile.TemporaryDirectory(prefix="slimforge-merge-") as work:
        files: dict[str, list[str]] = {}
        for name, single in singles.items():
            folder = Path(work) / name
            folder.mkdir()
            with zipfile.ZipFile(single) as z:
                if any("/weights/" in n or "/constants/" in n for n in z.namelist()):
                    raise TechniqueFailed(f"{single.name} keeps weights outside its compiled library; a package of "
                                          "batch ranges is merged from self-contained ones only")
                for n in z.namelist():
                    if _model_of(n) == "model" and not n.endswith("/"):
                        (folder / Path(n).name).write_bytes(z.read(n))
            files[name] = sorted(str(f) for f in folder.iterdir())
        package_aoti(str(dest), files)


def _compile(art: Artifact, tmp: Path, lo: int, hi: int) -> None:
    placed = art.handle
    inner = getattr(placed, "inner", None)
    if inner is None:
        raise TechniqueFailed(f"{art.name} is not a model placed for the GPU; only those are written as engines")
    module = Placed(inner, getattr(placed, "dtype", None), bool(getattr(placed, "channels_last", False))).eval()
    n = hi if lo == hi else min(max(lo, 2), hi)  # not 1 in a range: a batch of 1 would be specialised away
    examples = []
    for spec, a in zip(art.io.inputs, art.examples.values()):
        t = torch.from_numpy(np.ascontiguousarray(a)).to("cuda")
        batched = bool(spec.shape) and (spec.shape[0] is None or isinstance(spec.shape[0], str))
        examples.append(t[:1].expand(n, *t.shape[1:]).contiguous() if batched and t.shape[0] != n else t)
    try:
        with torch.no_grad(), fp32_precision(bool(getattr(placed, "tf32", False))):
            # Placed.forward(*xs): one varargs parameter, so its dynamic shapes are one tuple of per-input specs
            program = torch.export.export(module, tuple(examples), dynamic_shapes=(_dynamic_shapes(art, lo, hi),))
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
    except Exception as exc:
        raise TechniqueFailed(f"{art.name} cannot be compiled into an engine (torch.export + AOTInductor): "
                              f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
                              ) from exc


@dataclass
class _Loaded:
    """A profile of a loaded engine: its batch range, its runner, and how it runs (TF32, CUDA graphs)."""

    lo: int
    hi: int
    runner: Any
    tf32: bool
    graphs: bool


class EngineModule(nn.Module):
    """A loaded engine: inputs moved to the GPU, each batch run by the profile whose range holds its size, with the
    AOTInductor runner (TF32 where it was built with it); where the profile was built with CUDA graphs, each input
    shape is captured once into a graph and replayed (small batches are launch-bound)."""

    def __init__(self, profiles: list[_Loaded], batch_input: int | None = None) -> None:
        super().__init__()
        self.profiles = sorted(profiles, key=lambda p: p.lo)
        self.batch_input = batch_input  # which input carries the batch dimension first (routing to a profile)
        self.device = torch.device("cuda")
        self._captured: dict[tuple, tuple[Any, list[torch.Tensor], list[torch.Tensor]]] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> EngineModule:
        return self  # compiled code and captured graphs, never edited: sessions share them (and the lock)

    def profile_for(self, batch: int) -> _Loaded:
        for p in self.profiles:
            if p.lo <= batch <= p.hi:
                return p
        raise ValueError(f"batch {batch} is outside the engine's batch range {self.profiles[0].lo}-"
                         f"{self.profiles[-1].hi}; split the request into batches of at most {self.profiles[-1].hi}")

    def _batch(self, args: list[torch.Tensor]) -> int:
        """The batch size of a call: the first dimension of the first input whose first dimension is the batch."""
        i = self.batch_input if self.batch_input is not None and self.batch_input < len(args) else 0
        return int(args[i].shape[0]) if args and args[i].ndim else 1

    @staticmethod
    def _run(p: _Loaded, args: list[torch.Tensor]) -> list[torch.Tensor]:
        from slimforge.torch_utils import outputs_to_list

        return outputs_to_list(p.runner(*args))

    def _replay(self, p: _Loaded, args: list[torch.Tensor]) -> list[torch.Tensor]:
        key = (p.lo,) + tuple((tuple(a.shape), a.dtype) for a in args)
        hit = self._captured.get(key)
        if hit is None:
            if len(self._captured) >= 8:  # a bounded set of shapes (a server's batch sizes)
                return self._run(p, args)
            static = [a.clone() for a in args]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._run(p, static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    outs = self._run(p, static)
            except RuntimeError as exc:  # a runner that cannot be captured runs plainly
                log.warning("CUDA graph capture of the engine failed (%s); running it without", exc)
                p.graphs = False
                return self._run(p, args)
            hit = self._captured[key] = (graph, static, outs)
        graph, static, outs = hit
        for s, a in zip(static, args):
            s.copy_(a)
        graph.replay()
        return outs

    def forward(self, *xs: torch.Tensor):
        args = [x.to(self.device, non_blocking=True) for x in xs]
        p = self.profiles[0] if len(self.profiles) == 1 else self.profile_for(self._batch(args))
        # one call at a time: a captured graph's static buffers, and a runner loaded single-threaded for capture.
        # Inference mode always (a first call inside it makes the static buffers inference tensors, which a later
        # call outside it could not copy into); the clones are made outside it, as ordinary tensors.
        with fp32_precision(p.tf32), self._lock:
            if p.graphs:
                with torch.inference_mode():
                    out = self._replay(p, args)
                out = [o.clone() for o in out]
            else:
                out = self._run(p, args)
        return out[0] if len(out) == 1 else tuple(out)


def _described(path: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The profiles of an engine without its sidecar: from its models' names (``batch_<lo>_<hi>``; placement
    unknown, so no CUDA graphs), or the one model for every batch size."""
    found = [m for n in models_in(path) if (m := re.fullmatch(r"batch_(\d+)_(\d+)", n))]
    if found:
        return [{"model": m.group(0), "lo": int(m.group(1)), "hi": int(m.group(2))} for m in found]
    return [{"model": "model", "lo": 1, "hi": MAX_BATCH, "gpu": meta.get("gpu"), "precision": meta.get("precision")}]


def load_engine(path: Path, *, examples: dict[str, np.ndarray], meta: dict[str, Any], source_id: str,
                io_spec: Any = None) -> Artifact:
    """An engine file as an artifact that runs (``Format.TORCH_EXPORT``: not edited by techniques). An engine with
    profiles (``meta["engine_profiles"]``, from its sidecar) runs each batch on the profile whose range holds it."""
    from slimforge.io.artifacts import torch_artifact

    if not torch.cuda.is_available():
        raise ModelLoadError(f"{path}: a GPU engine (AOTInductor package) needs an NVIDIA GPU with CUDA; this machine "
                             "has none")
    described = meta.get("engine_profiles") or _described(path, meta)
    loaded = []
    for d in described:
        graphs = "CUDA graphs" in str(d.get("gpu") or "")  # how it was placed, e.g. "fp16 + compile + CUDA graphs"
        try:
            # single-threaded: without it, each run first queries the previous run's completion event, which a CUDA
            # graph capture forbids and which, once recorded inside a capture, cannot be queried again
            runner = open_runner(path, device="cuda", single_threaded=graphs, model=str(d["model"]))
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot load the GPU engine: {str(exc).strip().splitlines()[0][:300]}"
                                 ) from exc
        loaded.append(_Loaded(int(d["lo"]), int(d["hi"]), runner, d.get("precision") == "tf32", graphs))
    meta = {**meta, "device": "cuda", "engine": "aoti"}
    batch_input = next((i for i, a in enumerate(examples.values()) if np.ndim(a)), None)
    if io_spec is not None:
        batch_input = next((i for i, t in enumerate(io_spec.inputs) if 0 in t.dynamic_axes()), batch_input)
    return torch_artifact(EngineModule(loaded, batch_input), examples, fmt=Format.TORCH_EXPORT, path=path, meta=meta,
                          source_id=source_id)


class _Runner:
    """The compiled model of an engine file run by torch's container runner, from a folder of ours (removed when the
    runner goes), with the process's C++ runtime shared with it first."""

    def __init__(self, path: Path, device: str, single_threaded: bool, model: str = "model") -> None:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if _model_of(n) == model]
            if not names:
                raise ModelLoadError(f"{path} holds no compiled model '{model}' (it holds {models_in(path)})")
            libs = [n for n in names if n.endswith(".so")]
            if len(libs) != 1 or any("/weights/" in n or "/constants/" in n for n in z.namelist()):
                raise _NotPlain(f"{len(libs)} compiled libraries, weights outside them")
            self.dir = tempfile.mkdtemp(prefix="slimforge-engine-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.dir, True)  # kernels load lazily: kept till then
            for n in names:
                if n.endswith((".so", ".cubin", ".json")):
                    target = Path(self.dir) / Path(n).name
                    target.write_bytes(z.read(n))
        lib = str(Path(self.dir) / Path(libs[0]).name)
        _share_cxx_runtime()
        aoti = torch._C._aoti
        if device == "cuda":
            self.runner = aoti.AOTIModelContainerRunnerCuda(lib, 1, "cuda", self.dir, single_threaded)
        else:
            self.runner = aoti.AOTIModelContainerRunnerCpu(lib, 1)

    def __call__(self, *args: torch.Tensor) -> list[torch.Tensor]:
        return self.runner.run(list(args))


def _share_cxx_runtime() -> None:
    """Make the process's C++ runtime (loaded with torch) visible to libraries opened later.

    A compiler may link its own libstdc++ into the engine's library (the H200 image's /opt/gcc g++ does: no libstdc++
    among its NEEDED, iconv and __duplocale among its imports). Loaded beside torch's copy, it mixed the two: std::regex
    in its parse_device_str took a facet from one copy and called it with the other's layout, and every fresh process
    died there (torch 2.11; in the building process too, at times). Started with LD_PRELOAD of the system libstdc++,
    the same library loaded and ran; promoting the copy already loaded to global scope does that in-process."""
    global _CXX_SHARED
    if _CXX_SHARED or os.name != "posix":
        return
    path = None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            path = next((ln.split()[-1] for ln in maps if "/libstdc++.so" in ln), None)
    except OSError:
        pass
    try:
        ctypes.CDLL(path or "libstdc++.so.6", mode=os.RTLD_NOW | ctypes.RTLD_GLOBAL)
    except OSError as exc:
        log.warning("could not share the C++ runtime with the engine's library (%s); loading it as it is", exc)
    _CXX_SHARED = True


_CXX_SHARED = False


class _NotPlain(Exception):
    """A package this loader does not open itself (torch's own loader does)."""


def open_runner(path: Path, *, device: str, single_threaded: bool = False, model: str = "model") -> Any:
    """A callable that runs the compiled ``model`` of the AOTInductor package at ``path`` on flat tensors (the order
    of the exported inputs) and returns its outputs. Packages with their weights outside the library go through
    torch's loader."""
    try:
        return _Runner(path, device, single_threaded, model)
    except _NotPlain as why:
        log.info("%s: %s; loading it with torch's package loader", path, why)
        _share_cxx_runtime()
        from torch._inductor.package import load_package

        return load_package(str(path), model, run_single_threaded=single_threaded)


def _model_of(entry: str) -> str | None:
    """The compiled model a package entry belongs to (``<archive>/data/aotinductor/<model>/...``), or None."""
    m = _MODEL_ENTRY.search(entry)
    return m.group(1) if m else None


_MODEL_ENTRY = re.compile(r"(?:^|/)aotinductor/([^/]+)/")


def models_in(path: Path) -> list[str]:
    """The names of the compiled models in an AOTInductor package (``model``, or one per batch profile)."""
    with zipfile.ZipFile(path) as z:
        return sorted({m for n in z.namelist() if (m := _model_of(n))})
