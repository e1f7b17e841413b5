"""FP16 / BF16: PyTorch casts, ONNX float16 conversion (ops that need FP32 stay in FP32), OpenVINO precision hints."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import io
from dataclasses import dataclass

import torch

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, check_unit, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.registry import implements
from slimforge.errors import TechniqueFailed, UnsupportedModelError, require
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.techniques.quantize.coverage import require_quantized


class HalfType(str, enum.Enum):
    FP16 = "fp16"
    BF16 = "bf16"


# Ops whose FP16 versions lose too much (reductions, normalisation, exponentials) or have no FP16 CPU kernel.
_FP32_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "Softmax", "Exp", "Pow", "Sqrt", "Erf", "Range",
             "CumSum", "TopK", "NonMaxSuppression", "Resize", "Upsample", "RandomNormalLike",
             "SimplifiedLayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization")


@dataclass(frozen=True, kw_only=True, slots=True)
class CastConfig(Config):
    """Run in half precision.

    Example:
        >>> CastConfig(dtype="bf16").dtype.value
        'bf16'
    """

    kind = "cast"
    dtype: HalfType = HalfType.FP16
    keep_fp32_ops: tuple[str, ...] = _FP32_OPS
    min_cosine: float = 0.99
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_unit("min_cosine", self.min_cosine)


@implements(CastConfig, fmt=Format.TORCH)
def _cast_torch(art: Artifact, cfg: CastConfig, ctx: RunContext) -> Artifact:
    from slimforge.torch_utils import set_training

    dtype = torch.float16 if cfg.dtype is HalfType.FP16 else torch.bfloat16
    module = copy.deepcopy(art.handle).to(dtype)
    set_training(module, False)
    child = art.derive(Step("cast", cfg.to_dict()), handle=HalfModule(module, dtype), path=None,
                       meta={"precision": cfg.dtype.value})
    child = require_quantized(child, method=f"{cfg.dtype.value} (PyTorch cast)", applies_to="floating-point "
                              "parameters and buffers", source=art)
    return child.with_check(fidelity_check(art, child, min_cosine=cfg.min_cosine, name="cast_fidelity",
                                           data=ctx.calibration_data))


class HalfModule(torch.nn.Module):
    """Casts float inputs to the half type and outputs back to float32, so callers keep seeing FP32 tensors."""

    def __init__(self, inner: torch.nn.Module, half: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.half = half

    def forward(self, *xs: torch.Tensor):
        out = self.inner(*[x.to(self.half) if x.is_floating_point() else x for x in xs])
        if isinstance(out, torch.Tensor):
            return out.float()
        return tuple(o.float() if o.is_floating_point() else o for o in out)


@implements(CastConfig, fmt=Format.ONNX)
def _cast_onnx(art: Artifact, cfg: CastConfig, ctx: RunContext) -> Artifact:
    onnx = require("onnx", extra="onnx")
    if cfg.dtype is HalfType.BF16:
        raise UnsupportedModelError("ONNX Runtime has no BF16 kernels for most CPU ops; for BF16 convert to "
                                    "OpenVINO (which runs BF16 on CPUs with AVX512-BF16/AMX) or use PyTorch")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    child = art.derive(Step("cast", cfg.to_dict()), meta={"precision": "fp16"})
    final = ctx.output_for(child, ".onnx")
    with atomic_path(final) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                model = convert_float_to_float16(onnx.load(str(art.path)), keep_io_types=True,
                                                 op_block_list=list(cfg.keep_fp32_ops))
                from onnxruntime.transformers.onnx_model import OnnxModel

                wrapped = OnnxModel(model)
                wrapped.topological_sort()  # the converter appends input casts after their users
            onnx.save(wrapped.model, str(tmp))
        except Exception as exc:
            raise TechniqueFailed(f"FP16 conversion failed on {art.name}: {str(exc).splitlines()[0][:300]}") from exc
        counted = require_quantized(dataclasses.replace(child, path=tmp), method="fp16 (ONNX)", source=art,
                                    applies_to="float weights of ops outside the FP32 list (keep_fp32_ops)")
        check = fidelity_check(art, counted, min_cosine=cfg.min_cosine, name="cast_fidelity",
                               data=ctx.calibration_data)
    return dataclasses.replace(counted, path=final).with_check(check)


@implements(CastConfig, fmt=Format.OPENVINO)
def _cast_openvino(art: Artifact, cfg: CastConfig, ctx: RunContext) -> Artifact:
    """OpenVINO takes the precision as an inference hint at compile time (kept in the artifact's metadata and its
    sidecar); the IR is written anew where the step's output goes, with FP16 weights for ``fp16``."""
    ov = require("openvino", extra="openvino")
    child = art.derive(Step("cast", cfg.to_dict()),
                       meta={"precision": cfg.dtype.value, "inference_precision": cfg.dtype.value})
    final = ctx.output_for(child, ".xml")
    with atomic_path(final) as tmp:
        ov.save_model(ov.Core().read_model(str(art.path)), str(tmp), compress_to_fp16=cfg.dtype is HalfType.FP16)
        check = fidelity_check(art, dataclasses.replace(child, path=tmp), min_cosine=cfg.min_cosine,
                               name="cast_fidelity", data=ctx.calibration_data)
    return dataclasses.replace(child, path=final).with_check(check)
