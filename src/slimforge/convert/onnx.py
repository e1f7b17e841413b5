"""ONNX export of torch artifacts: dynamic axes, exporter fallback, external data, verification."""

from __future__ import annotations

import contextlib
import copy
import enum
import io as _io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from slimforge.core.artifact import Artifact, Format, IOSpec, Step, TensorSpec
from slimforge.core.config import Config, coerce_fields
from slimforge.core.context import RunContext
from slimforge.core.outputs import atomic_path
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed, VerificationError, require
from slimforge.io.onnx_file import check_onnx_file
from slimforge.convert.verify import verification_cases, verify
from slimforge.torch_utils import runs_fx_graphs, set_training

log = logging.getLogger(__name__)

_TWO_GB = 2 * 1024**3


class Exporter(str, enum.Enum):
    AUTO = "auto"  # TorchScript first, then dynamo
    TORCHSCRIPT = "torchscript"
    DYNAMO = "dynamo"


class ExternalData(str, enum.Enum):
    AUTO = "auto"  # only when the weights exceed 2 GB
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True, kw_only=True, slots=True)
class ExportConfig(Config):
    """ONNX export settings.

    ``dynamic_axes`` entries read ``NAME:AXIS[=DIM],AXIS[=DIM]`` (``input_ids:0=batch,1=sequence``); when empty, the
    dynamic axes are inferred by probing the model with other batch sizes, sequence lengths and image sizes.

    Example:
        >>> ExportConfig(opset=17, dynamic_axes=("x:0=batch,2=height,3=width",)).parsed_axes()
        {'x': {0: 'batch', 2: 'height', 3: 'width'}}
    """

    kind = "export_onnx"
    opset: int = 17
    exporter: Exporter = Exporter.AUTO
    dynamic_axes: tuple[str, ...] = ()
    external_data: ExternalData = ExternalData.AUTO
    verify: bool = True
    atol: float = 1e-4
    rtol: float = 1e-4
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 9 <= self.opset <= 23:
            raise ConfigError(f"opset must be between 9 and 23, got {self.opset}")
        if self.atol < 0 or self.rtol < 0:
            raise ConfigError("atol and rtol must be >= 0")
        self.parsed_axes()

    def parsed_axes(self) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        for entry in self.dynamic_axes:
            name, sep, axes = entry.partition(":")
            if not sep or not name or not axes:
                raise ConfigError(f"bad dynamic axes {entry!r}: write NAME:0,1 or NAME:0=batch,1=sequence")
            for part in axes.split(","):
                ax, _, dim = part.partition("=")
                try:
                    axis = int(ax)
                except ValueError:
                    raise ConfigError(f"bad dynamic axes {entry!r}: {ax!r} is not an axis number") from None
                out.setdefault(name, {})[axis] = dim or _default_dim_name(axis)
        return out


def _default_dim_name(axis: int) -> str:
    return {0: "batch", 1: "sequence", 2: "height", 3: "width"}.get(axis, f"dim{axis}")


@implements(ExportConfig, fmt=(Format.TORCH, Format.TORCHSCRIPT, Format.TORCH_EXPORT), produces=Format.ONNX)
def _export_torch(art: Artifact, cfg: ExportConfig, ctx: RunContext) -> Artifact:
    require("onnx", extra="onnx")
    module = art.handle
    if getattr(module, "training", False):
        module = copy.deepcopy(module)
        set_training(module, False)
    if cfg.dynamic_axes:
        in_axes, out_axes = _user_axes(art, cfg)
    else:  # the loader probed which axes may vary
        in_axes = {t.name: t.dynamic_axes() for t in art.io.inputs if t.dynamic_axes()}
        out_axes = {t.name: t.dynamic_axes() for t in art.io.outputs if t.dynamic_axes()}
    child_io = _io_with_axes(art.io, in_axes, out_axes)
    child = art.derive(Step("export_onnx", cfg.to_dict()), format=Format.ONNX, handle=None, io=child_io)
    final = ctx.output_for(child, ".onnx")
    exporters = [Exporter.TORCHSCRIPT, Exporter.DYNAMO] if cfg.exporter is Exporter.AUTO else [cfg.exporter]
    if cfg.exporter is Exporter.AUTO and runs_fx_graphs(module):  # a program from a .pt2: torch.export it again
        exporters.reverse()
    reasons: list[str] = []
    last: Exception | None = None
    mismatch: VerificationError | None = None
    for exporter in exporters:
        ctx.report_progress(f"export ({exporter.value})", 0, 2)
        try:
            with atomic_path(final) as tmp:
                _run_exporter(exporter, module, art, child_io, in_axes, out_axes, cfg, tmp)
                check_onnx_file(tmp)
                result = _with_path(child, tmp)
                ctx.report_progress(f"export ({exporter.value})", 1, 2)
                checks = []
                if cfg.verify:
                    checks.append(_verify_against_torch(art, result, cfg, module))
            out = _with_path(child, final)
            for c in checks:
                out = out.with_check(c)
            ctx.report_progress(f"export ({exporter.value})", 2, 2)
            log.info("exported %s with the %s exporter to %s", art.name, exporter.value, final)
            return _with_meta(out, exporter=exporter.value)
        except VerificationError as exc:
            reasons.append(f"{exporter.value}: {exc}")
            last = mismatch = exc
        except Exception as exc:  # exporter internals raise anything; keep the first line and fall back
            reasons.append(f"{exporter.value}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}")
            last = exc
        log.warning("ONNX export with %s failed: %s", exporter.value, reasons[-1])
    if mismatch is not None:
        raise VerificationError("ONNX export did not verify: " + " | ".join(reasons), report=mismatch.report) from last
    raise TechniqueFailed("ONNX export failed with every exporter: " + " | ".join(reasons)) from last


