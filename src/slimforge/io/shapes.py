"""Valid sizes for a model's dynamic dimensions, found by running the model (probing), not guessed.

A dimension's *group* is its name when it has one (inputs that share a name share a size), or the input and axis
when it is anonymous (``?``, ``-1``, empty): anonymous dimensions are independent. Each group gets a size the model
runs at (the user's ``--input-shape`` first; then the declared or typical size for what the input looks like: 224
for an image, 512 samples for audio, 16 tokens), then a *step*: the smallest increment (1, 2, 4, ... 64) at which it
still runs (a detector whose FPN concatenations need multiples of 32 gets 32). ``None`` means only the probed size is
known to run: verification and measurement then never vary it.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from slimforge.core.artifact import IOSpec, TensorSpec

log = logging.getLogger(__name__)

RunFn = Callable[[Mapping[str, np.ndarray]], Any]

ANONYMOUS = ("?", "", "-1")
_BATCH = re.compile(r"batch|^n$|^b$|^N$|^B$|unk__|dynamicdimension\.0|^dim_?0$", re.I)
_IMAGE_SIZES = (224, 256, 320, 384, 416, 512, 640, 128, 96, 64, 48, 32)
_SIGNAL_SIZES = (512, 1024, 1600, 4000, 16000, 256, 160, 64, 32)
_SEQ_SIZES = (16, 32, 8, 64, 128, 1)
_OTHER_SIZES = (32, 16, 64, 8, 128, 256, 1, 2, 4)
_STEPS = (1, 2, 4, 8, 16, 32, 64)


def is_anonymous(dim: Any) -> bool:
    """``?``, ``-1``, ``None``, empty: a dimension without a name (independent of every other)."""
    return dim is None or (isinstance(dim, int) and dim <= 0) or (isinstance(dim, str) and dim.strip() in ANONYMOUS)


def is_dynamic(dim: Any) -> bool:
    return not (isinstance(dim, (int, np.integer)) and dim > 0)


def group_of(spec: TensorSpec, axis: int) -> str:
    """The key under which a dynamic dimension's size is chosen."""
    dim = spec.shape[axis]
    return f"{spec.name}:{axis}" if is_anonymous(dim) else str(dim)


@dataclass
class DimRule:
    """One dynamic dimension group: its members, what it looks like, the size it runs at and its step."""

    key: str
    kind: str  # batch | image | signal | sequence | other
    members: list[tuple[str, int]] = field(default_factory=list)
    size: int = 1
    step: int | None = None
    user: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "step": self.step, "user": self.user,
                "members": [f"{n}[{a}]" for n, a in self.members]}


def dim_rules(io: IOSpec) -> dict[str, DimRule]:
    """The dynamic dimension groups of ``io`` with their kinds (nothing is run)."""
    rules: dict[str, DimRule] = {}
    for spec in io.inputs:
        for axis, dim in enumerate(spec.shape):
            if not is_dynamic(dim):
                continue
            key = group_of(spec, axis)
            rule = rules.setdefault(key, DimRule(key, _kind(spec, axis)))
            rule.members.append((spec.name, axis))
    return rules


def _kind(spec: TensorSpec, axis: int) -> str:
    dim, rank = spec.shape[axis], len(spec.shape)
    name = dim if isinstance(dim, str) else ""
    floating = spec.dtype.startswith("float") or spec.dtype in ("bfloat16", "float16")
    if (axis == 0 and rank >= 2) or (name and _BATCH.search(name)):
        return "batch"
    if floating and rank == 4 and axis in (2, 3):
        return "image"
    if floating and rank == 4 and axis == 1 and isinstance(spec.shape[3], int) and spec.shape[3] in (1, 3, 4):
        return "image"  # NHWC
    if floating and rank in (2, 3) and axis == rank - 1:
        return "signal"
    if not floating or rank in (2, 3):
        return "sequence"
    return "other"


def candidates_for(rule: DimRule, fixed: Mapping[str, int]) -> tuple[int, ...]:
    """Sizes to try, most typical first; an image dimension beside a fixed one starts from it (48x? -> 48, 4x)."""
    if rule.kind == "batch":
        return (1,)
    if rule.kind == "image":
        near = [v for v in fixed.values() if v >= 16]
        extra = tuple(x for v in near for x in (v * 4, v)) if near else ()
        return extra + _IMAGE_SIZES
    if rule.kind == "signal":
        return _SIGNAL_SIZES
    if rule.kind == "sequence":
        return _SEQ_SIZES
    return _OTHER_SIZES


