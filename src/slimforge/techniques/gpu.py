"""Running a PyTorch model well on an NVIDIA GPU: precision (TF32, FP16, BF16), memory format (channels_last),
``torch.compile`` (with CUDA graphs for small batches), and attention kept as one fused kernel under compile.

The result is a module that lives on the GPU: it takes inputs on any device (moving them with non-blocking copies)
and returns FP32 tensors on the GPU, so timing and serving stay device-resident; ``io.engine`` writes it as an
AOTInductor package. Every variant verifies itself against the FP32 model on the same GPU.
"""

from __future__ import annotations

import contextlib
import copy
import enum
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, check_unit, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed, UnsupportedModelError
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.torch_utils import Placed, fp32_precision, outputs_to_list


class GpuDtype(str, enum.Enum):
    FP32 = "fp32"
    TF32 = "tf32"  # fp32 weights, TensorFloat-32 matmuls and convolutions
    FP16 = "fp16"
    BF16 = "bf16"
    KEEP = "keep"  # the model's own (e.g. after fp8)


class CompileMode(str, enum.Enum):
    NONE = "none"
    DEFAULT = "default"
    GRAPHS = "reduce-overhead"  # Inductor plus CUDA graphs: removes launch overhead at small batches


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuConfig(Config):
    """A model placed for the GPU.

    Example:
        >>> GpuConfig(dtype="bf16", compile="reduce-overhead").compile.value
        'reduce-overhead'
    """

    kind = "gpu"
    dtype: GpuDtype = GpuDtype.BF16
    channels_last: bool = False
    compile: CompileMode = CompileMode.NONE
    fused_attention: bool = False  # under compile, attention stays one opaque fused (flash) kernel
    min_cosine: float = 0.99
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_unit("min_cosine", self.min_cosine)
        if self.fused_attention and self.compile is CompileMode.NONE:
            raise ConfigError("fused_attention applies under compile; set compile to default or reduce-overhead")

    def describe(self) -> str:
        parts = [self.dtype.value] + (["channels_last"] if self.channels_last else [])
        if self.compile is not CompileMode.NONE:
            parts.append("compile" + (" + CUDA graphs" if self.compile is CompileMode.GRAPHS else ""))
        return " + ".join(parts) + (", attention fused" if self.fused_attention else "")


_DTYPES = {GpuDtype.FP16: torch.float16, GpuDtype.BF16: torch.bfloat16}
_REAL_SDPA = torch.nn.functional.scaled_dot_product_attention


@torch.library.custom_op("slimforge::sdpa", mutates_args=())
def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
          dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None) -> torch.Tensor:
    return _REAL_SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                      scale=scale).contiguous()


@_sdpa.register_fake
def _sdpa_fake(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):  # noqa: ANN001
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _opaque_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_: Any):  # noqa: ANN001
    return _sdpa(q, k, v, attn_mask, float(dropout_p), bool(is_causal), scale)


@contextlib.contextmanager
def fused_attention(on: bool) -> Iterator[None]:
    """While on, ``F.scaled_dot_product_attention`` is an opaque custom op: Inductor cannot decompose it, so the
    flash/efficient kernel runs as it does in eager mode."""
    if not on:
        yield
        return
    F = torch.nn.functional
    F.scaled_dot_product_attention = _opaque_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _REAL_SDPA


