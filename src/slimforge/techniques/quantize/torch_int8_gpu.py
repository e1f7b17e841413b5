"""INT8 on NVIDIA GPUs through torchao: dynamic activation + weight INT8 (``torch._int_mm`` GEMMs) or INT8 weights
only (half the weight bytes of bf16: what pays when decoding-style small batches are memory-bound).

The module runs in BF16 around the INT8 matmuls on its GPU and takes and returns FP32 tensors; torchao's own
guidance is to compile it (the search pairs it with the gpu step's ``torch.compile``). Kept by the search only where
it is measured faster than bf16 and FP32.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass

import torch

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, check_unit, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import NothingQuantized, TechniqueFailed, require
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.techniques.quantize.torch_fp8 import Fp8Module


class Int8Mode(str, enum.Enum):
    DYNAMIC = "dynamic"  # INT8 activations (per token) and weights (per channel)
    WEIGHT = "weight"  # INT8 weights, BF16 activations


@dataclass(frozen=True, kw_only=True, slots=True)
class Int8GpuConfig(Config):
    """INT8 Linear layers on a GPU (torchao).

    Example:
        >>> Int8GpuConfig(mode="weight").describe()
        'int8 weight-only (torchao)'
    """

    kind = "int8_gpu"
    mode: Int8Mode = Int8Mode.DYNAMIC
    min_cosine: float = 0.99
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_unit("min_cosine", self.min_cosine)

    def describe(self) -> str:
        return "int8 " + ("dynamic" if self.mode is Int8Mode.DYNAMIC else "weight-only") + " (torchao)"


@implements(Int8GpuConfig, fmt=Format.TORCH)
def _int8_gpu(art: Artifact, cfg: Int8GpuConfig, ctx: RunContext) -> Artifact:
    from slimforge.techniques.gpu import cuda_required
    from slimforge.torch_utils import set_training

    cuda_required("INT8 on the GPU")
    require("torchao", extra="torch")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    device = torch.device("cuda")
    module = copy.deepcopy(art.handle).to(device, torch.bfloat16)
    set_training(module, False)

    def eligible(m: torch.nn.Module, _: str) -> bool:  # exactly nn.Linear (see torch_fp8), sizes the GEMMs take
        return type(m) is torch.nn.Linear and m.in_features % 16 == 0 and m.out_features % 16 == 0

    n = sum(1 for name, m in module.named_modules() if eligible(m, name))
    if n == 0:
        raise NothingQuantized("nothing was quantized: INT8 on the GPU applies to Linear layers with sizes "
                               "divisible by 16; this model has none")
    qcfg = Int8DynamicActivationInt8WeightConfig() if cfg.mode is Int8Mode.DYNAMIC else Int8WeightOnlyConfig()
    try:
        quantize_(module, qcfg, filter_fn=eligible)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        raise TechniqueFailed(f"{cfg.describe()} failed on {art.name}: {str(exc).splitlines()[0][:300]}") from exc
    child = art.derive(Step("int8_gpu", cfg.to_dict()), handle=Fp8Module(module, device, min_rows=17), path=None,
                       meta={"precision": "int8", "device": "cuda", "quantized_layers": n})
    return child.with_check(fidelity_check(art, child, min_cosine=cfg.min_cosine, name="quant_fidelity",
                                           data=ctx.calibration_data))
