"""ONNX Runtime (CPU; CUDA where the GPU build is installed)."""

from __future__ import annotations

import os

import importlib.util
from typing import Mapping

import numpy as np

from slimforge.core.artifact import Artifact, Format
from slimforge.errors import ModelLoadError, require
from slimforge.runtimes.base import check_feeds, register_runtime


class OrtSession:
    def __init__(self, art: Artifact, sess: object) -> None:
        self.art = art
        self.sess = sess
        self.input_names = art.io.input_names
        self._onnx_inputs = [i.name for i in sess.get_inputs()]  # type: ignore[attr-defined]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = check_feeds(self.art, feeds)
        named = dict(zip(self.input_names, arrays))
        return self.sess.run(None, {n: named[n] for n in self._onnx_inputs})  # type: ignore[attr-defined]

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self.sess = None


class OrtRuntime:
    name = "onnxruntime"
    formats = (Format.ONNX,)

    def available(self) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def devices(self) -> tuple[str, ...]:
        if not self.available():
            return ()
        ort = require("onnxruntime", extra="onnx")
        return ("cpu", "cuda") if "CUDAExecutionProvider" in ort.get_available_providers() else ("cpu",)

    def open(self, art: Artifact, *, device: str = "cpu", threads: int | None = None,
             precision: str | None = None, profiling: bool = False) -> OrtSession:
        ort = require("onnxruntime", extra="onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if profiling:  # per-node kernel times and shapes, written by end_profiling() into the run's scratch folder
            from slimforge.core.scratch import scratch_dir

            so.enable_profiling = True
            so.profile_file_prefix = str(scratch_dir() / "ort-profile")
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        if os.environ.get("SLIMFORGE_ORT_SPIN", "1") == "0":  # servers: idle workers must not spin-wait on cores
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(str(art.path), so, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"{art.path}: ONNX Runtime cannot open it: {str(exc).splitlines()[0][:300]}") from exc
        return OrtSession(art, sess)


register_runtime(OrtRuntime())
