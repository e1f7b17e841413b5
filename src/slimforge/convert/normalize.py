"""Normalising foreign ONNX files before any technique, each pass verified against the original on every output.

- opset upgrade (``onnx.version_converter``) when the file is older than the techniques need (13: per-channel
  QDQ, dynamic quantization of MatMul);
- constant folding: weights that arrive through ``Constant``/``Identity`` nodes (or are computed from constants)
  become initializers, which quantizers require ("Expected ... to be an initializer");
- shape inference: ONNX's, falling back to ONNX Runtime's symbolic inference, and to none (recorded) when both fail.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slimforge.core.artifact import Artifact, Check, Step
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.scratch import scratch_dir
from slimforge.errors import ConfigError, VerificationError, require
from slimforge.io.onnx_file import check_onnx_file, copy_onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class NormalizeConfig(Config):
    """ONNX normalisation.

    Example:
        >>> NormalizeConfig(min_opset=13).fold_constants
        True
    """

    kind = "normalize_onnx"
    min_opset: int = 13
    fold_constants: bool = True
    speed_gate: bool = True  # a pass that makes the model slower on a runtime of ``runtimes`` is dropped
    runtimes: tuple[str, ...] = ("onnxruntime", "openvino")
    infer_shapes: bool = True
    atol: float = 1e-4
    rtol: float = 1e-4
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 7 <= self.min_opset <= 23:
            raise ConfigError(f"min_opset must be between 7 and 23, got {self.min_opset}")


def computed_weights(model: Any) -> list[str]:
    """Conv/ConvTranspose/Gemm/MatMul nodes whose weight (input 1) is not an initializer: produced by another node
    (Constant, Identity, a Transpose of a constant, ...)."""
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    out = []
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1:
            w = n.input[1]
            if w and w not in inits and w not in graph_inputs:
                out.append(n.name or f"{n.op_type}:{n.output[0]}")
    return out


def _upgrade(onnx: Any, src: Path, dst: Path, target: int) -> None:
    from onnx import version_converter

    model = onnx.load(str(src))
    converted = version_converter.convert_version(model, target)
    onnx.save_model(converted, str(dst))


def _constants_to_initializers(onnx: Any, src: Path, dst: Path) -> None:
    """Constant -> initializer, Identity-of-initializer -> the initializer, then fold what is computed from them
    (ONNX Runtime's basic level: constant folding, portable ops only)."""
    from onnx import numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    rename: dict[str, str] = {}
    keep = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            attr = {a.name: a for a in n.attribute}
            if "value" in attr:
                t = onnx.TensorProto()
                t.CopyFrom(attr["value"].t)
                t.name = n.output[0]
                g.initializer.append(t)
                inits[t.name] = t
                continue
            for key, value in (("value_float", lambda a: np.asarray(a.f, dtype=np.float32)),
                               ("value_int", lambda a: np.asarray(a.i, dtype=np.int64)),
                               ("value_floats", lambda a: np.asarray(list(a.floats), dtype=np.float32)),
                               ("value_ints", lambda a: np.asarray(list(a.ints), dtype=np.int64))):
                if key in attr:
                    t = numpy_helper.from_array(value(attr[key]), name=n.output[0])
                    g.initializer.append(t)
                    inits[t.name] = t
                    break
            else:
                keep.append(n)
            continue
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in {o.name for o in g.output}:
            rename[n.output[0]] = n.input[0]
            continue
        keep.append(n)
    for n in keep:
        for i, name in enumerate(n.input):
            while name in rename:
                name = rename[name]
            n.input[i] = name
    used = {n.name for n in keep if n.name}
    for i, n in enumerate(keep):  # unnamed nodes get names, so that a search can keep them in float by name
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)
    del g.node[:]
    g.node.extend(keep)
    onnx.save_model(model, str(dst))
    ort = require("onnxruntime", extra="onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])


def _shapes(onnx: Any, src: Path, dst: Path) -> str:
    """ONNX shape inference, else ONNX Runtime's symbolic inference; returns which one worked."""
    model = onnx.load(str(src))
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        onnx.save_model(inferred, str(dst))
        return "onnx"
    except Exception as exc:  # noqa: BLE001 - fall back to the symbolic engine
        log.info("onnx shape inference failed (%s); trying symbolic inference", exc)
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    if inferred is None:
        raise RuntimeError("symbolic shape inference gave no model")
    onnx.save_model(inferred, str(dst))
    return "symbolic"


PassJudge = Callable[[Artifact, Artifact, str], "Check | None"]


def normalize_onnx(art: Artifact, cfg: NormalizeConfig, ctx: RunContext, *, judge: PassJudge | None = None
                   ) -> Artifact:
    """Run the passes; each is kept when it verifies and ``judge(before, after, name)`` (the speed gate: a failing
    check drops the pass) does not object."""
    from slimforge.convert.optimize import _verify_onnx
    from slimforge.convert.verify import verification_cases

    onnx = require("onnx", extra="onnx")
    child = art.derive(Step("normalize_onnx", cfg.to_dict()))
    final = ctx.output_for(child, ".onnx")
    model = onnx.load(str(art.path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    computed = computed_weights(model)
    passes: list[tuple[str, Any]] = []
    if opset and opset < cfg.min_opset:
        passes.append((f"opset_{opset}_to_{cfg.min_opset}", lambda s, d: _upgrade(onnx, s, d, cfg.min_opset)))
    if cfg.fold_constants:
        passes.append(("fold_constants", lambda s, d: _constants_to_initializers(onnx, s, d)))
    if cfg.infer_shapes:
        passes.append(("infer_shapes", lambda s, d: _shapes(onnx, s, d)))
    work = Path(tempfile.mkdtemp(prefix="normalize-", dir=scratch_dir()))
    cases = verification_cases(art)
    current, kept, checks = art, [], []
    gcfg = dataclasses.replace(_GraphTol(), atol=cfg.atol, rtol=cfg.rtol)
    for i, (name, fn) in enumerate(passes):
        ctx.report_progress("normalise", i, len(passes))
        out = work / f"{child.id}-{name}.onnx"
        try:
            how = fn(current.path, out)
            check_onnx_file(out)
            candidate = dataclasses.replace(current, path=out)
            check = _verify_onnx(art, candidate, cases, gcfg, f"verify_{name}")
            if how:
                check = dataclasses.replace(check, detail=f"{check.detail} ({how} shape inference)")
            checks.append(check)
            speed = judge(current, candidate, name) if judge is not None else None
            if speed is not None:
                checks.append(speed)
                if not speed.passed:
                    continue
            current = candidate
            kept.append(name)
        except VerificationError as exc:
            checks.append(Check(f"verify_{name}", False, {}, f"dropped: {exc}"))
        except Exception as exc:  # noqa: BLE001 - a pass that cannot run is skipped, and says why
            checks.append(Check(name, False, {}, f"skipped: {type(exc).__name__}: {str(exc)[:200]}"))
    ctx.report_progress("normalise", len(passes), len(passes))
    with atomic_path(final) as tmp:
        copy_onnx(current.path, tmp)
    shutil.rmtree(work, ignore_errors=True)
    after = onnx.load(str(final), load_external_data=False)
    new_opset = next((o.version for o in after.opset_import if o.domain in ("", "ai.onnx")), 0)
    result = dataclasses.replace(child, path=final, meta={
        **child.meta, "normalized": kept, "opset": new_opset,
        "computed_weights_before": len(computed), "computed_weights_after": len(computed_weights(after))})
    for c in checks:
        result = result.with_check(c)
    return result


@dataclass(frozen=True)
class _GraphTol:
    atol: float = 1e-4
    rtol: float = 1e-4
