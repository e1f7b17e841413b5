"""The parts every model loader shares: example inputs, the torch artifact (its IO probed by running it),
metadata, digests of modules, files and folders."""

from __future__ import annotations

import hashlib
import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from slimforge.core.artifact import Artifact, Format, IOSpec, TensorSpec
from slimforge.errors import ConfigError
from slimforge.io.probe import infer_dynamic_axes

if TYPE_CHECKING:
    from torch import nn

ExampleInputs = Any  # a tensor, an array, a sequence of them, or a {name: tensor} mapping


def torch_artifact(module: nn.Module, examples: dict[str, np.ndarray], *, fmt: Format, path: Path | None,
                   meta: dict[str, Any], source_id: str) -> Artifact:
    """An artifact of a torch module (or TorchScript, or program): run once on ``examples``, its dynamic axes
    probed, its outputs named by task."""
    from slimforge.torch_utils import run_module

    try:
        outputs = run_module(module, examples)
    except Exception as exc:
        shapes = {k: tuple(v.shape) for k, v in examples.items()}
        raise ConfigError(f"the model does not run on the example inputs {shapes}: {first_line(exc)}") from exc
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


def make_meta(name: str | None, task: str | None, module: nn.Module | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or (type(module).__name__ if module is not None else "model")}
    if task is not None:
        from slimforge.core.artifact import TASKS

        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    meta["task"] = task or "generic"
    return meta


def forward_names(module: nn.Module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return ["input"] if names == ["x"] else names


def examples_from(example_inputs: ExampleInputs | None, names: Sequence[str],
                  input_shapes: Mapping[str, tuple[int, ...]] | None,
                  module: nn.Module | None) -> dict[str, np.ndarray]:
    if example_inputs is None:
        if not input_shapes:
            raise ConfigError("pass example_inputs=... (a tensor, a tuple of tensors or a {name: tensor} dict) so the "
                              "model can be traced, exported and benchmarked")
        shapes = dict(input_shapes)
        if list(shapes) == [""]:
            shapes = {(names[0] if names else "input"): shapes[""]}
        return {n: np.random.default_rng(0).standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    if isinstance(example_inputs, Mapping):
        return {str(k): to_numpy(v) for k, v in example_inputs.items()}
    items = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    names = list(names)
    if len(names) < len(items):
        names = names + [f"input_{i}" for i in range(len(names), len(items))]
    if len(items) == 1 and names[0] in ("x", "input", "inputs"):
        names = ["input"]
    return {n: to_numpy(v) for n, v in zip(names, items)}


def to_numpy(value: Any) -> np.ndarray:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ConfigError(f"example inputs must be tensors or arrays, got {type(value).__name__}")


def module_digest(module: nn.Module) -> str:
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in list(module.state_dict().items())[:64]:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(np.ascontiguousarray(t.detach().float().reshape(-1)[:64].cpu().numpy()).tobytes())
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def folder_digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256("|".join(file_digest(p) for p in files).encode()).hexdigest()[:16]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
