"""PyTorch model files: which kind a file is, state dicts built into their class (``arch``), TorchScript, and
``torch.export`` programs (``.pt2``) loaded as modules every technique can edit.

Three forms hold a PyTorch model on disk, and each is loaded for what it can do:

- a state dict (``torch.save(model.state_dict())``) plus the class that makes the module (``arch``, imported by
  dotted path ``package.module:Class``): the user's own ``nn.Module``, weights read with ``weights_only=True``;
- a ``torch.export`` program (``.pt2``): unflattened back into a module hierarchy of ``torch.nn`` layers, editable;
- TorchScript: runs (benchmark, export, quantize for ONNX Runtime or OpenVINO), but its structure cannot be edited.

A whole pickled module (``torch.save(model)``) is refused: loading it would run code from the file.
"""

from __future__ import annotations

import importlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

from slimforge.core.artifact import Artifact, Format, IOSpec, TensorSpec
from slimforge.errors import ConfigError, ModelLoadError, UnsupportedModelError
from slimforge.io.artifacts import (examples_from, file_digest, first_line, forward_names, make_meta, module_digest,
                                    torch_artifact)

TORCHSCRIPT, TORCH_SAVE, PROGRAM = "TorchScript", "torch.save", "torch.export"

# the forms a structural edit (prune, fuse, lowrank, distill's student) can work on, named in every refusal
EDITABLE_FORMS = ("--arch package.module:Class --weights state_dict.pth (Python: slimforge.load(path, arch=Class)) "
                  "or a torch.export .pt2 file")


def torch_file_kind(path: str | Path) -> str | None:
    """``TorchScript``, ``torch.save`` (a pickle: state dict or whole object) or ``torch.export``, from the archive's
    entry names alone (nothing is unpickled); None when the file is none of them.

    Example:
        >>> import torch, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "w.pth")
        >>> torch.save(torch.nn.Linear(2, 2).state_dict(), p)
        >>> torch_file_kind(p)
        'torch.save'
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        tails = {n.split("/", 1)[-1] for n in names}
        if "constants.pkl" in tails:
            return TORCHSCRIPT
        if "archive_format" in tails or "models/model.json" in tails:
            return PROGRAM
        return TORCH_SAVE if "data.pkl" in tails else None
    with open(path, "rb") as f:
        return TORCH_SAVE if f.read(1) == b"\x80" else None  # the legacy (pre-zip) torch.save pickle


def not_editable(name: str, verb: str, *, why: str = "TorchScript is a fixed program: it runs, benchmarks, exports "
                                                    "and quantizes for ONNX Runtime or OpenVINO, but is not edited"
                 ) -> UnsupportedModelError:
    """The one refusal of a structural edit (``verb``: prune, fuse, lowrank, distill) on a model whose structure is
    fixed; it names the forms that work."""
    action = "distill trains the student" if verb == "distill" else f"{verb} edits the model's structure"
    return UnsupportedModelError(f"{action}, which {name} does not allow ({why}); give the model as {EDITABLE_FORMS}")


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a state dict file (``weights_only=True``), also from a checkpoint that nests one under
    ``state_dict``, ``model_state_dict`` or ``model``; ``module.`` prefixes (DataParallel) are dropped."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text or "weights_only" in text.replace(" ", "_").lower():
            raise ModelLoadError(
                f"{path}: a pickled Python object (torch.save of a whole model?); slimforge does not run code from "
                f"model files: save model.state_dict() and pass --arch package.module:Class, or save a torch.export "
                f".pt2") from exc
        raise ModelLoadError(f"{path}: cannot be read by torch.load; the file is truncated or corrupt") from exc
    sd = _tensors(obj)
    if sd is None:
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def _tensors(obj: Any) -> dict[str, Any] | None:
    import torch

    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in ("state_dict", "model_state_dict", "model"):
            inner = _tensors(obj.get(key)) if key in obj else None
            if inner:
                return inner
    return None


def import_arch(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """The class or function named ``package.module:Name`` (or ``package.module.Name``), imported with the current
    folder on ``sys.path`` as ``python -m`` has it; a class or callable is returned as it is."""
    if callable(ref):
        return ref
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"--arch must name a class as package.module:Class, got {ref!r}")
    module_name, sep, attr = ref.partition(":")
    if not sep:
        module_name, _, attr = ref.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"--arch must name a class as package.module:Class, got {ref!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"--arch {ref}: cannot import {module_name} from {Path.cwd()} or the installed packages: "
                          f"{first_line(exc)}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--arch {ref}: {module_name} has no {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--arch {ref}: {attr} is not a class or function")
    return obj


def build_module(path: Path, arch: str | Callable[..., Any], arch_kwargs: Mapping[str, Any] | str | None) -> Any:
    """The module ``arch(**arch_kwargs)`` with the state dict at ``path`` loaded strictly, in eval mode."""
    import torch

    factory = import_arch(arch)
    kwargs = parse_arch_kwargs(arch_kwargs)
    label = arch if isinstance(arch, str) else getattr(arch, "__qualname__", repr(arch))
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise ConfigError(f"--arch {label}: calling it with {kwargs or 'no arguments'} failed: {first_line(exc)}"
                          + ("; pass its arguments with --arch-kwargs JSON" if not kwargs else "")) from exc
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"--arch {label} made a {type(module).__name__}, not a torch.nn.Module")
    sd = read_state_dict(path)
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and sd[k].shape != own[k].shape]
    if missing or extra or wrong:
        parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(extra)}" if extra else "",
                 f"other shapes: {_few(wrong)}" if wrong else ""]
        raise ModelLoadError(f"{path}: does not fit {label}: " + "; ".join(p for p in parts if p) +
                             (" (a pruned model no longer has its class's shapes: save it as .pt2)" if wrong else ""))
    module.load_state_dict(sd, strict=True)
    return module.eval()


def _few(items: list[str]) -> str:
    return ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")


def parse_arch_kwargs(value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """``--arch-kwargs`` as a dict: a mapping as it is, a JSON object string parsed."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"--arch-kwargs must be a JSON object such as '{{\"classes\": 10}}', got {value!r}") from exc
    if not isinstance(parsed, dict):
        raise ConfigError(f"--arch-kwargs must be a JSON object, got {value!r}")
    return parsed


