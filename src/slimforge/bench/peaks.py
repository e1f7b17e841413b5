"""The device's ceilings for the roofline and MFU: peak arithmetic rate per precision and memory bandwidth.

GPUs: a table of known parts (vendor datasheets, dense tensor-core rates, no sparsity). CPUs: cores x clock x the
operations per cycle of the widest units the CPU has (AVX2, AVX-512, VNNI, AMX), and a measured copy bandwidth.

Example:
    >>> p = cpu_peaks(cores=2, ghz=2.0, flags=("avx2", "fma"))
    >>> p["gflops"]["fp32"]
    128.0
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import numpy as np

# name fragment -> (TFLOP/s by precision, memory TB/s); dense tensor-core rates of the SXM/PCIe part named
GPUS: dict[str, tuple[dict[str, float], float]] = {
    "H200": ({"fp32": 67, "tf32": 495, "bf16": 989, "fp16": 989, "fp8": 1979, "int8": 1979}, 4.8),
    "H100": ({"fp32": 67, "tf32": 495, "bf16": 989, "fp16": 989, "fp8": 1979, "int8": 1979}, 3.35),
    "A100": ({"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312, "int8": 624}, 2.0),
    "L40S": ({"fp32": 91.6, "tf32": 183, "bf16": 362, "fp16": 362, "fp8": 733, "int8": 733}, 0.864),
    "L40": ({"fp32": 90.5, "tf32": 90.5, "bf16": 181, "fp16": 181, "fp8": 362, "int8": 362}, 0.864),
    "L4": ({"fp32": 30.3, "tf32": 60, "bf16": 121, "fp16": 121, "fp8": 242, "int8": 242}, 0.3),
    "A10": ({"fp32": 31.2, "tf32": 62.5, "bf16": 125, "fp16": 125, "int8": 250}, 0.6),
    "T4": ({"fp32": 8.1, "fp16": 65, "int8": 130}, 0.32),
    "RTX 4090": ({"fp32": 82.6, "tf32": 82.6, "bf16": 165, "fp16": 165, "fp8": 330, "int8": 661}, 1.0),
}


def gpu_peaks(name: str) -> dict[str, Any]:
    """The table's entry whose name is a whole word of ``name``, the longest first ("L40S" before "L4")."""
    import re

    for key in sorted(GPUS, key=len, reverse=True):
        rates, tbs = GPUS[key]
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name, re.IGNORECASE):
            return {"device": name, "gflops": {k: v * 1000.0 for k, v in rates.items()}, "bandwidth_gbs": tbs * 1000,
                    "source": f"datasheet of the {key}"}
    return {"device": name, "gflops": {}, "bandwidth_gbs": None, "source": "not in slimforge's table of GPUs"}


def cpu_peaks(cores: int, ghz: float, flags: tuple[str, ...]) -> dict[str, Any]:
    """Peak operations per second from cores x clock x operations per cycle per core (two FMA ports)."""
    f = set(flags)
    lanes = 16 if "avx512f" in f else 8 if "avx2" in f or "avx" in f else 4  # fp32 lanes of the widest vectors
    fp32 = 2 * 2 * lanes  # 2 FMA ports x (multiply + add) x lanes
    int8 = fp32 * 4 if {"avx512_vnni", "avx_vnni"} & f else fp32 * 2  # VNNI: 4 int8 MACs a lane; else ~2x fp32
    bf16 = fp32 * 2 if "avx512_bf16" in f else fp32
    per_cycle = {"fp32": fp32, "bf16": bf16, "int8": int8}
    if "amx_int8" in f:  # one AMX unit: 1024 int8 / 512 bf16 multiply-adds a cycle
        per_cycle["int8"], per_cycle["bf16"] = 2048, 1024
    isa = "AMX" if "amx_int8" in f else "AVX-512" if lanes == 16 else "AVX2" if lanes == 8 else "SSE"
    return {"device": "cpu", "gflops": {k: cores * ghz * v for k, v in per_cycle.items()},
            "ops_per_cycle": per_cycle, "cores": cores, "ghz": ghz,
            "source": f"{cores} cores x {ghz:.2f} GHz x ops/cycle of {isa} (two FMA ports assumed)"}


@functools.lru_cache(maxsize=1)
def copy_bandwidth_gbs(mb: int = 256) -> float:
    """Measured memory bandwidth (bytes read + written per second) of a large copy, best of five."""
    a = np.ones(mb * 2**20 // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9


def device_peaks(device: str, precision: str = "fp32") -> dict[str, Any]:
    """The ceilings of ``device`` ("cpu" or "cuda"), with the peak at ``precision`` as ``peak_gflops``."""
    if device == "cuda":
        import torch

        peaks = gpu_peaks(torch.cuda.get_device_name(0))
    else:
        from slimforge.env import cpu_info

        info = cpu_info()
        logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cores = max(1, logical // int(info.get("threads_per_core") or 1))  # FMA ports belong to physical cores
        peaks = {**cpu_peaks(cores, float(info.get("ghz") or 2.0), tuple(info.get("flags") or ())),
                 "bandwidth_gbs": copy_bandwidth_gbs(), "device": str(info.get("model") or "cpu")}
    peaks["precision"] = precision
    peaks["peak_gflops"] = peaks["gflops"].get(precision) or peaks["gflops"].get("fp32")
    return peaks
