"""Conversion of ONNX models to OpenVINO IR (FP32 weights unless asked), verified against the source."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from slimforge.convert.verify import verification_cases, verify
from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed, require


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenVinoConvertConfig(Config):
    """ONNX -> OpenVINO IR (``.xml`` + ``.bin``).

    Example:
        >>> OpenVinoConvertConfig().compress_to_fp16
        False
    """

    kind = "convert_openvino"
    compress_to_fp16: bool = False
    atol: float = 1e-4
    rtol: float = 1e-4
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.atol < 0 or self.rtol < 0:
            raise ConfigError("atol and rtol must be >= 0")


@implements(OpenVinoConvertConfig, fmt=Format.ONNX, produces=Format.OPENVINO)
def _convert_openvino(art: Artifact, cfg: OpenVinoConvertConfig, ctx: RunContext) -> Artifact:
    ov = require("openvino", extra="openvino")
    from slimforge.runtimes import open_session

    child = art.derive(Step("convert_openvino", cfg.to_dict()), format=Format.OPENVINO,
                       meta={"precision": "fp16-weights" if cfg.compress_to_fp16 else art.meta.get("precision",
                                                                                                "fp32")})
    final = ctx.output_for(child, ".xml")
    with atomic_path(final) as tmp:
        try:
            ov.save_model(ov.convert_model(str(art.path)), str(tmp), compress_to_fp16=cfg.compress_to_fp16)
        except Exception as exc:
            raise TechniqueFailed(f"OpenVINO cannot convert {art.path.name}: {str(exc).splitlines()[0][:300]}") \
                from exc
        candidate = dataclasses.replace(child, path=tmp)
        ref, cand = open_session(art, "onnxruntime"), open_session(candidate, "openvino")
        tol = 1e-2 if cfg.compress_to_fp16 else cfg.atol
        check = verify(ref.run, cand.run, verification_cases(art), art.io.output_names, atol=tol, rtol=cfg.rtol,
                       name="verify_openvino")
        ref.close()
        cand.close()
    return dataclasses.replace(child, path=final).with_check(check)
