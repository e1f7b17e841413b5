"""FP8 (E4M3) dynamic activation + weight quantization of Linear layers on NVIDIA GPUs.

Two backends. ``scaled_mm`` (the default): weights quantized once (per output channel, or per tensor), activations
per row (or per tensor) at each call by a quantization function that Inductor compiles into one kernel, and the
matmul is ``torch._scaled_mm`` (cuBLAS / CUTLASS FP8 GEMMs) with the bias fused, BF16 out. ``torchao``: torchao
float8 tensors; on torch 2.11 with torchao 0.17 its eager path ran at half bf16's speed on an H200 (4096x4096 MLP)
and compiling it did not finish in 80 s, while ``scaled_mm`` was 1.12x faster than bf16 (benchmarks/gpu_vision.py).

Needs a GPU of compute capability >= 8.9 (Ada, Hopper, Blackwell); elsewhere it refuses with a clear error, so a
search on CPU skips it. The module runs in BF16 around the FP8 matmuls, and takes and returns FP32 tensors.
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
from slimforge.errors import NothingQuantized, TechniqueFailed, UnsupportedModelError, require
from slimforge.evaluation.fidelity import fidelity_check


class Granularity(str, enum.Enum):
    ROW = "row"  # one scale per row of activations and per output channel of weights
    TENSOR = "tensor"


class Backend(str, enum.Enum):
    SCALED_MM = "scaled_mm"
    TORCHAO = "torchao"


@dataclass(frozen=True, kw_only=True, slots=True)
class Fp8Config(Config):
    """FP8 on GPU.

    Example:
        >>> Fp8Config(granularity="tensor").granularity.value
        'tensor'
    """

    kind = "fp8"
    granularity: Granularity = Granularity.ROW
    backend: Backend = Backend.SCALED_MM
    min_cosine: float = 0.99
    version: int = 2

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_unit("min_cosine", self.min_cosine)


def fp8_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


E4M3 = torch.float8_e4m3fn
_FMAX = 448.0  # the largest finite E4M3 value


def quantize_fp8(x: torch.Tensor, rowwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (2-D) as E4M3 and its FP32 scale (one per row, shape (rows, 1), or one for the tensor): x ~ q * s."""
    amax = x.abs().amax(dim=-1, keepdim=True) if rowwise else x.abs().amax().reshape(1, 1)
    scale = amax.float().clamp(min=1e-12) / _FMAX
    return (x.float() / scale).clamp(-_FMAX, _FMAX).to(E4M3), scale


_COMPILED: dict[bool, object] = {}


def _quantizer(rowwise: bool):
    """The activation quantization as one fused kernel (compiled once per process); plain torch inside a larger
    compile or export, where the enclosing graph fuses it with the op before."""
    if torch.compiler.is_compiling():
        return lambda x: quantize_fp8(x, rowwise)
    fn = _COMPILED.get(rowwise)
    if fn is None:
        fn = _COMPILED[rowwise] = torch.compile(lambda x: quantize_fp8(x, rowwise), dynamic=None)
    return fn


