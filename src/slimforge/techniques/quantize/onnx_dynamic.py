"""Dynamic INT8 quantization of ONNX models with ONNX Runtime's ``quantize_dynamic``."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import logging
from dataclasses import dataclass

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, check_unit, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.registry import implements
from slimforge.env import has_vnni
from slimforge.errors import TechniqueFailed, require
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.techniques.quantize.coverage import require_quantized

log = logging.getLogger(__name__)


class WeightType(str, enum.Enum):
    AUTO = "auto"  # int8 weights (u8s8 kernels); 7-bit range on CPUs without VNNI to avoid saturation
    QINT8 = "qint8"
    QUINT8 = "quint8"


@dataclass(frozen=True, kw_only=True, slots=True)
class DynamicQuantConfig(Config):
    """Dynamic INT8: weights quantized offline, activations at run time. No calibration data needed.

    Convolutions are left in float by default: ONNX Runtime's ConvInteger kernels are slower than float Conv.

    Example:
        >>> DynamicQuantConfig(per_channel=True).to_dict()["type"]
        'quantize_dynamic'
    """

    kind = "quantize_dynamic"
    weight_type: WeightType = WeightType.AUTO
    per_channel: bool = False
    include_conv: bool = False
    exclude: tuple[str, ...] = ()
    min_cosine: float = 0.98
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_unit("min_cosine", self.min_cosine)


@implements(DynamicQuantConfig, fmt=Format.ONNX)
def _quantize_dynamic_onnx(art: Artifact, cfg: DynamicQuantConfig, ctx: RunContext) -> Artifact:
    onnx = require("onnx", extra="onnx")
    q = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    weight_type = q.QuantType.QUInt8 if cfg.weight_type is WeightType.QUINT8 else q.QuantType.QInt8
    reduce_range = cfg.weight_type is WeightType.AUTO and not has_vnni()
    model = onnx.load(str(art.path), load_external_data=False)
    exclude = list(cfg.exclude)
    if not cfg.include_conv:
        exclude += [n.name for n in model.graph.node if n.op_type == "Conv" and n.name]
    child = art.derive(Step("quantize_dynamic", cfg.to_dict()),
                       meta={"precision": "int8-dynamic", "reduce_range": reduce_range})
    final = ctx.output_for(child, ".onnx")
    ctx.report_progress("dynamic int8", 0, 2)
    with atomic_path(final) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                q.quantize_dynamic(str(art.path), str(tmp), weight_type=weight_type, per_channel=cfg.per_channel,
                                   reduce_range=reduce_range, nodes_to_exclude=exclude,
                                   use_external_data_format=art.size_bytes() > 1_900_000_000)
        except Exception as exc:
            raise TechniqueFailed(f"ONNX Runtime dynamic quantization failed on {art.path.name}: "
                                  f"{str(exc).splitlines()[0][:300]}") from exc
        ctx.report_progress("dynamic int8", 1, 2)
        counted = require_quantized(
            dataclasses.replace(child, path=tmp), method="dynamic INT8 (ONNX Runtime)", source=art,
            applies_to="MatMul, Gemm, Attention, LSTM and Gather with stored weights"
                       + ("" if cfg.include_conv else " (Conv stays in float unless include_conv)"))
        check = fidelity_check(art, counted, min_cosine=cfg.min_cosine, name="quant_fidelity",
                               data=ctx.calibration_data)
    ctx.report_progress("dynamic int8", 2, 2)
    return dataclasses.replace(counted, path=final).with_check(check)