class GpuModule(nn.Module):
    """The placed model: moves inputs to its GPU and runs ``Placed(inner)`` (compiled where set, so the input casts
    and the FP32 outputs are inside the compiled graph and its CUDA graph), returning FP32 tensors on the GPU. FP32
    runs in IEEE precision unless the dtype is TF32."""

    def __init__(self, inner: nn.Module, cfg: GpuConfig, device: torch.device, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.inner = inner
        self.device = device
        self.dtype = dtype
        self.channels_last = cfg.channels_last
        self.tf32 = cfg.dtype is GpuDtype.TF32
        self.fused = cfg.fused_attention
        self.graphs = cfg.compile is CompileMode.GRAPHS
        placed = Placed(inner, dtype, cfg.channels_last).eval()
        if cfg.compile is not CompileMode.NONE:
            _room_for_graphs()
        # kept out of the registered submodules: the weights are ``inner``'s, once. One static graph per input
        # shape (a server's few batch sizes): a CUDA graph replays one shape, and dynamic shapes cost speed
        self.__dict__["runner"] = placed if cfg.compile is CompileMode.NONE else torch.compile(
            placed, mode=None if cfg.compile is CompileMode.DEFAULT else cfg.compile.value, dynamic=False)
        self.eval()

    def forward(self, *xs: torch.Tensor):
        args = [x.to(self.device, non_blocking=True) for x in xs]
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with fp32_precision(self.tf32), fused_attention(self.fused):
            out = outputs_to_list(self.runner(*args))
        if self.graphs:  # a CUDA graph overwrites its outputs on the next replay
            out = [o.clone() for o in out]
        return out[0] if len(out) == 1 else tuple(out)


def _room_for_graphs(per_process: int = 256) -> None:
    """Every placed model runs the same ``Placed.forward`` code object, and Dynamo counts one model at one shape as
    one recompile of it: past its default limit (8) every further model silently ran eager (a search compiles a
    dozen variants at several batch sizes). Raised for this process."""
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "accumulated_recompile_limit"):
        if getattr(dc, name, per_process) < per_process:
            setattr(dc, name, per_process)


def cuda_required(what: str) -> None:
    if not torch.cuda.is_available():
        raise UnsupportedModelError(f"{what} needs an NVIDIA GPU with CUDA; this machine has none (use a cpu target)")


@implements(GpuConfig, fmt=Format.TORCH)
def _gpu_torch(art: Artifact, cfg: GpuConfig, ctx: RunContext) -> Artifact:
    cuda_required("the gpu technique")
    from slimforge.torch_utils import set_training

    device = torch.device("cuda")
    pinned = art.meta.get("device") == "cuda"  # already placed (fp8): only compile it
    if pinned and cfg.dtype is not GpuDtype.KEEP:
        raise ConfigError(f"{art.name} is already placed on the GPU as {art.meta.get('precision')}; use dtype=keep")
    inner = art.handle if pinned else copy.deepcopy(art.handle)
    dtype = _DTYPES.get(cfg.dtype)
    if not pinned:
        set_training(inner, False)
        inner = inner.to(device)
        if dtype is not None:
            inner = inner.to(dtype)
        if cfg.channels_last:
            if not any(isinstance(m, nn.Conv2d) for m in inner.modules()):
                raise ConfigError(f"channels_last applies to convolutional nets; {art.name} has no Conv2d")
            inner = inner.to(memory_format=torch.channels_last)
    module = GpuModule(inner, cfg, device, dtype)
    precision = str(art.meta.get("precision")) if pinned else cfg.dtype.value
    child = art.derive(Step("gpu", cfg.to_dict()), handle=module, path=None,
                       meta={"precision": precision, "device": "cuda", "gpu": cfg.describe()})
    reference = art if pinned else art.derive(Step("gpu", {"kind": "gpu", "dtype": "fp32"}), path=None,
                                              handle=GpuModule(copy.deepcopy(art.handle).eval().to(device),
                                                               GpuConfig(dtype="fp32"), device, None),
                                              meta={"device": "cuda"})
    try:
        check = fidelity_check(reference, child, min_cosine=cfg.min_cosine, name="gpu_fidelity",
                               data=ctx.calibration_data)
    except (RuntimeError, TypeError, ValueError) as exc:  # Inductor and CUDA errors surface here, at first run
        raise TechniqueFailed(f"{cfg.describe()} failed on {art.name}: {str(exc).strip().splitlines()[0][:300]}") \
            from exc
    finally:
        if reference is not art:
            reference.handle.inner = reference.handle.__dict__["runner"] = None  # its memory back before timing
    return child.with_check(check)
