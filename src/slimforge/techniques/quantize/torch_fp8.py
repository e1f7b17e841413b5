"""FP8 (E4M3) dynamic activation + weight quantization of Linear layers on NVIDIA GPUs, through torchao float8.

Needs a GPU of compute capability >= 8.9 (Ada, Hopper, Blackwell); elsewhere it refuses with a clear error, so a
search on CPU skips it. The module runs in BF16 around the FP8 matmuls, and takes and returns FP32 tensors.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass

import torch

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, NothingQuantized, TechniqueFailed, UnsupportedModelError, require
from slimforge.evaluation.fidelity import fidelity_check


class Granularity(str, enum.Enum):
    ROW = "row"  # one scale per row of activations and per output channel of weights
    TENSOR = "tensor"


@dataclass(frozen=True, kw_only=True, slots=True)
class Fp8Config(Config):
    """FP8 on GPU.

    Example:
        >>> Fp8Config(granularity="tensor").granularity.value
        'tensor'
    """

    kind = "fp8"
    granularity: Granularity = Granularity.ROW
    min_cosine: float = 0.99
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 0.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"min_cosine must be in [0, 1], got {self.min_cosine}")


def fp8_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


class Fp8Module(torch.nn.Module):
    """Runs the quantized module on its GPU in BF16; moves inputs there and returns FP32 on the caller's device."""

    def __init__(self, inner: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.inner = inner
        self.device = device

    def forward(self, *xs: torch.Tensor):
        where = xs[0].device if xs else self.device
        args = [x.to(self.device, torch.bfloat16) if x.is_floating_point() else x.to(self.device) for x in xs]
        args, batch = _pad_rows(args)
        out = self.inner(*args)
        if isinstance(out, torch.Tensor):
            return out[:batch].float().to(where)
        return tuple((o[:batch].float() if o.is_floating_point() else o[:batch]).to(where) for o in out)


def _pad_rows(xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], int | None]:
    """cuBLAS FP8 matmuls need the row count (batch x positions) to be a multiple of 16: pad the batch with zeros
    (outputs are sliced back). Examples do not interact in eval mode, so padding changes no real output."""
    import math

    if not xs or xs[0].ndim < 2:
        return xs, None
    batch = xs[0].shape[0]
    rows = math.prod(xs[0].shape[1:-1]) if xs[0].ndim > 2 else 1
    step = 16 // math.gcd(rows, 16)
    padded = -(-batch // step) * step
    if padded == batch:
        return xs, batch
    out = []
    for x in xs:
        if x.ndim >= 1 and x.shape[0] == batch:
            x = torch.cat([x, x.new_zeros((padded - batch, *x.shape[1:]))])
        out.append(x)
    return out, batch


@implements(Fp8Config, fmt=Format.TORCH)
def _fp8_torch(art: Artifact, cfg: Fp8Config, ctx: RunContext) -> Artifact:
    if not fp8_supported():
        raise UnsupportedModelError("FP8 needs an NVIDIA GPU of compute capability >= 8.9 (Ada, Hopper); none "
                                    "is present here")
    require("torchao", extra="torch")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    from slimforge.torch_utils import set_training

    device = torch.device("cuda")
    module = copy.deepcopy(art.handle).to(device, torch.bfloat16)
    set_training(module, False)

    def eligible(m: torch.nn.Module, _: str) -> bool:
        # exactly nn.Linear: subclasses such as MultiheadAttention's out_proj are used through their raw weight,
        # which FP8 tensors do not support under torch.compile; _scaled_mm needs both dims divisible by 16
        return type(m) is torch.nn.Linear and m.in_features % 16 == 0 and m.out_features % 16 == 0

    n = sum(1 for name, m in module.named_modules() if eligible(m, name))
    if n == 0:
        raise NothingQuantized("nothing was quantized: fp8 (torchao float8) applies to Linear layers with sizes "
                               "divisible by 16; this model has none")
    granularity = PerRow() if cfg.granularity is Granularity.ROW else PerTensor()
    try:
        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=granularity), filter_fn=eligible)
    except Exception as exc:
        raise TechniqueFailed(f"torchao float8 failed on {art.name}: {str(exc).splitlines()[0][:300]}") from exc
    child = art.derive(Step("fp8", cfg.to_dict()), handle=Fp8Module(module, device), path=None,
                       meta={"precision": "fp8", "device": "cuda", "quantized_layers": n})
    return child.with_check(fidelity_check(art, child, min_cosine=cfg.min_cosine, name="quant_fidelity",
                                           data=ctx.calibration_data))