# ---------------------------------------------------------------- loaders


def load_arch(path: Path, *, arch: Any, arch_kwargs: Any, example_inputs, input_names, input_shapes, name,
              task) -> Artifact:
    """A state dict built into its class: an ordinary, editable PyTorch module."""
    kind = torch_file_kind(path)
    if kind in (TORCHSCRIPT, PROGRAM):
        raise ConfigError(f"--arch builds a module from a state dict; {path.name} is a {kind} file, which holds its "
                          "architecture already: drop --arch")
    module = build_module(path, arch, arch_kwargs)
    if example_inputs is None and not input_shapes:
        raise ConfigError(f"{path}: a state dict does not record input shapes; pass --input-shape "
                          "NAME:1x3x224x224 (CLI) or example_inputs=... (API)")
    examples = examples_from(example_inputs, input_names or forward_names(module), input_shapes, module)
    return torch_artifact(module, examples, fmt=Format.TORCH, path=path,
                          meta=make_meta(name or path.stem, task, module),
                          source_id=f"arch:{file_digest(path)}:{module_digest(module)}")


def load_torch_file(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    """A ``.pt``/``.pth``: TorchScript, a torch.export program under another name, or a state dict (which needs
    ``arch``)."""
    kind = torch_file_kind(path)
    if kind == PROGRAM:
        return load_program(path, example_inputs=example_inputs, input_names=input_names, input_shapes=input_shapes,
                            name=name, task=task)
    if kind == TORCH_SAVE:
        sd = read_state_dict(path)
        raise ModelLoadError(f"{path}: a state dict ({len(sd)} tensors: weights without their architecture); add "
                             "--arch package.module:Class (and --input-shape) to build the model it belongs to "
                             "(Python: slimforge.load(path, arch=Class, example_inputs=...))")
    return load_torchscript(path, example_inputs=example_inputs, input_names=input_names, input_shapes=input_shapes,
                            name=name, task=task)


def load_torchscript(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    try:
        import torch

        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot be read as TorchScript; the file is truncated, corrupt, or not "
                             f"TorchScript (save with torch.jit.save, or pass the nn.Module itself)") from exc
    names = list(input_names or [a.name for a in module.forward.schema.arguments[1:]])
    if example_inputs is None and not input_shapes:
        example_inputs = _saved_examples(path)
    if example_inputs is None and not input_shapes:
        raise ConfigError(f"{path}: TorchScript files do not record input shapes; pass example_inputs=... "
                          "(API) or --input-shape NAME:1x3x224x224 (CLI)")
    examples = examples_from(example_inputs, names, input_shapes, None)
    return torch_artifact(module, examples, fmt=Format.TORCHSCRIPT, path=path,
                          meta=make_meta(name or path.stem, task, module), source_id=f"file:{file_digest(path)}")


def _saved_io(path: Path) -> IOSpec | None:
    """The inputs slimforge recorded beside a file it wrote (None when there is no sidecar)."""
    from slimforge.io.sidecar import read_sidecar

    try:
        inputs = read_sidecar(path)["io"]["inputs"]
        return IOSpec(tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in inputs))
    except (KeyError, TypeError, ValueError):
        return None


