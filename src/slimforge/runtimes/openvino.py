"""OpenVINO runtime (CPU, with a precision hint). Opens OpenVINO IR and ONNX files directly."""

from __future__ import annotations

import importlib.util
from typing import Mapping

import numpy as np

from slimforge.core.artifact import Artifact, Format
from slimforge.errors import ConfigError, ModelLoadError, require
from slimforge.runtimes.base import check_feeds, register_runtime

_PRECISIONS = {None: "f32", "fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}


class OvSession:
    def __init__(self, art: Artifact, compiled: object) -> None:
        self.art = art
        self.compiled = compiled
        self.request = compiled.create_infer_request()  # type: ignore[attr-defined]
        self.input_names = art.io.input_names
        self._n_out = len(compiled.outputs)  # type: ignore[attr-defined]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = check_feeds(self.art, feeds)
        result = self.request.infer(dict(zip(self.input_names, arrays)))
        return [np.asarray(result[self.compiled.outputs[i]]).copy() for i in range(self._n_out)]  # type: ignore

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self.request = None
        self.compiled = None


class OpenVinoRuntime:
    """OpenVINO on CPU. Precision defaults to FP32 (OpenVINO itself would pick BF16 on CPUs that have it); ask for
    ``bf16`` or ``fp16`` explicitly."""

    name = "openvino"
    formats = (Format.OPENVINO, Format.ONNX)

    def available(self) -> bool:
        return importlib.util.find_spec("openvino") is not None

    def devices(self) -> tuple[str, ...]:
        return ("cpu",) if self.available() else ()

    def open(self, art: Artifact, *, device: str = "cpu", threads: int | None = None,
             precision: str | None = None, profiling: bool = False) -> OvSession:
        ov = require("openvino", extra="openvino")
        precision = precision or art.meta.get("inference_precision")  # set by a cast step
        if precision not in _PRECISIONS:
            raise ConfigError(f"openvino precision must be one of fp32, bf16, fp16, got {precision!r}")
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", **({"PERF_COUNT": True} if profiling else {})}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if _PRECISIONS[precision]:
            config["INFERENCE_PRECISION_HINT"] = _PRECISIONS[precision]
        try:
            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(art.path)), "CPU", config)
        except Exception as exc:
            raise ModelLoadError(f"{art.path}: OpenVINO cannot compile it: {str(exc).splitlines()[0][:300]}") from exc
        return OvSession(art, compiled)


register_runtime(OpenVinoRuntime())
