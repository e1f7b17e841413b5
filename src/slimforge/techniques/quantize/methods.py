"""User-facing quantization methods -> the recipe steps that implement them on a given runtime."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from slimforge.core.artifact import Artifact, Format
from slimforge.core.config import Config
from slimforge.errors import ConfigError, UnsupportedModelError


class Method(str, enum.Enum):
    """A user-facing quantization method.

    Example:
        >>> Method.parse("int4").value
        'int4'
    """

    DYNAMIC = "dynamic"
    STATIC = "static"
    FP16 = "fp16"
    BF16 = "bf16"
    INT4 = "int4"
    INT8_WEIGHT = "int8-weight"
    FP8 = "fp8"
    QAT = "qat"

    @classmethod
    def parse(cls, value: Method | str) -> Method:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown method {value!r}; choose one of {[m.value for m in cls]}") from None


RUNTIMES = ("torch", "torch_compile", "onnxruntime", "openvino")


def default_runtime_for(art: Artifact, method: Method) -> str:
    if art.format is Format.OPENVINO:
        return "openvino"
    if art.format is Format.ONNX:
        return "onnxruntime"
    if method is Method.QAT:
        return "torch_compile"
    return "torch" if method in (Method.BF16, Method.FP8) else "onnxruntime"


_CONFIGS = {  # imported only when a step of that kind is made: a command that fails on its input stays fast
    "OpenVinoConvertConfig": "slimforge.convert.openvino", "CastConfig": "slimforge.techniques.quantize.cast",
    "DynamicQuantConfig": "slimforge.techniques.quantize.onnx_dynamic",
    "StaticQuantConfig": "slimforge.techniques.quantize.onnx_static",
    "WeightOnlyConfig": "slimforge.techniques.quantize.weight_only",
}


def _make(name: str, **fields: object) -> Config:
    import importlib

    return getattr(importlib.import_module(_CONFIGS[name]), name)(**fields)


def quantize_steps(art: Artifact, method: Method | str, *, runtime: str, calibration: str = "minmax",
                   per_channel: bool = True, num_samples: int = 128, exclude: tuple[str, ...] = (),
                   min_cosine: float | None = None, max_drop: float | None = None,
                   metric: str = "auto") -> list[Config]:
    """The steps that quantize ``art`` with ``method`` for ``runtime`` (export/convert steps included as needed).

    Example:
        >>> # [s.kind for s in quantize_steps(torch_art, "static", runtime="openvino")]
        >>> # ['export_onnx', 'convert_openvino', 'quantize_static']
    """
    method = Method.parse(method)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    torch_formats = (Format.TORCH, Format.TORCHSCRIPT, Format.TORCH_EXPORT)
    if method is Method.QAT:
        from slimforge.techniques.quantize.qat import QatConfig

        if art.format is not Format.TORCH or runtime not in ("torch", "torch_compile"):
            raise UnsupportedModelError("qat trains a PyTorch model: load the nn.Module and use runtime "
                                        "torch_compile (or torch)")
        return [QatConfig(**({} if min_cosine is None else {"min_cosine": min_cosine}))]
    if method is Method.FP8:
        from slimforge.techniques.quantize.torch_fp8 import Fp8Config

        if art.format is not Format.TORCH or runtime not in ("torch", "torch_compile"):
            raise UnsupportedModelError("fp8 runs PyTorch models on an NVIDIA GPU: load the nn.Module and use "
                                        "runtime torch")
        return [Fp8Config(**({} if min_cosine is None else {"min_cosine": min_cosine}))]

    fid = {} if min_cosine is None else {"min_cosine": min_cosine}
    steps: list[Config] = []
    if runtime in ("torch", "torch_compile"):
        if art.format is not Format.TORCH:
            raise UnsupportedModelError(f"runtime torch needs an in-memory PyTorch model; {art.name} is "
                                        f"{art.format.value}: choose runtime onnxruntime or openvino")
        if method is Method.DYNAMIC:
            return [_make("DynamicQuantConfig", per_channel=per_channel, exclude=exclude, **fid)]
        if method in (Method.FP16, Method.BF16):
            return [_make("CastConfig", dtype=method.value, **fid)]
        if method is Method.STATIC:  # PT2E; fast under torch.compile
            return [_make("StaticQuantConfig", calibration=calibration, per_channel=True, num_samples=num_samples,
                          **fid)]
        raise UnsupportedModelError(f"'{method.value}' for PyTorch is not available; choose runtime "
                                    "onnxruntime or openvino")
    if art.format in torch_formats:
        from slimforge.convert.onnx import ExportConfig

        steps.append(ExportConfig())
    elif art.format is Format.ONNX:  # foreign files: opset, constant weights, shapes first (each pass verified)
        from slimforge.convert.normalize import NormalizeConfig

        steps.append(NormalizeConfig())
    elif art.format is Format.OPENVINO and runtime != "openvino":
        raise UnsupportedModelError(f"{art.name} is OpenVINO IR; it can only be quantized for runtime openvino")
    if runtime == "openvino" and art.format is not Format.OPENVINO:
        steps.append(_make("OpenVinoConvertConfig"))
    if max_drop is not None:
        from slimforge.techniques.quantize.mixed import MixedPrecisionConfig

        if method not in (Method.STATIC, Method.DYNAMIC) or runtime != "onnxruntime":
            raise UnsupportedModelError("an accuracy budget (max_drop) applies to static or dynamic INT8 on "
                                        "onnxruntime")
        text = (art.meta.get("preprocess") or {}).get("kind") == "text"
        steps.append(MixedPrecisionConfig(base=method.value, calibration=calibration, per_channel=per_channel,
                                          max_drop=max_drop, metric=metric, num_samples=num_samples,
                                          op_types=("MatMul",) if text else ()))
        return steps
    if method is Method.DYNAMIC:
        if runtime == "openvino":
            raise UnsupportedModelError("dynamic INT8 is an ONNX Runtime technique; for OpenVINO use static "
                                        "(nncf.quantize) or int8-weight")
        steps.append(_make("DynamicQuantConfig", per_channel=per_channel, exclude=exclude, **fid))
    elif method is Method.STATIC:
        # transformers on ONNX Runtime: quantize the MatMuls only; activations around them (Add, LayerNorm, Softmax)
        # have outliers that per-tensor INT8 cannot hold
        text = (art.meta.get("preprocess") or {}).get("kind") == "text"
        ops = ("MatMul",) if text and runtime == "onnxruntime" else ()
        steps.append(_make("StaticQuantConfig", calibration=calibration, per_channel=per_channel,
                           num_samples=num_samples, op_types=ops, exclude=exclude, **fid))
    elif method in (Method.FP16, Method.BF16):
        steps.append(_make("CastConfig", dtype=method.value, **fid))
    else:
        steps.append(_make("WeightOnlyConfig", bits=4 if method is Method.INT4 else 8, **fid))
    return steps


@dataclass(frozen=True, kw_only=True)
class QuantizeOptions:
    """What ``slimforge.quantize`` is asked for; ``steps`` turns it into the recipe steps for a runtime.

    Example:
        >>> QuantizeOptions(method="static", num_samples=64).method
        <Method.STATIC: 'static'>
    """

    method: Method | str = Method.DYNAMIC
    calibration: str = "minmax"
    per_channel: bool = True
    num_samples: int = 128
    exclude: tuple[str, ...] = ()
    min_cosine: float | None = None
    max_drop: float | None = None
    metric: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Method.parse(self.method))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")

    def steps(self, art: Artifact, runtime: str) -> list[Config]:
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "method"}
        return quantize_steps(art, self.method, runtime=runtime, **kw)
