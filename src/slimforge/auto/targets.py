"""Deployment targets: which runtimes, precisions, threads and batch sizes to consider, and default goals.

Presets: ``cpu``, ``server``, ``edge``, ``mobile``, ``gpu``. A user preset is a YAML file with the same fields (and
``extends: cpu`` to start from a preset). The machine is detected so that impossible candidates are dropped: BF16
needs AVX512-BF16 or AMX on a CPU, the gpu target needs CUDA, OpenVINO must be installed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimforge.errors import ConfigError, install_hint

PRECISIONS = ("fp32", "int8", "int8-weight", "int4", "bf16", "fp16", "fp8")


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where the model will run.

    Example:
        >>> t = get_target("edge")
        >>> t.threads, t.batch_sizes
        (2, (1,))
    """

    name: str
    description: str = ""
    device: str = "cpu"
    runtimes: tuple[str, ...] = ("onnxruntime", "openvino")
    precisions: tuple[str, ...] = ("fp32", "int8")
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int | None = None  # None: all cores
    goals: dict[str, Any] = field(default_factory=dict)  # defaults, overridden by the user's goals
    training: bool = True  # pruning + distillation may be tried when training data and time allow

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ConfigError(f"target {self.name}: unknown precision(s) {bad}; choose from {list(PRECISIONS)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"target {self.name}: batch sizes must be positive, got {self.batch_sizes}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"target {self.name}: device must be cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["runtimes"], d["precisions"], d["batch_sizes"] = list(self.runtimes), list(self.precisions), list(
            self.batch_sizes)
        return d


PRESETS: dict[str, Target] = {
    "cpu": Target(name="cpu", description="a CPU machine, latency at batch 1 and throughput at batch 32",
                  runtimes=("onnxruntime", "openvino", "torch"),
                  precisions=("fp32", "int8", "int8-weight", "bf16"), batch_sizes=(1, 32),
                  goals={"max_accuracy_drop": "1%"}),
    "server": Target(name="server", description="a many-core server CPU, batched throughput",
                     runtimes=("openvino", "onnxruntime", "torch"),
                     precisions=("fp32", "int8", "int8-weight", "bf16"), batch_sizes=(8, 64),
                     goals={"max_accuracy_drop": "1%"}),
    "edge": Target(name="edge", description="an edge box: few cores, batch 1, small memory",
                   runtimes=("onnxruntime", "openvino"), precisions=("fp32", "int8", "int8-weight", "int4"),
                   batch_sizes=(1,), threads=2, goals={"max_accuracy_drop": "1%"}),
    "mobile": Target(name="mobile", description="a phone-class device: one thread, batch 1, small file",
                     runtimes=("onnxruntime",), precisions=("fp32", "int8", "int4"), batch_sizes=(1,), threads=1,
                     goals={"max_accuracy_drop": "2%"}),
    "gpu": Target(name="gpu", description="an NVIDIA GPU: latency at batch 1, throughput at 32 and 256",
                  device="cuda", runtimes=("torch",), precisions=("fp32", "fp16", "bf16", "fp8", "int8"),
                  batch_sizes=(1, 32, 256), training=True,
                  goals={"max_accuracy_drop": "1%"}),
}


def get_target(spec: str | Path | Target) -> Target:
    """A preset name, a YAML file of a user preset, or a Target."""
    if isinstance(spec, Target):
        return spec
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        return load_target(path)
    raise ConfigError(f"unknown target {text!r}: choose one of {sorted(PRESETS)} or give a preset YAML file")


def load_target(path: Path) -> Target:
    """A user preset from YAML, e.g. ``{name: kiosk, extends: edge, threads: 4, goals: {max_latency_ms: 20}}``."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the target preset ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a target preset is a mapping of fields "
                          f"({[f.name for f in dataclasses.fields(Target)]})")
    base = PRESETS.get(str(data.pop("extends", "cpu")))
    if base is None:
        raise ConfigError(f"{path}: 'extends' must be one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(Target)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; a preset has {sorted(known)}")
    for key in ("runtimes", "precisions", "batch_sizes"):
        if key in data:
            data[key] = tuple(data[key]) if isinstance(data[key], (list, tuple)) else (data[key],)
    if "goals" in data:
        data["goals"] = {**base.goals, **dict(data["goals"])}
    data.setdefault("name", Path(path).stem)
    return dataclasses.replace(base, **data)


@dataclass(frozen=True)
class Machine:
    """What this machine can run."""

    cpu: str
    flags: tuple[str, ...]
    cuda: bool
    cuda_name: str | None
    fp8: bool
    runtimes: tuple[str, ...]

    @property
    def vnni(self) -> bool:
        return any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp"))

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in ("avx512_bf16", "amx_bf16"))

    @property
    def amx(self) -> bool:
        return "amx_int8" in self.flags or "amx_bf16" in self.flags

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "flags": list(self.flags), "vnni": self.vnni, "bf16": self.bf16, "amx": self.amx,
                "cuda": self.cuda, "cuda_name": self.cuda_name, "fp8": self.fp8, "runtimes": list(self.runtimes)}


def detect_machine() -> Machine:
    import torch

    from slimforge.env import cpu_info
    from slimforge.runtimes import available_runtimes

    info = cpu_info()
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else None
    fp8 = cuda and torch.cuda.get_device_capability(0) >= (8, 9)
    return Machine(cpu=str(info["model"]), flags=tuple(info["flags"]), cuda=cuda, cuda_name=name, fp8=fp8,
                   runtimes=tuple(available_runtimes()))


def feasible(target: Target, machine: Machine) -> tuple[Target, list[str]]:
    """The target narrowed to what this machine can do, and a line for each thing dropped."""
    notes: list[str] = []
    if target.device == "cuda" and not machine.cuda:
        raise ConfigError(f"target {target.name} needs a CUDA GPU and this machine has none; use --target cpu")
    runtimes = tuple(r for r in target.runtimes if r in machine.runtimes)
    for r in target.runtimes:
        if r not in runtimes:
            notes.append(f"runtime {r} dropped: not installed ({install_hint(r)})")
    if not runtimes:
        raise ConfigError(f"target {target.name}: none of its runtimes {list(target.runtimes)} is installed")
    precisions = list(target.precisions)
    if target.device == "cpu" and "bf16" in precisions and not machine.bf16:
        precisions.remove("bf16")
        notes.append("bf16 dropped: this CPU has neither AVX512-BF16 nor AMX")
    if target.device == "cpu" and "fp16" in precisions:
        precisions.remove("fp16")
        notes.append("fp16 dropped: CPUs emulate it (slower than fp32)")
    if "fp8" in precisions and not machine.fp8:
        precisions.remove("fp8")
        notes.append("fp8 dropped: needs an NVIDIA GPU of compute capability 8.9+")
    if "int8" in precisions and target.device == "cpu" and not machine.vnni:
        notes.append("this CPU has no VNNI/AMX: INT8 may not beat fp32 (the search measures it)")
    return dataclasses.replace(target, runtimes=runtimes, precisions=tuple(precisions)), notes
