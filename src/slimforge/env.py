"""The machine a result was measured on: CPU model and flags, threads, accelerators, library versions."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from typing import Any

_LIBS = ("slimforge", "torch", "numpy", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "transformers",
         "sentence-transformers", "torchao", "torch-pruning")
_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
          "amx_int8", "amx_bf16", "fma", "f16c", "neon", "asimd", "asimddp", "sve")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """CPU model name, the ISA flags that matter for inference, and core count.

    Example:
        >>> "flags" in cpu_info()
        True
    """
    model, flags, mhz, siblings, cores = platform.processor() or platform.machine(), set(), 0.0, 0, 0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key == "cpu MHz":
                    mhz = max(mhz, float(value or 0))
                elif key == "siblings" and not siblings:
                    siblings = int(value)
                elif key == "cpu cores" and not cores:
                    cores = int(value)
    except (OSError, ValueError):
        pass
    try:  # the rated maximum where the kernel says it (the MHz above may be an idle reading)
        mhz = max(mhz, int(open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read()) / 1000)
    except (OSError, ValueError):
        pass
    return {"model": model, "arch": platform.machine(), "flags": sorted(f for f in _FLAGS if f in flags),
            "logical_cores": os.cpu_count(), "ghz": round(mhz / 1000, 3) if mhz else None,
            "threads_per_core": max(1, siblings // cores) if siblings and cores else 1}


def has_cpu_flag(*names: str) -> bool:
    return any(n in cpu_info()["flags"] for n in names)


def has_vnni() -> bool:
    return has_cpu_flag("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def library_versions() -> dict[str, str]:
    out = {}
    for lib in _LIBS:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def environment(threads: int | None = None) -> dict[str, Any]:
    """Everything a report records about where it was measured."""
    import torch

    cuda = None
    if torch.cuda.is_available():
        cuda = {"device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                "version": torch.version.cuda}
    return {
        "cpu": cpu_info(),
        "threads": threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": cuda,
        "libraries": library_versions(),
    }
