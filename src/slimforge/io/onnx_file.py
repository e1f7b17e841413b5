"""Reading and copying ONNX files: validity, the IO spec, a copy that keeps external data beside it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from slimforge.core.artifact import IOSpec, TensorSpec
from slimforge.errors import ModelLoadError, require


def check_onnx_file(path: Path) -> None:
    """Raise ``ModelLoadError`` naming the file when it is not a valid ONNX model (truncated, corrupt, invalid)."""
    onnx = require("onnx", extra="onnx")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        text = str(exc).strip().splitlines()
        reason = text[0][:300] if text else type(exc).__name__
        if "parse" in reason.lower() or "protobuf" in reason.lower() or type(exc).__name__ == "DecodeError":
            reason = f"the file is truncated or not an ONNX protobuf ({reason})"
        raise ModelLoadError(f"{path}: not a valid ONNX model: {reason}") from exc


def onnx_io(path: Path) -> IOSpec:
    """Inputs (excluding initializers) and outputs with symbolic dims as names."""
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(vi: Any) -> TensorSpec:
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name if t.elem_type else "float32"
        return TensorSpec(vi.name, dims, dtype)

    return IOSpec(tuple(spec(v) for v in model.graph.input if v.name not in inits),
                  tuple(spec(v) for v in model.graph.output))


def copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX model, re-pointing external data (if any) to a file named after ``dst``."""
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(src), load_external_data=False)
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
        model = onnx.load(str(src), load_external_data=True)
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{dst.name}.data", size_threshold=1024)
    else:
        shutil.copyfile(src, dst)
