"""Weight-only quantization: INT4 (blockwise) or INT8 weights, activations stay in float.

ONNX: ONNX Runtime's ``MatMulNBitsQuantizer`` (INT4 ``MatMulNBits``) or per-channel INT8 weights through dynamic
quantization of MatMul weights. OpenVINO: ``nncf.compress_weights`` (see ``openvino.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed, require
from slimforge.evaluation.fidelity import fidelity_check


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
        check = fidelity_check(art, dataclasses.replace(child, path=tmp), min_cosine=cfg.min_cosine,
                               name="quant_fidelity", data=ctx.calibration_data)
    return dataclasses.replace(child, path=final).with_check(check)