def _saved_examples(path: Path) -> dict[str, Any] | None:
    """Inputs made from the IO spec slimforge saved beside a file it wrote (None when there is none)."""
    from slimforge.io.sidecar import read_sidecar
    from slimforge.io.synth import synthesize

    io = _saved_io(path)
    return None if io is None else synthesize(io, batch=1, seq=16, meta=read_sidecar(path).get("meta") or {})


def load_program(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    """A ``torch.export`` program, unflattened into an editable module (``Format.TORCH``) when that reproduces it,
    else the program's flat module (``Format.TORCH_EXPORT``: it runs and exports, but is not edited). A GPU engine
    (an AOTInductor package, ``io.engine``) loads as a runnable artifact."""
    from slimforge.io.engine import is_engine

    if is_engine(path):
        return _load_engine(path, example_inputs=example_inputs, input_names=input_names, input_shapes=input_shapes,
                            name=name, task=task)
    try:
        import torch

        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot be read as a torch.export program (.pt2); the file is truncated, "
                             f"corrupt, or was not written by torch.export.save: {first_line(exc)}") from exc
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    saved_io = _saved_io(path)  # the names slimforge saved beside it (a forward(*tensors) has none of its own)
    names = list(input_names or (saved_io.input_names if saved_io and len(saved_io.inputs) == len(names) else names))
    if example_inputs is None and not input_shapes:
        saved = getattr(program, "example_inputs", None)
        if saved is not None and saved[0]:
            example_inputs = tuple(saved[0])
        else:
            raise ConfigError(f"{path}: this program has no saved example inputs; pass example_inputs=...")
    if saved_io is not None and names == saved_io.input_names and isinstance(example_inputs, (tuple, list)):
        example_inputs = dict(zip(names, example_inputs))  # the names as saved, never renamed
    examples = examples_from(example_inputs, names, input_shapes, None)
    from slimforge.io.programs import editable_module

    module, why = editable_module(program, examples)
    meta = make_meta(name or path.stem, task, None)
    if module is None:
        module, meta["not_editable"] = program.module(), why
    return torch_artifact(module, examples, fmt=Format.TORCH if not why else Format.TORCH_EXPORT, path=path,
                          meta=meta, source_id=f"file:{file_digest(path)}")


def _load_engine(path: Path, *, example_inputs, input_names, input_shapes, name, task) -> Artifact:
    from slimforge.io.engine import load_engine
    from slimforge.io.sidecar import read_sidecar

    side = read_sidecar(path)
    saved_io = _saved_io(path)
    if example_inputs is None and not input_shapes:
        example_inputs = _saved_examples(path)
        if example_inputs is None:
            raise ConfigError(f"{path}: a GPU engine without its .slimforge.json sidecar; pass example_inputs=... "
                              "(or --input-shape)")
    names = list(input_names or (saved_io.input_names if saved_io else [f"input_{i}" for i in
                                                                        range(len(example_inputs or input_shapes))]))
    examples = examples_from(example_inputs, names, input_shapes, None)
    meta = {**(side.get("meta") or {}), **make_meta(name or path.stem, task or (side.get("meta") or {}).get("task"),
                                                     None)}
    return load_engine(path, examples=examples, meta=meta, source_id=f"file:{file_digest(path)}", io_spec=saved_io)