def _with_path(art: Artifact, path: Path) -> Artifact:
    import dataclasses

    return dataclasses.replace(art, path=path)


def _with_meta(art: Artifact, **meta: Any) -> Artifact:
    import dataclasses

    return dataclasses.replace(art, meta={**art.meta, **meta})


def _verify_against_torch(src: Artifact, onnx_art: Artifact, cfg: ExportConfig, module: Any):
    from slimforge.runtimes import open_session
    from slimforge.torch_utils import run_module

    sess = open_session(onnx_art, "onnxruntime")
    try:
        return verify(lambda f: run_module(module, f), sess.run, verification_cases(onnx_art),
                      onnx_art.io.output_names, atol=cfg.atol, rtol=cfg.rtol, name="verify_onnx_export")
    finally:
        sess.close()


def _run_exporter(exporter: Exporter, module: Any, art: Artifact, io: IOSpec, in_axes: Mapping[str, dict[int, str]],
                  out_axes: Mapping[str, dict[int, str]], cfg: ExportConfig, path: Path) -> None:
    args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in art.examples.values())
    in_names, out_names = io.input_names, io.output_names
    big = _param_bytes(module) > _TWO_GB
    with warnings.catch_warnings(), contextlib.redirect_stdout(_io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter is Exporter.TORCHSCRIPT:
            if not isinstance(module, torch.nn.Module) and not isinstance(module, torch.jit.ScriptModule):
                raise TechniqueFailed("the TorchScript exporter needs an nn.Module")
            torch.onnx.export(module, args, str(path), input_names=in_names, output_names=out_names,
                              dynamic_axes={**in_axes, **out_axes}, opset_version=cfg.opset, dynamo=False,
                              do_constant_folding=True)
        else:
            shapes = torch.export.ShapesCollection()  # keyed by tensor: fits any forward signature, *args too
            for name, t in zip(in_names, args):
                if in_axes.get(name):
                    shapes[t] = {a: torch.export.Dim.AUTO for a in in_axes[name]}
            program = torch.onnx.export(module, args, input_names=in_names, output_names=out_names,
                                        dynamic_shapes=shapes if any(in_axes.values()) else None,
                                        opset_version=max(cfg.opset, 18), dynamo=True, verbose=False)
            program.save(str(path), external_data=big or cfg.external_data is ExternalData.ALWAYS)
    if cfg.external_data is ExternalData.ALWAYS or (cfg.external_data is ExternalData.AUTO and big):
        _to_external_data(path)
    elif cfg.external_data is ExternalData.NEVER and big:
        raise ConfigError("the weights exceed 2 GB, which ONNX can only store as external data; "
                          "use external_data='auto'")


def _to_external_data(path: Path) -> None:
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path), load_external_data=True)
    for f in path.parent.iterdir():
        if f != path:
            f.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)


def _param_bytes(module: Any) -> int:
    if not hasattr(module, "parameters"):
        return 0
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ---------------------------------------------------------------- dynamic axes


def _user_axes(art: Artifact, cfg: ExportConfig) -> tuple[dict[str, dict[int, str]], dict[str, dict[int, str]]]:
    axes = cfg.parsed_axes()
    known = set(art.io.input_names) | set(art.io.output_names)
    unknown = sorted(set(axes) - known)
    if unknown:
        raise ConfigError(f"dynamic axes name {unknown}, which the model does not have; inputs: "
                          f"{art.io.input_names}, outputs: {art.io.output_names}")
    ins = {n: a for n, a in axes.items() if n in art.io.input_names}
    outs = {n: a for n, a in axes.items() if n in art.io.output_names}
    batch_dynamic = any(a.get(0) == "batch" for a in ins.values())
    for spec in art.io.outputs:
        if spec.name not in outs and batch_dynamic and spec.shape:
            outs[spec.name] = {0: "batch"}
    return ins, outs


def _io_with_axes(io: IOSpec, in_axes: Mapping[str, dict[int, str]], out_axes: Mapping[str, dict[int, str]]) -> IOSpec:
    def apply(spec: TensorSpec, axes: Mapping[int, str]) -> TensorSpec:
        shape = tuple(axes.get(a, d if not isinstance(d, str) else None) for a, d in enumerate(spec.shape))
        return TensorSpec(spec.name, shape, spec.dtype)

    return IOSpec(tuple(apply(s, in_axes.get(s.name, {})) for s in io.inputs),
                  tuple(apply(s, out_axes.get(s.name, {})) for s in io.outputs))
