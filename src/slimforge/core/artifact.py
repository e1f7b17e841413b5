"""The Artifact: one model, its format, IO spec, metadata, lineage and the checks that verified it."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np


class Format(str, enum.Enum):
    """How the model is held."""

    TORCH = "torch"  # an nn.Module in memory
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"
    ONNX = "onnx"
    OPENVINO = "openvino"


Dim = int | str | None  # int: fixed; str: named dynamic dimension; None: unknown



MEASURED_FOR_THIS_MODEL = ("threads", "thread_tuning")  # metadata a derived model does not inherit

@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, shape (ints for fixed dims, names for dynamic ones) and numpy dtype name of one tensor."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True, slots=True)
class IOSpec:
    """The inputs and outputs of a model, in call order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


@dataclass(frozen=True, slots=True)
class Step:
    """One transformation in an artifact's lineage: a name and the config dict that drove it."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": dict(self.config)}


@dataclass(frozen=True, slots=True)
class Check:
    """A numerical self-check recorded by a step: whether it passed, with its figures."""

    name: str
    passed: bool
    metrics: Mapping[str, float] = field(default_factory=dict)
    detail: str = ""
    step: int = 0  # 1-based index in the lineage of the step that recorded it (0: at load)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "metrics": dict(self.metrics), "detail": self.detail,
                "step": self.step}


# what a model does, which decides how its quality is judged (slimforge.evaluation.tasks)
TASKS = ("classification", "detection", "segmentation", "image-to-image", "embedding", "sequence", "stateful",
         "generic")


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One model.

    ``path`` is where it lives on disk (a file, or a folder for Hugging Face models), ``handle`` an in-memory object
    (an ``nn.Module``). ``examples`` holds example inputs (name -> array) used for export and input synthesis.
    ``meta`` holds JSON-able facts: name, task, preprocessing. The id hashes the parent id and the step, or the
    source for a loaded model, so equal recipes on equal inputs share ids (the cache key).

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> art.format.value, art.io.input_names
        ('torch', ['input'])
    """

    format: Format
    io: IOSpec
    path: Path | None = None
    handle: Any = field(default=None, compare=False, repr=False)
    examples: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    meta: Mapping[str, Any] = field(default_factory=dict)
    lineage: tuple[Step, ...] = ()
    checks: tuple[Check, ...] = ()
    source_id: str = ""

    @property
    def id(self) -> str:
        payload = json.dumps({"src": self.source_id, "lineage": [s.to_dict() for s in self.lineage]},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or (self.path.stem if self.path else "model"))

    def derive(self, step: Step, **changes: Any) -> Artifact:
        """A child artifact made by ``step``; fields not given are inherited, the checks of earlier steps too. A
        thread count measured for this model (``bench.threads``) is not: the child is another model."""
        meta = {k: v for k, v in self.meta.items() if k not in MEASURED_FOR_THIS_MODEL}
        changes["meta"] = {**meta, **changes.get("meta", {})}
        return dataclasses.replace(self, lineage=(*self.lineage, step), **changes)

    def with_check(self, check: Check) -> Artifact:
        """Record a check made by the latest step."""
        return dataclasses.replace(self, checks=(*self.checks, dataclasses.replace(check, step=len(self.lineage))))

    @property
    def step_checks(self) -> tuple[Check, ...]:
        """The checks recorded by the latest step only."""
        return tuple(c for c in self.checks if c.step == len(self.lineage))

    def size_bytes(self) -> int:
        """Bytes on disk (file plus external data, or the whole folder); for in-memory modules, parameter bytes."""
        if self.path is not None and self.path.exists():
            return _disk_size(self.path, self.format)
        if self.handle is not None and hasattr(self.handle, "parameters"):
            params = sum(p.numel() * p.element_size() for p in self.handle.parameters())
            bufs = sum(b.numel() * b.element_size() for b in self.handle.buffers())
            return int(params + bufs)
        return 0

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "format": self.format.value,
            "path": str(self.path) if self.path else None,
            "io": self.io.to_dict(),
            "lineage": [s.to_dict() for s in self.lineage],
            "checks": [c.to_dict() for c in self.checks],
            "size_mb": round(self.size_bytes() / 1e6, 3),
        }


def _disk_size(path: Path, fmt: Format) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    total = path.stat().st_size
    if fmt is Format.OPENVINO:
        bin_path = path.with_suffix(".bin")
        total += bin_path.stat().st_size if bin_path.exists() else 0
    elif fmt is Format.ONNX:
        for ext in _onnx_external_files(path):
            total += ext.stat().st_size
    return total


def _onnx_external_files(path: Path) -> list[Path]:
    try:
        import onnx
    except ImportError:
        return []
    model = onnx.load(str(path), load_external_data=False)
    names = {
        entry.value
        for init in model.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }
    return [path.parent / n for n in sorted(names) if (path.parent / n).exists()]