class Fp8Linear(torch.nn.Module):
    """A Linear layer as an FP8 GEMM: E4M3 weights (scales per output channel, or per tensor) and activations
    quantized at each call; ``torch._scaled_mm`` with the bias fused, BF16 out."""

    def __init__(self, lin: torch.nn.Linear, rowwise: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rowwise = lin.in_features, lin.out_features, rowwise
        q, s = quantize_fp8(lin.weight.detach(), rowwise)
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", s.reshape(1, -1) if rowwise else s.reshape(()))
        self.register_buffer("bias", None if lin.bias is None else lin.bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        if m % 16:  # FP8 GEMMs take row counts in multiples of 16: pad a few zero rows, slice them off after
            x2 = torch.nn.functional.pad(x2, (0, 0, 0, 16 - m % 16))
        xq, sx = _quantizer(self.rowwise)(x2)
        y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=sx if self.rowwise else sx.reshape(()),
                             scale_b=self.weight_scale, bias=self.bias, out_dtype=torch.bfloat16)
        return y[:m].reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {'rowwise' if self.rowwise else 'tensorwise'}"


def _swap_linears(module: torch.nn.Module, eligible, rowwise: bool, prefix: str = "") -> None:  # noqa: ANN001
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if eligible(child, full):
            setattr(module, name, Fp8Linear(child, rowwise))
        else:
            _swap_linears(child, eligible, rowwise, full)


class Fp8Module(torch.nn.Module):
    """Runs the quantized module on its GPU in BF16; moves inputs there and returns FP32 on the caller's device."""

    def __init__(self, inner: torch.nn.Module, device: torch.device, min_rows: int = 0, pad: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.device = device
        self.pad = pad  # torchao's GEMMs need padded batches; Fp8Linear pads its own rows
        self.min_rows = min_rows  # torch._int_mm (INT8) needs more than 16 rows
        self.dtype = torch.bfloat16  # what an engine file casts inputs to

    def forward(self, *xs: torch.Tensor):
        where = xs[0].device if xs else self.device
        args = [x.to(self.device, torch.bfloat16) if x.is_floating_point() else x.to(self.device) for x in xs]
        args, batch = _pad_rows(args, self.min_rows) if self.pad else (args, args[0].shape[0] if args else None)
        out = self.inner(*args)
        if isinstance(out, torch.Tensor):
            return out[:batch].float().to(where)
        return tuple((o[:batch].float() if o.is_floating_point() else o[:batch]).to(where) for o in out)


def _pad_rows(xs: list[torch.Tensor], min_rows: int = 0) -> tuple[list[torch.Tensor], int | None]:
    """cuBLAS FP8 matmuls need the row count (batch x positions) to be a multiple of 16: pad the batch with zeros
    (outputs are sliced back). Examples do not interact in eval mode, so padding changes no real output."""
    import math

    if not xs or xs[0].ndim < 2:
        return xs, None
    batch = xs[0].shape[0]
    rows = math.prod(xs[0].shape[1:-1]) if xs[0].ndim > 2 else 1
    step = 16 // math.gcd(rows, 16)
    padded = -(-max(batch, -(-min_rows // rows)) // step) * step
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
    from slimforge.torch_utils import set_training, without_fused_fastpaths

    device = torch.device("cuda")
    module = copy.deepcopy(art.handle).to(device, torch.bfloat16)
    set_training(module, False)

    def eligible(m: torch.nn.Module, _: str) -> bool:
        # exactly nn.Linear: subclasses such as MultiheadAttention's out_proj are used through their raw weight,
        # which FP8 tensors do not support under torch.compile; _scaled_mm needs both dims divisible by 16
        return type(m) is torch.nn.Linear and m.in_features % 16 == 0 and m.out_features % 16 == 0

    n = sum(1 for name, m in module.named_modules() if eligible(m, name))
    if n == 0:
        raise NothingQuantized("nothing was quantized: fp8 applies to Linear layers with sizes divisible by 16; "
                               "this model has none")
    rowwise = cfg.granularity is Granularity.ROW
    try:
        if cfg.backend is Backend.SCALED_MM:
            _swap_linears(module, eligible, rowwise)
            without_fused_fastpaths(module)
        else:
            require("torchao", extra="torch")
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

            quantize_(module, Float8DynamicActivationFloat8WeightConfig(
                granularity=PerRow() if rowwise else PerTensor()), filter_fn=eligible)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise TechniqueFailed(f"fp8 ({cfg.backend.value}) failed on {art.name}: {str(exc).splitlines()[0][:300]}"
                              ) from exc
    placed = Fp8Module(module, device, pad=cfg.backend is Backend.TORCHAO)
    child = art.derive(Step("fp8", cfg.to_dict()), handle=placed, path=None,
                       meta={"precision": "fp8", "device": "cuda", "quantized_layers": n})
    return child.with_check(fidelity_check(art, child, min_cosine=cfg.min_cosine, name="quant_fidelity",
                                           data=ctx.calibration_data))
