"""Saving artifacts: every format to a file that ``load`` reads back with identical outputs.

Beside the model goes ``<file>.slimforge.json`` with the artifact's metadata (task, preprocessing), lineage and
checks, so a reloaded model keeps its tokenizer or image preprocessing and its history.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from slimforge.core.artifact import Artifact, Format
from slimforge.core.context import atomic_path
from slimforge.core.outputs import SIDECAR_SUFFIX, prepare_output_file
from slimforge.errors import ConfigError, TechniqueFailed

_SUFFIXES = {Format.ONNX: (".onnx",), Format.OPENVINO: (".xml",), Format.TORCHSCRIPT: (".pt", ".pth", ".ts"),
             Format.TORCH_EXPORT: (".pt2",), Format.TORCH: (".pt", ".pth", ".ts")}


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_sidecar(art: Artifact, path: Path) -> None:
    doc = {"format": art.format.value, "meta": dict(art.meta), "lineage": [s.to_dict() for s in art.lineage],
           "checks": [c.to_dict() for c in art.checks], "io": art.io.to_dict()}
    with atomic_path(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")


def save(art: Artifact, path: str | Path) -> Artifact:
    """Write ``art`` to ``path`` and return the artifact loaded back from it (outputs checked identical).

    In-memory PyTorch models are saved as TorchScript (traced on the example inputs).

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> slimforge.save(art, "/tmp/slimforge-doc/lin.pt").format.value
        'torchscript'
    """
    from slimforge.io.models import load

    path = Path(path)
    allowed = _SUFFIXES[art.format]
    if path.suffix.lower() not in allowed:
        raise ConfigError(f"a {art.format.value} model is saved as {' or '.join(allowed)}, got '{path.name}'")
    path = prepare_output_file(path, inputs=[art.path])
    with atomic_path(path) as tmp:
        _write(art, tmp)
    write_sidecar(art, path)
    loaded = load(path, example_inputs=dict(art.examples) if art.format in (Format.TORCH, Format.TORCHSCRIPT)
                  else None)
    _check_same(art, loaded)
    return loaded


def _write(art: Artifact, tmp: Path) -> None:
    if art.format is Format.ONNX:
        from slimforge.convert.optimize import _copy_onnx

        _copy_onnx(art.path, tmp)
    elif art.format is Format.OPENVINO:
        shutil.copyfile(art.path, tmp)
        shutil.copyfile(art.path.with_suffix(".bin"), tmp.with_suffix(".bin"))
    elif art.path is not None and art.format in (Format.TORCHSCRIPT, Format.TORCH_EXPORT):
        shutil.copyfile(art.path, tmp)
    else:
        import torch

        from slimforge.runtimes.torch_eager import set_training

        set_training(art.handle, False)
        args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in art.examples.values())
        try:
            with torch.inference_mode():
                traced = torch.jit.trace(art.handle, args, check_trace=False, strict=False)
            torch.jit.save(traced, str(tmp))
        except Exception as exc:
            raise TechniqueFailed(f"{art.name} cannot be saved as TorchScript: {str(exc).splitlines()[0][:300]}") \
                from exc


def _check_same(art: Artifact, loaded: Artifact) -> None:
    from slimforge.runtimes import open_session

    feeds = dict(art.examples)
    a = open_session(art).run(feeds)
    b = open_session(loaded).run(feeds)
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape or not np.allclose(x, y, atol=1e-6, rtol=1e-5):
            raise TechniqueFailed(f"the saved {loaded.path.name} does not reproduce the model's output {i} "
                                  f"(max abs diff {float(np.abs(x - y).max()) if x.shape == y.shape else 'shape'})")
