"""Where the time goes: a per-layer profile of one model on one runtime, with FLOPs, parameters, activation memory,
arithmetic intensity and achieved GFLOP/s per layer, the bottlenecks and the roofline.

The times come from each runtime's own profiler, never from timers of ours around ops: ``torch.profiler`` (CPU ops,
CUDA kernels) with a ``record_function`` range per module, ONNX Runtime's session profiling (per-node kernel times and
shapes), OpenVINO's performance counters (per executed, possibly fused, node). FLOPs of torch models come from
``torch.utils.flop_counter.FlopCounterMode``; of ONNX graphs, from the shapes ONNX Runtime ran with
(``bench.profile_onnx``). The end-to-end latency comes from plain runs (no profiler) interleaved with the profiled
ones, so a profile says how much of it its layers account for under the same load.

Example:
    >>> # res = bench.profiler.profile_model(slimforge.load("minilm.onnx"), "onnxruntime", batch=8)
    >>> # [layer.name for layer in res.bottlenecks(0.05)]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from slimforge.bench.timing import BenchSpec
from slimforge.errors import ConfigError

PROFILE_SPEC = BenchSpec(warmup=3, repeats=20, min_time_s=0.5, max_time_s=10.0)


@dataclass(frozen=True, slots=True)
class LayerProfile:
    """One layer (a torch module, or the ONNX/OpenVINO nodes of one source module) per run of the model."""

    name: str  # module path, e.g. "encoder.layer.0.attention" ("(model)": work outside any submodule)
    kind: str  # module type, or the op types of the nodes
    self_ms: float  # time in this layer and not in its sub-layers, per run
    calls: float  # per run
    pct: float = 0.0  # of the sum of self times
    flops: float | None = None  # per run
    params: int | None = None
    activation_bytes: int | None = None  # the layer's outputs
    bytes_moved: int | None = None  # weights + inputs + outputs: the roofline's denominator
    nodes: tuple[str, ...] = ()  # ONNX Runtime / OpenVINO: the nodes grouped into this layer

    @property
    def intensity(self) -> float | None:
        """FLOPs per byte moved."""
        return self.flops / self.bytes_moved if self.flops and self.bytes_moved else None

    @property
    def gflops_s(self) -> float | None:
        return self.flops / (self.self_ms * 1e6) if self.flops and self.self_ms > 0 else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["nodes"] = list(self.nodes)
        d["intensity"], d["gflops_s"] = self.intensity, self.gflops_s
        return d


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """A model's per-layer profile at one batch size on one runtime and device."""

    model: str
    runtime: str
    device: str
    batch: int
    layers: tuple[LayerProfile, ...]  # sorted by self time, largest first
    end_to_end_ms: float  # median of plain runs (no profiler), interleaved with the profiled runs
    flops: float | None  # per run; torch: FlopCounterMode's total
    peak: Mapping[str, Any] = field(default_factory=dict)  # the device's ceilings (bench.peaks)
    notes: tuple[str, ...] = ()

    @property
    def total_ms(self) -> float:
        """The sum of the layers' self times."""
        return float(sum(layer.self_ms for layer in self.layers))

    @property
    def coverage(self) -> float:
        """Sum of self times over the end-to-end latency (1.0: the layers account for all of it)."""
        return self.total_ms / self.end_to_end_ms if self.end_to_end_ms > 0 else 0.0

    def bottlenecks(self, threshold: float = 0.05) -> list[LayerProfile]:
        """The layers taking more than ``threshold`` of the time, largest first."""
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"threshold is a fraction in (0, 1), got {threshold}")
        return [layer for layer in self.layers if layer.pct > threshold]

    def by_module(self, depth: int) -> list[LayerProfile]:
        """Layers summed up to the first ``depth`` parts of their names (``encoder.layer.0`` at depth 3)."""
        groups: dict[str, list[LayerProfile]] = {}
        for layer in self.layers:
            key = ".".join(layer.name.split(".")[:depth])
            groups.setdefault(key, []).append(layer)
        return sorted((_merge(k, g, self.total_ms) for k, g in groups.items()), key=lambda x: -x.self_ms)

    def block_depth(self) -> int:
        """The shallowest name depth at which no block holds half the time (e.g. a transformer's layers)."""
        names = [x.name.split(".") for x in self.layers if not x.name.startswith("(")]
        deepest = max((len(n) for n in names), default=1)
        for d in range(1, deepest + 1):
            blocks = self.by_module(d)
            if len(blocks) >= 3 and blocks[0].pct < 0.5:
                return d
        return deepest

    def table(self, top: int = 15) -> str:
        """The top layers as a text table."""
        head = f"{'layer':<48} {'kind':<22} {'ms':>8} {'%':>6} {'calls':>6} {'MFLOP':>10} {'GFLOP/s':>9}"
        lines = [head, "-" * len(head)]
        for x in self.layers[:top]:
            lines.append(f"{x.name[-48:]:<48} {x.kind[:22]:<22} {x.self_ms:8.3f} {100 * x.pct:6.1f} {x.calls:6.3g} "
                         f"{(x.flops or 0) / 1e6:10.2f} {x.gflops_s or 0:9.1f}")
        lines.append(f"sum of self times {self.total_ms:.3f} ms; end to end {self.end_to_end_ms:.3f} ms "
                     f"({100 * self.coverage:.0f}% accounted for); FLOPs per run {(self.flops or 0) / 1e9:.3f} G")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "runtime": self.runtime, "device": self.device, "batch": self.batch,
                "end_to_end_ms": self.end_to_end_ms, "total_self_ms": self.total_ms, "coverage": self.coverage,
                "flops": self.flops, "peak": dict(self.peak), "notes": list(self.notes),
                "bottlenecks": [x.name for x in self.bottlenecks()], "layers": [x.to_dict() for x in self.layers],
                "block_depth": self.block_depth(), "blocks": [x.to_dict() for x in self.by_module(self.block_depth())],
                "bottleneck_blocks": [x.name for x in self.by_module(self.block_depth()) if x.pct > 0.05]}


def _merge(name: str, group: list[LayerProfile], total: float) -> LayerProfile:
    def add(attr: str) -> Any:
        vals = [getattr(x, attr) for x in group if getattr(x, attr) is not None]
        return sum(vals) if vals else None

    ms = sum(x.self_ms for x in group)
    kinds = sorted({x.kind for x in group})
    return LayerProfile(name=name, kind=kinds[0] if len(kinds) == 1 else f"{len(group)} layers", self_ms=ms,
                        calls=max(x.calls for x in group), pct=ms / total if total else 0.0, flops=add("flops"),
                        params=add("params"), activation_bytes=add("activation_bytes"),
                        bytes_moved=add("bytes_moved"), nodes=tuple(n for x in group for n in x.nodes))


def finish(layers: list[LayerProfile]) -> tuple[LayerProfile, ...]:
    """Percentages of the sum of self times; largest first; layers with no time and no FLOPs dropped."""
    total = sum(x.self_ms for x in layers)
    kept = [replace(x, pct=x.self_ms / total if total else 0.0) for x in layers if x.self_ms > 0 or x.flops]
    return tuple(sorted(kept, key=lambda x: -x.self_ms))
