"""CPU against GPU with prices: per device and batch size the latency (p50/p95/p99), the throughput, the cost of
1,000 inferences with the device fully loaded at that batch size, and the speedup over the CPU.

Each device is timed by the one timing loop (``bench.measure_all``); a device this machine lacks is reported as not
measured, with the reason, and never estimated.

Example:
    >>> cost_per_1000(price_per_hour=3.6, items_per_s=1000.0)
    0.001
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from slimforge.bench.measure import measure_all
from slimforge.bench.timing import BenchSpec
from slimforge.core.artifact import Artifact
from slimforge.errors import ConfigError, SlimforgeError


def cost_per_1000(price_per_hour: float, items_per_s: float) -> float:
    """Dollars for 1,000 inferences at ``items_per_s`` on a device rented at ``price_per_hour``."""
    return price_per_hour / 3600.0 / items_per_s * 1000.0


def parse_prices(items: Sequence[str]) -> dict[str, float]:
    """``["cpu=0.20", "cuda=3.50"]`` -> ``{"cpu": 0.2, "cuda": 3.5}`` ($ per hour).

    Example:
        >>> parse_prices(["cpu=0.20", "cuda=3.5"])
        {'cpu': 0.2, 'cuda': 3.5}
    """
    out = {}
    for item in items:
        dev, sep, value = item.partition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not sep or dev.strip() not in ("cpu", "cuda") or price < 0:
            raise ConfigError(f"--price {item!r}: give DEVICE=DOLLARS_PER_HOUR with DEVICE cpu or cuda, e.g. "
                              "--price cpu=0.20 --price cuda=3.50")
        out[dev.strip()] = price
    return out


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device: str
    batch: int
    measured: bool
    reason: str = ""  # why not measured
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    items_s: float | None = None
    price_per_hour: float | None = None
    cost_per_1000: float | None = None
    speedup_vs_cpu: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_benchmark(art: Artifact, feeds_for: Callable[[int], Mapping[str, np.ndarray]], *,
                     devices: Sequence[str], prices: Mapping[str, float], batch_sizes: Sequence[int],
                     runtime: str | None, spec: BenchSpec, threads: int | None = None) -> list[DeviceRow]:
    """One row per device and batch size (see the module docstring)."""
    from slimforge.runtimes import default_runtime, get_runtime

    unknown = [d for d in devices if d not in ("cpu", "cuda")]
    if unknown or not devices:
        raise ConfigError(f"--device takes cpu, cuda or cpu,cuda; got {','.join(devices) or 'nothing'}")
    rt = runtime or default_runtime(art)
    rows: list[DeviceRow] = []
    for dev in devices:
        reason = ""
        if dev not in get_runtime(rt).devices():
            reason = (f"no CUDA GPU on this machine (runtime {rt})" if dev == "cuda" else f"{rt} cannot run on {dev}")
            if dev == "cuda" and rt == "onnxruntime":
                reason = "ONNX Runtime has no CUDA execution provider here (install onnxruntime-gpu)"
        if not reason:
            try:
                res, _ = measure_all([(art, rt)], feeds_for, batch_sizes=tuple(batch_sizes), spec=spec,
                                     threads=threads if dev == "cpu" else None, device=dev, measure_memory=False)
            except (SlimforgeError, RuntimeError) as exc:
                reason = f"failed: {str(exc).splitlines()[0][:200]}"
        if not reason and res[0].device != dev:
            reason = f"{art.name} is placed on the {res[0].device} device; it cannot run on the {dev}"
        if reason:
            rows += [DeviceRow(device=dev, batch=b, measured=False, reason=reason) for b in batch_sizes]
            continue
        for b in batch_sizes:
            t = res[0].latency_ms[b]
            items = b / t.p50 * 1000.0
            price = prices.get(dev)
            rows.append(DeviceRow(device=dev, batch=b, measured=True, p50_ms=t.p50, p95_ms=t.p95, p99_ms=t.p99,
                                  items_s=items, price_per_hour=price,
                                  cost_per_1000=cost_per_1000(price, items) if price is not None else None))
    cpu = {r.batch: r for r in rows if r.device == "cpu" and r.measured}
    return [DeviceRow(**{**r.to_dict(), "speedup_vs_cpu": cpu[r.batch].p50_ms / r.p50_ms})  # type: ignore[operator]
            if r.measured and r.batch in cpu else r for r in rows]
