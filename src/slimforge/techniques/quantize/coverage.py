"""What a quantization step actually quantized, counted in its result: the quantized ops and low-precision weights
of an ONNX graph, an OpenVINO IR or a PyTorch module. A step whose result holds none raises ``NothingQuantized``
(one line: what the method applies to, and that this model has none), so that nothing is reported as "quantized,
1.01x faster" when it is the FP32 model unchanged; the auto-optimizer records it as the candidate's reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimforge.core.artifact import Artifact, Check
from slimforge.errors import NothingQuantized, require

# ONNX ops that compute in low precision, or (de)quantize: QDQ, QOperator, integer and n-bit kernels
_ONNX_QUANT_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "MatMulNBits",
                   "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention", "QGemm", "QOrderedMatMul",
                   "MatMulIntegerToFloat", "GatherBlockQuantized"}
_ONNX_WEIGHTED = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "LSTM", "GRU", "RNN", "Attention"}
_LOW_ONNX = {2: "uint8", 3: "int8", 10: "float16", 16: "bfloat16", 17: "float8e4m3fn", 19: "float8e5m2",
             21: "uint4", 22: "int4"}
_LOW_OV = {"u8", "i8", "u4", "i4", "nf4", "f16", "bf16", "f8e4m3", "f8e5m2", "u2", "u1"}
_OV_WEIGHTED = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul", "Gather", "LSTMSequence",
                "GRUSequence"}


@dataclass(frozen=True)
class Coverage:
    """``ops``: quantized or low-precision ops (per kind in ``kinds``); ``weights``: low-precision weight tensors;
    ``weighted``: ops with weights in the model (the most a weight method could reach)."""

    ops: int
    weights: int
    weighted: int
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def nothing(self) -> bool:
        return self.ops == 0 and self.weights == 0

    def to_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "weights": self.weights, "weighted_ops": self.weighted, "kinds": dict(self.kinds)}


def _count(names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items()))


def onnx_coverage(path: Path) -> Coverage:
    """Quantized ops (Q/DQ pairs count once, by their QuantizeLinear; DequantizeLinear of a stored weight counts as
    a quantized weight) and low-precision initializers of an ONNX file."""
    onnx = require("onnx", extra="onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name: i.data_type for i in graph.initializer}
    low = {name for name, dtype in inits.items() if dtype in _LOW_ONNX}
    quant = [n.op_type for n in graph.node if n.op_type in _ONNX_QUANT_OPS or n.op_type.startswith("QLinear")]
    dq_weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in low]
    weighted = sum(1 for n in graph.node if n.op_type in _ONNX_WEIGHTED and any(i in inits for i in n.input[1:]))
    kinds = _count(quant + ["DequantizeLinear (weight)"] * len(dq_weights)
                   + [f"{_LOW_ONNX[inits[n]]} initializer" for n in low])
    return Coverage(ops=len(quant) + len(dq_weights), weights=len(low), weighted=weighted, kinds=kinds)


def openvino_coverage(path: Path) -> Coverage:
    """FakeQuantize ops and low-precision constants (compressed weights) of an OpenVINO IR."""
    ov = require("openvino", extra="openvino")
    model = ov.Core().read_model(str(path))
    fq, low, weighted = [], [], 0
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            fq.append(kind)
        elif kind == "Constant" and op.get_element_type().get_type_name() in _LOW_OV and op.get_output_size() \
                and len(op.get_output_partial_shape(0)) > 0:
            low.append(f"{op.get_element_type().get_type_name()} constant")
        elif kind in _OV_WEIGHTED:
            weighted += 1
    return Coverage(ops=len(fq), weights=len(low), weighted=weighted, kinds=_count(fq + low))


def torch_coverage(module: Any) -> Coverage:
    """Quantized modules (``torch.ao`` quantized, float8 layers), quantize/dequantize ops of a PT2E graph, and
    low-precision parameters of a PyTorch module."""
    import torch

    low_dtypes = {torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.qint8, torch.quint8,
                  getattr(torch, "float8_e4m3fn", torch.int8), getattr(torch, "float8_e5m2", torch.int8)}
    mods = [type(m).__name__ for m in module.modules()
            if ".quantized" in type(m).__module__ or "float8" in type(m).__module__.lower()]
    graph_ops = [str(getattr(n.target, "__name__", n.target)) for n in getattr(getattr(module, "graph", None),
                                                                             "nodes", ())
                 if n.op == "call_function" and "quantize_per" in str(n.target)]
    weights = [str(t.dtype) for t in [*module.parameters(), *module.buffers()] if t.dtype in low_dtypes]
    weights += [str(p.dtype) for m in module.modules() if ".quantized" in type(m).__module__
                for p in _packed(m)]
    weighted = sum(1 for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d,
                                                                 torch.nn.Conv3d, torch.nn.LSTM, torch.nn.GRU,
                                                                 torch.nn.Embedding)))
    return Coverage(ops=len(mods) + len(graph_ops), weights=len(weights), weighted=weighted,
                    kinds=_count(mods + graph_ops + [f"{w} tensor" for w in weights]))


def _packed(m: Any) -> list[Any]:
    """The packed INT8 weight of a ``torch.ao`` quantized layer (it is no parameter)."""
    try:
        w = m.weight() if callable(getattr(m, "weight", None)) else None
    except Exception:  # noqa: BLE001 - layers without a packed weight
        return []
    return [w] if w is not None else []


def coverage_of(art: Artifact) -> Coverage:
    """The coverage of an artifact, by its format (a file for ONNX / OpenVINO, its module otherwise)."""
    from slimforge.core.artifact import Format

    if art.format is Format.ONNX:
        return onnx_coverage(art.path)
    if art.format is Format.OPENVINO:
        return openvino_coverage(art.path)
    return torch_coverage(art.handle)


def require_quantized(art: Artifact, *, method: str, applies_to: str, source: Artifact | None = None,
                      need: tuple[str, ...] = ()) -> Artifact:
    """Count what ``art`` (the result of ``method``) holds in low precision, beyond what ``source`` (its input, of
    the same format or in memory) already held; raise ``NothingQuantized`` when that is nothing, or when none of
    the ``need`` kinds is among it (e.g. 4-bit constants for an int4 method), else return ``art`` with the counts in
    ``meta["quantized"]`` and a ``quantized_ops`` check.

    Example:
        >>> # q = require_quantized(child, method="int4 weight-only", applies_to="MatMul with stored weights")
    """
    cov = coverage_of(art)
    if source is not None and (source.format is art.format or source.handle is not None):
        before = coverage_of(source)  # what it already held does not count; what it had to quantize does
        cov = dataclasses.replace(cov, ops=max(cov.ops - before.ops, 0), weights=max(cov.weights - before.weights, 0),
                                  weighted=before.weighted)
    if cov.nothing or (need and not any(k in cov.kinds for k in need)):
        other = "" if cov.nothing else "; it fell back to " + ", ".join(f"{k} x{v}" for k, v in cov.kinds.items())
        raise NothingQuantized(f"nothing was quantized: {method} applies to {applies_to}; this model has none "
                               f"({cov.weighted} weighted ops{other})")
    detail = (f"{cov.ops} quantized ops and {cov.weights} low-precision weight tensors "
              f"({cov.weighted} weighted ops in the model): "
              + ", ".join(f"{k} x{v}" for k, v in cov.kinds.items()))
    check = Check("quantized_ops", True, {"ops": float(cov.ops), "weights": float(cov.weights),
                                          "weighted_ops": float(cov.weighted)}, detail)
    return dataclasses.replace(art, meta={**art.meta, "quantized": cov.to_dict()}).with_check(check)
