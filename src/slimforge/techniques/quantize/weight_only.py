"""Weight-only quantization: INT4 (blockwise) or INT8 weights, activations stay in float.

ONNX: ONNX Runtime's ``MatMulNBitsQuantizer`` (INT4 ``MatMulNBits``) or per-channel INT8 weights through dynamic
quantization of MatMul weights. OpenVINO: ``nncf.compress_weights`` (see ``openvino.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass

import numpy as np

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed, require
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.techniques.quantize.coverage import require_quantized


@dataclass(frozen=True, kw_only=True, slots=True)
class WeightOnlyConfig(Config):
    """Quantize weights only.

    Example:
        >>> WeightOnlyConfig(bits=4, group_size=32).bits
        4
    """

    kind = "weight_only"
    bits: int = 4
    group_size: int = 32
    ratio: float = 1.0  # OpenVINO: share of layers in INT4 (the rest INT8)
    symmetric: bool = True
    min_cosine: float = 0.95
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.bits not in (4, 8):
            raise ConfigError(f"bits must be 4 or 8, got {self.bits}")
        if self.group_size not in (16, 32, 64, 128, 256, -1):
            raise ConfigError(f"group_size must be 16, 32, 64, 128, 256 or -1 (per channel), got {self.group_size}")
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"ratio must be in (0, 1], got {self.ratio}")


@implements(WeightOnlyConfig, fmt=Format.ONNX)
def _weight_only_onnx(art: Artifact, cfg: WeightOnlyConfig, ctx: RunContext) -> Artifact:
    onnx = require("onnx", extra="onnx")
    child = art.derive(Step("weight_only", cfg.to_dict()), meta={"precision": f"int{cfg.bits}-weights"})
    final = ctx.output_for(child, ".onnx")
    with atomic_path(final) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                if cfg.bits == 4:
                    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

                    model = onnx.load(str(art.path))
                    gemm_to_matmul(model)  # MatMulNBits applies to MatMul only; a Linear layer exports as Gemm
                    quant = MatMulNBitsQuantizer(model, block_size=cfg.group_size if cfg.group_size > 0 else 128,
                                                 is_symmetric=cfg.symmetric)
                    quant.process()
                    quant.model.save_model_to_file(str(tmp), use_external_data_format=False)
                else:
                    q = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
                    q.quantize_dynamic(str(art.path), str(tmp), weight_type=q.QuantType.QInt8, per_channel=True,
                                       op_types_to_quantize=["MatMul", "Gemm"])
        except Exception as exc:
            raise TechniqueFailed(f"weight-only INT{cfg.bits} failed on {art.name}: "
                                  f"{str(exc).splitlines()[0][:300]}") from exc
        counted = require_quantized(
            dataclasses.replace(child, path=tmp), source=art,
            method="int4 weight-only (ONNX Runtime MatMulNBits)" if cfg.bits == 4 else
            "int8 weight-only (ONNX Runtime)",
            applies_to="MatMul and Gemm with stored weights")
        check = fidelity_check(art, counted, min_cosine=cfg.min_cosine, name="quant_fidelity",
                               data=ctx.calibration_data)
    return dataclasses.replace(counted, path=final).with_check(check)


def gemm_to_matmul(model) -> int:
    """Rewrite, in place, each ``Gemm`` with a stored weight (alpha = beta = 1, A not transposed) as ``MatMul``
    with the weight laid out ``[K, N]`` (plus ``Add`` of the bias): the same function, in the form that int4
    weight-only quantization applies to. Returns how many were rewritten.

    Example:
        >>> import onnx
        >>> from onnx import helper, numpy_helper
        >>> import numpy as np
        >>> w = numpy_helper.from_array(np.ones((4, 8), np.float32), "w")
        >>> g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "g",
        ...     [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        ...     [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w])
        >>> m = helper.make_model(g)
        >>> gemm_to_matmul(m), [n.op_type for n in m.graph.node], list(m.graph.initializer[0].dims)
        (1, ['MatMul'], [8, 4])
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    nodes, done = [], 0
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or len(n.input) < 2 or n.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or users[n.input[1]] != 1):
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if attrs.get("transB", 0):
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), n.input[1]))
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        mm_out = f"{n.output[0]}_matmul" if bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1]], [mm_out], name=n.name or None))
        if bias:
            nodes.append(helper.make_node("Add", [mm_out, bias], [n.output[0]],
                                          name=f"{n.name}_bias" if n.name else None))
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done