@dataclass
class Probe:
    """What probing found: the rules (with sizes and steps), whether the model ran, the error when it did not."""

    rules: dict[str, DimRule]
    ok: bool = True
    error: str = ""
    runs: int = 0

    def sizes(self) -> dict[str, int]:
        return {k: r.size for k, r in self.rules.items()}

    def to_meta(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error, "rules": {k: r.to_dict() for k, r in self.rules.items()}}


def shapes_at(io: IOSpec, sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes with every dynamic group at ``sizes``."""
    out = {}
    for spec in io.inputs:
        out[spec.name] = tuple(int(d) if not is_dynamic(d) else int(sizes.get(group_of(spec, a), 1))
                               for a, d in enumerate(spec.shape))
    return out


def probe(io: IOSpec, run: RunFn, make_feeds: Callable[[dict[str, tuple[int, ...]]], dict[str, np.ndarray]], *,
          user_shapes: Mapping[str, tuple[int, ...]] | None = None, budget_s: float = 20.0) -> Probe:
    """Find a size at which the model runs for every dynamic group, then each group's step.

    ``run`` runs the model on feeds (raising when it cannot); ``make_feeds`` builds feeds for concrete shapes.
    """
    rules = dim_rules(io)
    result = Probe(rules)
    if not rules:
        return result
    _apply_user_shapes(io, rules, user_shapes or {})
    fixed = {f"{s.name}:{a}": int(d) for s in io.inputs for a, d in enumerate(s.shape)
             if not is_dynamic(d) and len(s.shape) == 4 and a in (2, 3)}
    deadline = time.monotonic() + budget_s
    for rule in rules.values():
        if not rule.user:
            rule.size = candidates_for(rule, fixed)[0]

    def runs(sizes: Mapping[str, int]) -> str:
        result.runs += 1
        try:
            run(make_feeds(shapes_at(io, sizes)))
            return ""
        except Exception as exc:  # noqa: BLE001 - a size the model does not take
            text = str(exc).strip().splitlines()
            return text[0][:300] if text else type(exc).__name__

    error = runs(result.sizes())
    if error:  # one group at a time, through its candidates, the others held
        for rule in rules.values():
            if rule.user or rule.kind == "batch":
                continue
            for size in candidates_for(rule, fixed)[1:]:
                if time.monotonic() > deadline:
                    break
                error = runs({**result.sizes(), rule.key: size})
                if not error:
                    rule.size = size
                    break
            if not error:
                break
    if error:
        result.ok, result.error = False, error
        return result
    for rule in rules.values():  # the step: the smallest increment at which it still runs
        steps = (1,) if rule.kind == "batch" else _STEPS
        for step in steps:
            if time.monotonic() > deadline:
                break
            if not runs({**result.sizes(), rule.key: rule.size + step}):
                rule.step = step
                break
    log.info("probed %d run(s): %s", result.runs, {k: (r.size, r.step) for k, r in rules.items()})
    return result


def _apply_user_shapes(io: IOSpec, rules: dict[str, DimRule], user_shapes: Mapping[str, tuple[int, ...]]) -> None:
    for name, shape in user_shapes.items():
        spec = next((s for s in io.inputs if s.name == (name or io.input_names[0])), None)
        if spec is None or len(shape) != len(spec.shape):
            continue
        for axis, dim in enumerate(spec.shape):
            if is_dynamic(dim):
                rule = rules[group_of(spec, axis)]
                rule.size, rule.user = int(shape[axis]), True


def variant_sizes(meta: Mapping[str, Any], *, batch: int = 2) -> dict[str, int] | None:
    """A second valid size for each group that may vary (size + step; widths two steps, so H != W), from a probe
    stored in ``meta['dims']``; None when nothing may vary. User-given sizes stay as given."""
    dims = (meta.get("dims") or {}).get("rules") or {}
    if not dims:
        return None
    out, changed = {}, False
    for i, (key, rule) in enumerate(dims.items()):
        size, step = int(rule["size"]), rule.get("step")
        if rule["kind"] == "batch":
            out[key] = batch if step else size
            changed |= bool(step)
        elif step and not rule.get("user"):
            out[key] = size + step * (1 + i % 2)
            changed = True
        else:
            out[key] = size
    return out if changed else None


_PROBED: dict[tuple[str, str], tuple[dict[str, np.ndarray], dict[str, Any]]] = {}


def needs_probe(io: IOSpec) -> bool:
    """Probing runs the model: only for dims whose valid sizes are not obvious (images, signals, others); batch
    and token-sequence dims take any size."""
    return any(r.kind in ("image", "signal", "other") for r in dim_rules(io).values())


def probed_examples(art: Any, user_shapes: Mapping[str, tuple[int, ...]] | None, file_key: str
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Example inputs at probed sizes and the probe (for ``meta['dims']``) of a model file artifact (ONNX or
    OpenVINO), or None when nothing needs probing. Results are kept per file and user shapes for this process."""
    from slimforge.io.synth import synthesize
    from slimforge.runtimes import open_session

    if not needs_probe(art.io):
        return None
    key = (file_key, repr(sorted((user_shapes or {}).items())))
    if key in _PROBED:
        ex, dims = _PROBED[key]
        return dict(ex), dims

    def make(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        specs = tuple(TensorSpec(s.name, shapes[s.name], s.dtype) for s in art.io.inputs)
        return synthesize(IOSpec(specs), meta=art.meta)

    try:
        run = _quiet_onnx_runner(art) if art.format.value == "onnx" else open_session(art).run
    except Exception as exc:  # noqa: BLE001 - the model is then reported when it is first run
        log.info("cannot open %s to probe its shapes: %s", art.name, exc)
        return None
    found = probe(art.io, run, make, user_shapes=user_shapes)
    examples = make(shapes_at(art.io, found.sizes()))
    dims = found.to_meta()
    _PROBED[key] = (examples, dims)
    return dict(examples), dims


def _quiet_onnx_runner(art: Any) -> RunFn:
    """An ONNX Runtime session that logs nothing: the sizes a probe tries and the model refuses are expected."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(art.path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda feeds: sess.run(None, {n: feeds[n] for n in names})


def shape_hint(io: IOSpec) -> str:
    """How to set the shapes: ``--input-shape images:1x3x224x224`` with the model's own fixed dims."""
    parts = []
    for spec in io.inputs:
        dims = ["1" if a == 0 else (str(d) if not is_dynamic(d) else "N") for a, d in enumerate(spec.shape)]
        parts.append(f"--input-shape {spec.name}:{'x'.join(dims) or 'SCALAR'}")
    return " ".join(p for p in parts if not p.endswith(":SCALAR"))


def with_probed_shapes(art: Any, user_shapes: Mapping[str, tuple[int, ...]] | None) -> Any:
    """``art`` with examples at sizes the model runs at and ``meta['dims']`` (the probe), when it has dynamic
    dims whose valid sizes are not obvious."""
    import dataclasses

    found = probed_examples(art, user_shapes, art.source_id)
    if found is None:
        return art
    return dataclasses.replace(art, examples=found[0], meta={**art.meta, "dims": found[1]})


def extra_size_feeds(art: Any, *, seed: int = 11) -> list[tuple[str, dict[str, np.ndarray]]]:
    """``(label, feeds)`` at each further size the user asked for (``--input-shape`` given more than once for an
    input, kept in ``meta['extra_shapes']``); the other inputs keep their example shapes."""
    from slimforge.io.synth import synthesize

    out = []
    for i, sizes in enumerate(art.meta.get("extra_shapes") or ()):
        shapes = {t.name: tuple(int(d) for d in sizes[t.name]) if t.name in sizes else
                  tuple(np.shape(art.examples[t.name])) for t in art.io.inputs}
        specs = tuple(TensorSpec(t.name, shapes[t.name], t.dtype) for t in art.io.inputs)
        feeds = synthesize(IOSpec(specs), meta=art.meta, seed=seed + i)
        out.append((",".join(f"{k}={'x'.join(map(str, v))}" for k, v in sizes.items()), feeds))
    return out
