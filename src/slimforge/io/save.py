"""Saving artifacts: every format to a file that ``load`` reads back with identical outputs.

Beside the model goes ``<file>.slimforge.json`` with the artifact's metadata (task, preprocessing), lineage and
checks, so a reloaded model keeps its tokenizer or image preprocessing and its history.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimforge.core.artifact import Artifact, Format
from slimforge.core.outputs import atomic_path
from slimforge.core.outputs import prepare_output_file
from slimforge.errors import ConfigError, TechniqueFailed
from slimforge.io.sidecar import sidecar_path, write_sidecar
from slimforge.io.synth import synthesize

_SUFFIXES = {Format.ONNX: (".onnx",), Format.OPENVINO: (".xml",), Format.TORCHSCRIPT: (".pt", ".pth", ".ts"),
             Format.TORCH_EXPORT: (".pt2",), Format.TORCH: (".pt2", ".pt", ".pth", ".ts")}


_KINDS = {Format.ONNX: "ONNX", Format.OPENVINO: "OpenVINO IR (.xml + .bin)", Format.TORCHSCRIPT: "TorchScript",
          Format.TORCH_EXPORT: "a torch.export program", Format.TORCH: "TorchScript (traced)"}


def check_suffix(path: str | Path, fmt: Format, *, what: str) -> Path:
    """``path`` when its suffix fits a file of format ``fmt`` (an in-memory PyTorch model is saved as TorchScript);
    else one line naming what ``what`` writes and the file name that fits.

    Example:
        >>> try:
        ...     check_suffix("q/x.onnx", Format.OPENVINO, what="fp16 on openvino")
        ... except ConfigError as exc:
        ...     print(str(exc).split(": ")[1])
        fp16 on openvino writes OpenVINO IR (.xml + .bin); name it q/x.xml
    """
    path = Path(path)
    allowed = _SUFFIXES[fmt]
    if path.suffix.lower() not in allowed:
        raise ConfigError(f"output '{path}' does not fit: {what} writes {_KINDS[fmt]}; name it "
                          f"{path.with_suffix(allowed[0])}")
    return path


def save(art: Artifact, path: str | Path, *, profiles: Sequence[Any] = ()) -> Artifact:
    """Write ``art`` to ``path`` and return the artifact loaded back from it (outputs checked identical).

    In-memory PyTorch models are saved as a ``torch.export`` program to a ``.pt2`` (dynamic axes kept): ``load``
    unflattens it into a module that every technique can edit again (prune, fuse, lowrank, distill). To a ``.pt``
    they are saved as TorchScript (traced on the example inputs), which runtimes run but techniques cannot edit.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> slimforge.save(art, "/tmp/slimforge-doc/lin.pt2").format.value
        'torch'
        >>> slimforge.save(art, "/tmp/slimforge-doc/lin.pt").format.value
        'torchscript'

    A model placed for the GPU, saved to ``.pt2``, is an AOTInductor engine; ``profiles`` (``io.engine.Profile``:
    a batch range and the placed model for it) make it an engine with one compiled model per batch range, each
    checked against its own placed model.
    """
    from slimforge.io.models import load

    path = Path(path)
    allowed = _SUFFIXES[art.format]
    if path.suffix.lower() not in allowed:
        raise ConfigError(f"a {art.format.value} model is saved as {' or '.join(allowed)}, got '{path.name}'")
    path = prepare_output_file(path, inputs=[art.path])
    if profiles:
        art = dataclasses.replace(art, meta={**art.meta, "engine_profiles": [p.describe() for p in profiles]})
    with atomic_path(path) as tmp:
        _write(art, tmp, profiles)
    write_sidecar(art, path)
    try:
        loaded = load(path, example_inputs=dict(art.examples) if art.format in (Format.TORCH, Format.TORCHSCRIPT)
                      else None)
        if profiles:  # each batch range runs its own placed model: checked against it, at its ends
            for p in profiles:
                for b in sorted({p.lo, min(p.hi, p.lo + 2), p.hi}):
                    _check_same(p.art, loaded, synthesize(p.art.io, batch=b, seq=7, examples=p.art.examples,
                                                          meta=p.art.meta))
        else:
            _check_same(art, loaded, dict(art.examples))
        if not profiles and art.format is Format.TORCH and any(t.dynamic_axes() for t in art.io.inputs):
            # a trace or export can fix a size the module computes: check at other sizes too
            _check_same(art, loaded, synthesize(art.io, batch=3, seq=7, examples=art.examples, meta=art.meta))
    except Exception:
        for f in (path, sidecar_path(path), path.with_suffix(".bin") if art.format is Format.OPENVINO else None):
            if f is not None:
                f.unlink(missing_ok=True)
        raise
    return loaded


def _write(art: Artifact, tmp: Path, profiles: Sequence[Any] = ()) -> None:
    if art.format is Format.ONNX:
        from slimforge.io.onnx_file import copy_onnx

        copy_onnx(art.path, tmp)
    elif art.format is Format.OPENVINO:
        shutil.copyfile(art.path, tmp)
        shutil.copyfile(art.path.with_suffix(".bin"), tmp.with_suffix(".bin"))
    elif art.path is not None and art.format in (Format.TORCHSCRIPT, Format.TORCH_EXPORT):
        shutil.copyfile(art.path, tmp)
    elif tmp.suffix.lower() == ".pt2" and art.meta.get("device") == "cuda":
        from slimforge.io.engine import write_engine

        write_engine(art, tmp, profiles)  # placed for the GPU: an AOTInductor engine
    elif tmp.suffix.lower() == ".pt2":
        _write_program(art, tmp)
    else:
        import torch

        from slimforge.torch_utils import set_training

        set_training(art.handle, False)
        args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in art.examples.values())
        try:
            with torch.inference_mode():
                traced = torch.jit.trace(art.handle, args, check_trace=False, strict=False)
            torch.jit.save(traced, str(tmp))
        except Exception as exc:
            raise TechniqueFailed(f"{art.name} cannot be saved as TorchScript: {str(exc).splitlines()[0][:300]}") \
                from exc


def _write_program(art: Artifact, tmp: Path) -> None:
    if art.path is not None and art.path.suffix.lower() == ".pt2" and art.source_id.startswith("file:"):
        shutil.copyfile(art.path, tmp)  # loaded from this program and not changed since
        return
    import torch

    from slimforge.io.programs import export_program

    try:
        program = export_program(art.handle, art.examples, art.io)
    except Exception as exc:
        raise TechniqueFailed(f"{art.name} cannot be saved as a torch.export program (.pt2): "
                              f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
                              "; save it as .pt (TorchScript: runtimes run it, but it cannot be edited again)") from exc
    torch.export.save(program, str(tmp))


def _check_same(art: Artifact, loaded: Artifact, feeds: dict[str, np.ndarray]) -> None:
    from slimforge.runtimes import open_session

    shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in feeds.items())
    a = open_session(art).run(feeds)
    try:
        b = open_session(loaded).run(feeds)
    except Exception as exc:
        raise TechniqueFailed(f"the saved {loaded.path.name} does not run on {shapes} as the model does "
                              f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})"
                              + ("; a TorchScript trace fixes sizes the model computes: save as .pt2"
                                 if loaded.format is Format.TORCHSCRIPT else "")) from exc
    engine = loaded.meta.get("engine") == "aoti"  # other kernels than the in-memory model's: close, not equal
    for i, (x, y) in enumerate(zip(a, b)):
        if engine and x.shape == y.shape and _cosine(x, y) >= 0.9999:
            continue
        if x.shape != y.shape or not np.allclose(x, y, atol=1e-6, rtol=1e-5):
            raise TechniqueFailed(f"the saved {loaded.path.name} does not reproduce the model's output {i} on "
                                  f"{shapes} (max abs diff "
                                  f"{float(np.abs(x - y).max()) if x.shape == y.shape else 'shape'})"
                                  + ("; a TorchScript trace fixes sizes the model computes: save as .pt2"
                                     if loaded.format is Format.TORCHSCRIPT else ""))


def _cosine(x: np.ndarray, y: np.ndarray) -> float:
    a, b = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 if den == 0 else float(a @ b) / den
