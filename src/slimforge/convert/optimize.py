"""Graph optimisation of ONNX models (onnxslim, ONNX Runtime offline optimisation), each kept only if it verifies."""

from __future__ import annotations

import dataclasses
import enum
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slimforge.core.artifact import Artifact, Check, Format, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.scratch import scratch_dir
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, VerificationError, require
from slimforge.io.onnx_file import check_onnx_file, copy_onnx
from slimforge.convert.verify import verification_cases, verify

log = logging.getLogger(__name__)


class OrtLevel(str, enum.Enum):
    NONE = "none"
    BASIC = "basic"  # portable: constant folding, redundant node removal
    EXTENDED = "extended"  # ONNX Runtime-specific fused ops (com.microsoft): runs on ONNX Runtime only


@dataclass(frozen=True, kw_only=True, slots=True)
class GraphOptConfig(Config):
    """Graph optimisation passes; each one is verified against its input and dropped if it drifts.

    Example:
        >>> GraphOptConfig(slim=True, ort_level="basic").ort_level.value
        'basic'
    """

    kind = "graph_optimize"
    slim: bool = True
    ort_level: OrtLevel = OrtLevel.BASIC
    atol: float = 1e-4
    rtol: float = 1e-4
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.atol < 0 or self.rtol < 0:
            raise ConfigError("atol and rtol must be >= 0")


@implements(GraphOptConfig, fmt=Format.ONNX)
def _graph_optimize(art: Artifact, cfg: GraphOptConfig, ctx: RunContext) -> Artifact:
    child = art.derive(Step("graph_optimize", cfg.to_dict()))
    final = ctx.output_for(child, ".onnx")
    passes = []
    if cfg.slim:
        passes.append(("onnxslim", _slim))
    if cfg.ort_level is not OrtLevel.NONE:
        passes.append((f"ort_{cfg.ort_level.value}", lambda src, dst: _ort_offline(src, dst, cfg.ort_level)))
    current = art
    checks: list[Check] = []
    kept: list[str] = []
    cases = verification_cases(art)
    work = Path(tempfile.mkdtemp(prefix="graph-passes-", dir=scratch_dir()))
    for i, (name, fn) in enumerate(passes):
        ctx.report_progress("graph optimisation", i, len(passes))
        out = work / f"{child.id}-{name}.onnx"
        try:
            fn(current.path, out)
            check_onnx_file(out)
            candidate = dataclasses.replace(current, path=out)
            checks.append(_verify_onnx(art, candidate, cases, cfg, f"verify_{name}"))
            current = candidate
            kept.append(name)
        except VerificationError as exc:
            log.warning("graph pass %s dropped: %s", name, exc)
            checks.append(Check(f"verify_{name}", False, {}, f"dropped: {exc}"))
        except Exception as exc:  # a pass that crashes is skipped, with the reason recorded
            log.warning("graph pass %s failed: %s", name, exc)
            checks.append(Check(f"{name}", False, {}, f"skipped: {type(exc).__name__}: {str(exc)[:200]}"))
    ctx.report_progress("graph optimisation", len(passes), len(passes))
    with atomic_path(final) as tmp:
        copy_onnx(current.path, tmp)
    shutil.rmtree(work, ignore_errors=True)
    result = dataclasses.replace(child, path=final, meta={**child.meta, "graph_passes": kept})
    for c in checks:
        result = result.with_check(c)
    return result


def _verify_onnx(reference: Artifact, candidate: Artifact, cases, cfg: GraphOptConfig, name: str) -> Check:
    from slimforge.runtimes import open_session

    ref, cand = open_session(reference, "onnxruntime"), open_session(candidate, "onnxruntime")
    try:
        return verify(ref.run, cand.run, cases, reference.io.output_names, atol=cfg.atol, rtol=cfg.rtol, name=name)
    finally:
        ref.close()
        cand.close()


def _slim(src: Path, dst: Path) -> None:
    onnx = require("onnx", extra="onnx")
    onnxslim = require("onnxslim", extra="onnx")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        model = onnxslim.slim(str(src))
    _save(onnx, model, dst)


def _ort_offline(src: Path, dst: Path, level: OrtLevel) -> None:
    ort = require("onnxruntime", extra="onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if level is OrtLevel.BASIC
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _save(onnx, model, dst: Path) -> None:
    big = model.ByteSize() > 1_900_000_000 if hasattr(model, "ByteSize") else False
    onnx.save_model(model, str(dst), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data" if big else None)


