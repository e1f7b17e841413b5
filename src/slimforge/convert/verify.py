"""Numerical verification of a transformed model against its reference on several input shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from slimforge.core.artifact import Artifact, Check, IOSpec, TensorSpec
from slimforge.errors import VerificationError
from slimforge.io.synth import synthesize

RunFn = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class OutputError:
    case: str
    output: str
    max_abs: float
    max_rel: float  # max abs error relative to the reference's largest magnitude

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "output": self.output, "max_abs": self.max_abs, "max_rel": self.max_rel}


@dataclass
class VerifyReport:
    """Per-case, per-output errors; ``passed`` when every error is within ``atol + rtol * max|ref|``."""

    atol: float
    rtol: float
    errors: list[OutputError] = field(default_factory=list)
    failures: list[OutputError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.errors) and not self.failures

    @property
    def worst(self) -> OutputError:
        return max(self.errors, key=lambda e: e.max_abs)

    def to_check(self, name: str) -> Check:
        worst = self.worst
        detail = "; ".join(f"{e.case} {e.output}: max_abs={e.max_abs:.3g}" for e in self.errors)
        return Check(name, self.passed, {"max_abs": worst.max_abs, "max_rel": worst.max_rel,
                                         "atol": self.atol, "rtol": self.rtol, "cases": len({e.case for e in self.errors})},
                     detail)

    def message(self) -> str:
        bad = max(self.failures or self.errors, key=lambda e: e.max_abs / (self.atol + 1e-30))
        return (f"output '{bad.output}' differs from the reference by max abs {bad.max_abs:.3g} "
                f"(relative {bad.max_rel:.3g}) at {bad.case}, over the tolerance atol={self.atol:g}, rtol={self.rtol:g}")


def compare(reference: RunFn, candidate: RunFn, cases: Sequence[tuple[str, Mapping[str, np.ndarray]]],
            output_names: Sequence[str], *, atol: float, rtol: float) -> VerifyReport:
    """Run both on every case and compare every output."""
    report = VerifyReport(atol, rtol)
    for case, feeds in cases:
        ref = reference(feeds)
        cand = candidate(feeds)
        if len(ref) != len(cand):
            raise VerificationError(f"at {case} the candidate returned {len(cand)} outputs, the reference {len(ref)}")
        for i, (r, c) in enumerate(zip(ref, cand)):
            name = output_names[i] if i < len(output_names) else f"output_{i}"
            r64, c64 = np.asarray(r, dtype=np.float64), np.asarray(c, dtype=np.float64)
            if r64.shape != c64.shape:
                raise VerificationError(f"output '{name}' has shape {c64.shape} at {case}, the reference {r64.shape}",
                                        report=report)
            diff = np.abs(r64 - c64)
            max_abs = float(diff.max()) if diff.size else 0.0
            scale = float(np.abs(r64).max()) if r64.size else 0.0
            err = OutputError(case, name, max_abs, max_abs / scale if scale > 0 else max_abs)
            report.errors.append(err)
            if not np.isfinite(max_abs) or max_abs > atol + rtol * scale:
                report.failures.append(err)
    return report


def verify(reference: RunFn, candidate: RunFn, cases: Sequence[tuple[str, Mapping[str, np.ndarray]]],
           output_names: Sequence[str], *, atol: float, rtol: float, name: str = "verify") -> Check:
    """Compare and raise ``VerificationError`` naming the worst output when over tolerance; else return the check."""
    report = compare(reference, candidate, cases, output_names, atol=atol, rtol=rtol)
    if not report.passed:
        raise VerificationError(f"{name} failed: {report.message()}", report=report)
    return report.to_check(name)


def verification_cases(art: Artifact) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Input sets that exercise every dynamic axis of ``art``: several batch sizes, sequence lengths, image sizes."""
    from slimforge.io.shapes import extra_size_feeds

    return _cases(art) + [(f"at {label}", feeds) for label, feeds in extra_size_feeds(art)]


def _cases(art: Artifact) -> list[tuple[str, dict[str, np.ndarray]]]:
    if (art.meta.get("dims") or {}).get("ok"):
        return _probed_cases(art)
    pre = art.meta.get("preprocess") or {}
    dyn = {d for t in art.io.inputs for d in t.shape if isinstance(d, str)}
    has_seq = any(_is_seq(d) for d in dyn)
    has_hw = any(d in ("height", "width") for d in dyn)
    cases: list[tuple[str, dict[str, np.ndarray]]] = []
    if pre.get("kind") == "text" or has_seq:
        max_len = int(art.meta.get("max_positions") or 512)
        shapes = [(1, 7), (3, 64), (32, 128), (5, 200)]
        for b, s in shapes:
            s = min(s, max_len)
            feeds = _resized(art, {"batch": b, "sequence": s})
            _pad_masks(feeds)
            cases.append((f"batch={b},seq={s}", feeds))
    elif has_hw:
        h, w = _example_hw(art)
        cases.append((f"batch=1,{h}x{w}", _resized(art, {"batch": 1})))
        cases.append((f"batch=2,{h + 32}x{w + 16}", _resized(art, {"batch": 2, "height": h + 32, "width": w + 16})))
    else:
        cases.append(("batch=1", _resized(art, {"batch": 1})))
        if any(d == "batch" for d in dyn):
            cases.append(("batch=3", _resized(art, {"batch": 3})))
    return cases


def _probed_cases(art: Artifact) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The sizes probing found the model runs at (or the user gave), then each varying group one or two steps on
    (a stride-32 detector: 224x224, then 256x288), never a size the model was not seen to take."""
    from slimforge.io.shapes import shapes_at, variant_sizes

    def label(feeds: Mapping[str, np.ndarray]) -> str:
        return ",".join(f"{k}={'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())

    cases = [(label(art.examples), dict(art.examples))]
    variant = variant_sizes(art.meta)
    if variant:
        shapes = shapes_at(art.io, variant)
        specs = tuple(TensorSpec(t.name, shapes[t.name], t.dtype) for t in art.io.inputs)
        feeds = synthesize(IOSpec(specs), meta=art.meta, seed=7)
        cases.append((label(feeds), feeds))
    return cases


def _is_seq(dim: str) -> bool:
    return dim in ("sequence", "seq", "seq_len", "sequence_length")


def _example_hw(art: Artifact) -> tuple[int, int]:
    for spec in art.io.inputs:
        ex = art.examples.get(spec.name)
        if ex is not None and ex.ndim == 4:
            return int(ex.shape[2]), int(ex.shape[3])
    return 32, 32


def _resized(art: Artifact, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    specs = tuple(TensorSpec(t.name, tuple(_size_for(d, sizes) for d in t.shape), t.dtype) for t in art.io.inputs)
    return synthesize(IOSpec(specs), examples=art.examples, meta=art.meta, seed=sum(sizes.values()))


def _size_for(dim: Any, sizes: Mapping[str, int]) -> Any:
    if not isinstance(dim, str):
        return dim
    if _is_seq(dim):
        return sizes.get("sequence", 16)
    if dim in sizes:
        return sizes[dim]
    return sizes.get("batch", 1) if "batch" in dim else dim


def _pad_masks(feeds: dict[str, np.ndarray]) -> None:
    """Give the first row of each text batch trailing padding, so masking is verified too."""
    mask = feeds.get("attention_mask")
    if mask is not None and mask.ndim == 2 and mask.shape[1] > 2:
        mask[0, mask.shape[1] // 2:] = 0
