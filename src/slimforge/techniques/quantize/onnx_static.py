"""Static INT8 (QDQ) quantization of ONNX models with ONNX Runtime: MinMax, Entropy or Percentile calibration.

Calibration streams the data in chunks; after each chunk the calibrator folds what it saw into running ranges or
histograms and drops the activations, so memory does not grow with the number of samples. The ranges go through
ONNX Runtime's calibration cache into ``quantize_static``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slimforge.core.artifact import Artifact, Format, Step
from slimforge.core.config import Config, check_unit, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.registry import implements
from slimforge.core.scratch import child_env, die_with_parent, scratch_dir
from slimforge.errors import ConfigError, TechniqueFailed, require
from slimforge.evaluation.fidelity import fidelity_check
from slimforge.techniques.quantize.calibration import Calibration, calibration_feeds
from slimforge.techniques.quantize.coverage import require_quantized

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class StaticQuantConfig(Config):
    """Static INT8: weights and activations quantized with ranges calibrated on data.

    Example:
        >>> StaticQuantConfig(calibration="entropy").calibration.value
        'entropy'
    """

    kind = "quantize_static"
    calibration: Calibration = Calibration.MINMAX
    per_channel: bool = True
    num_samples: int = 128
    percentile: float = 99.999
    exclude: tuple[str, ...] = ()  # node names kept in float
    op_types: tuple[str, ...] = ()  # empty: ONNX Runtime's default set
    min_cosine: float = 0.98
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in [90, 100], got {self.percentile}")
        check_unit("min_cosine", self.min_cosine)


_CHUNK = 16


@implements(StaticQuantConfig, fmt=Format.ONNX)
def _quantize_static_onnx(art: Artifact, cfg: StaticQuantConfig, ctx: RunContext) -> Artifact:
    child = art.derive(Step("quantize_static", cfg.to_dict()),
                       meta={"precision": "int8-static", "calibration": cfg.calibration.value})
    final = ctx.output_for(child, ".onnx")
    with tempfile.TemporaryDirectory(prefix="calib-", dir=scratch_dir()) as tmp:
        src, cache, seen = calibrate(art, cfg, ctx, Path(tmp))
        with atomic_path(final) as out:
            write_static(art, src, out, cfg, cache, exclude=cfg.exclude)
            counted = require_quantized(
                dataclasses.replace(child, path=out), method="static INT8 (ONNX Runtime, QDQ)", source=art,
                applies_to=", ".join(cfg.op_types) if cfg.op_types else "Conv, MatMul, Gemm and the ops between them")
            check = fidelity_check(art, counted, min_cosine=cfg.min_cosine, name="quant_fidelity",
                                   data=ctx.calibration_data)
    return dataclasses.replace(counted, path=final, meta={**counted.meta, "calibration_samples": seen}
                               ).with_check(check)


def calibrate(art: Artifact, cfg: StaticQuantConfig, ctx: RunContext, tmpdir: Path) -> tuple[Path, Path, int]:
    """Pre-process the model and compute activation ranges once, streaming the data in padded batches.

    Returns the pre-processed model, ONNX Runtime's calibration cache (JSON), and the number of samples seen. The
    cache can quantize the same model many times (different excluded nodes) without calibrating again.
    """
    require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    src = _preprocess(art.path, tmpdir / "pre.onnx")
    options = {"percentile": cfg.percentile} if cfg.calibration is Calibration.PERCENTILE else {}
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator = create_calibrator(src, list(cfg.op_types) or None,
                                       augmented_model_path=str(tmpdir / "augmented.onnx"),
                                       calibrate_method=_method(cfg), extra_options=options,
                                       use_external_data_format=art.size_bytes() > 1_900_000_000)
    seen = 0
    # one padded batch of _CHUNK examples at a time: histogram calibrators need equal shapes within a call
    feeds = calibration_feeds(ctx, num_samples=cfg.num_samples, input_names=art.io.input_names, batch_size=_CHUNK)
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress lines of its own
        for batch in feeds:
            calibrator.collect_data(_Reader([batch]))
            calibrator.clear_collected_data()  # ranges/histograms are folded in; drop the activations
            seen += len(next(iter(batch.values())))
            ctx.report_progress(f"calibrate ({cfg.calibration.value})", seen, cfg.num_samples)
        ranges = calibrator.compute_data()
    cache = tmpdir / "calibration.json"
    save_tensors_data(ranges, cache)
    return src, cache, seen


def write_static(art: Artifact, src: Path, out: Path, cfg: StaticQuantConfig, cache: Path, *,
                 exclude: tuple[str, ...] | list[str]) -> None:
    """Write the QDQ model for ``src`` using calibrated ranges from ``cache``; ``exclude`` nodes stay in float."""
    q = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            q.quantize_static(str(src), str(out), None, quant_format=q.QuantFormat.QDQ,
                              per_channel=cfg.per_channel, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, nodes_to_exclude=list(exclude),
                              op_types_to_quantize=list(cfg.op_types) or None, calibrate_method=_method(cfg),
                              calibration_cache_path=str(cache),
                              use_external_data_format=art.size_bytes() > 1_900_000_000)
    except Exception as exc:
        raise TechniqueFailed(f"ONNX Runtime static quantization failed on {art.name}: "
                              f"{str(exc).splitlines()[0][:300]}") from exc


def _method(cfg: StaticQuantConfig):
    q = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    return {Calibration.MINMAX: q.CalibrationMethod.MinMax, Calibration.ENTROPY: q.CalibrationMethod.Entropy,
            Calibration.PERCENTILE: q.CalibrationMethod.Percentile}[cfg.calibration]


class _Reader:
    """A CalibrationDataReader over one chunk of feeds."""

    def __init__(self, chunk: list[dict]) -> None:
        self._it = iter(chunk)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it in some code paths
        pass


def _preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (symbolic shape inference, graph optimisation, shape inference).

    It runs in a child process whose working directory is ``dst``'s folder: ONNX Runtime's symbolic shape inference
    saves a temporary model with ``<uuid>.data`` external data into the current directory and leaves it there. When
    symbolic inference fails (some graphs), it retries without it; failing that, the original model is used.
    """
    import subprocess
    import sys

    src, dst = Path(src).resolve(), Path(dst).resolve()
    base = [sys.executable, "-m", "onnxruntime.quantization.preprocess", "--input", str(src), "--output", str(dst)]
    for extra in ([], ["--skip_symbolic_shape", "True"]):  # (the tool parses any value given as True)
        proc = subprocess.run(base + extra, cwd=dst.parent, capture_output=True, text=True,
                              preexec_fn=die_with_parent, env=child_env())
        if proc.returncode == 0 and dst.exists():
            return dst
        log.info("quantization pre-processing %s failed: %s", extra,
                 proc.stderr.strip().splitlines()[-1:] if proc.stderr else "")
    return src
