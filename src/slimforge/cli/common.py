"""What every command shares: argument types, and the parsing of batches, durations and models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from slimforge.errors import ConfigError

ModelArg = Annotated[Optional[str], typer.Argument(help="Model: ONNX file, HF folder, torch.export .pt2, TorchScript "
                                                        ".pt, a state dict with --arch, OpenVINO .xml. Default: the "
                                                        "bundled all-MiniLM-L6-v2.")]
Arch = Annotated[Optional[str], typer.Option(
    "--arch", help="package.module:Class (or a function) that builds the nn.Module whose state dict MODEL (or "
                   "--weights) holds; imported with the current folder on the path, as python -m does.")]
Weights = Annotated[Optional[Path], typer.Option(
    "--weights", help="A state dict file (torch.save(model.state_dict())) for --arch; the same as giving it as MODEL.")]
ArchKwargs = Annotated[Optional[str], typer.Option(
    "--arch-kwargs", help='Keyword arguments for --arch as a JSON object, e.g. \'{"classes": 10}\'.')]
Force = Annotated[bool, typer.Option(
    "--force", help="Write into an output folder that holds other files (slimforge replaces only what it wrote "
                    "there; other files are never touched).")]
InputShape = Annotated[Optional[list[str]], typer.Option("--input-shape", help="NAME:1x3x224x224 (repeatable)")]
Task = Annotated[Optional[str], typer.Option(
    help="What the model does, which decides how quality is judged: classification | detection | segmentation | "
         "image-to-image | embedding | sequence | stateful | generic (default: detected from the outputs).")]
Preprocess = Annotated[Optional[str], typer.Option(
    help="Image preprocessing for --data image folders: 'layout=NHWC order=BGR scale=1/255 mean=0.485,0.456,0.406 "
         "std=0.229,0.224,0.225 size=224x224 resize=256', or a YAML file with those keys.")]


def with_overrides(art: Any, task: str | None, preprocess: str | None) -> Any:
    """The loaded model with the user's --task and --preprocess."""
    from slimforge.io.inputs import with_overrides as apply

    return apply(art, task=task, preprocess=preprocess)


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,32"`` -> ``(1, 32)``; one clear error otherwise."""
    try:
        values = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ConfigError(f"--batch must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--batch values must be positive, got {text!r}")
    return values


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"900"`` -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", text)
    if not m:
        raise ConfigError(f"--time-budget: cannot read {text!r}; write e.g. 90s, 15m or 1h")
    return float(m.group(1)) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def drop(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip().rstrip("%"))
    except ValueError:
        raise ConfigError(f"--max-drop must be a number such as 0.5 or 0.5%, got {text!r}") from None


def model_source(model: str | None, weights: Path | None, *, what: str = "MODEL") -> str | None:
    """The model path from the positional argument or ``--weights`` (one of them, or both naming the same file)."""
    if weights is not None and model is not None and Path(model).resolve() != weights.resolve():
        raise ConfigError(f"give the state dict once: {what} {model} and --weights {weights} name different files")
    return str(weights) if weights is not None else model


def load_model(model: str | None, input_shape: list[str] | None, *, arch: str | None = None,
               arch_kwargs: str | None = None, weights: Path | None = None, edits: str | None = None,
               what: str = "MODEL") -> Any:
    """Load the model a command names: a path, or a state dict with ``--arch``; the bundled model when none.
    ``edits`` names a command that changes the structure: TorchScript is refused before it is read."""
    from slimforge.io.models import default_model_path, load
    from slimforge.io.synth import parse_shape_sets

    source = model_source(model, weights, what=what)
    if arch is None and (weights is not None or arch_kwargs is not None):
        raise ConfigError(f"--weights and --arch-kwargs go with --arch package.module:Class (for {what})")
    if source is None and arch is not None:
        raise ConfigError(f"--arch {arch} needs the state dict to load into it: give it as {what} or --weights FILE")
    if edits and source and arch is None:
        from slimforge.io.torch_files import TORCHSCRIPT, not_editable, torch_file_kind

        path = Path(source)
        if path.is_file() and path.stat().st_size and torch_file_kind(path) == TORCHSCRIPT:
            raise not_editable(path.name, edits)
    sets = parse_shape_sets(input_shape)
    art = load(source or default_model_path(), input_shapes=sets[0] if sets else None, arch=arch,
               arch_kwargs=arch_kwargs)
    if len(sets) > 1:  # further sizes: verified, and timed side by side with the baseline in a search
        import dataclasses

        extra = [{k: list(v) for k, v in s.items()} for s in sets[1:]]
        art = dataclasses.replace(art, meta={**art.meta, "extra_shapes": extra})
    return art


def load_models(models: list[str] | None, input_shape: list[str] | None, *, arch: str | None,
                weights: Path | None, arch_kwargs: str | None) -> list[Any]:
    """The models of ``benchmark``: ``--weights`` first, then each of MODELS; ``--arch`` builds every state dict."""
    from slimforge.io.torch_files import TORCH_SAVE, torch_file_kind

    def is_state_dict(m: str) -> bool:
        path = Path(m)
        return path.is_file() and path.suffix.lower() not in (".onnx", ".xml") and torch_file_kind(path) == TORCH_SAVE

    if arch is None and (weights is not None or arch_kwargs is not None):
        raise ConfigError("--weights and --arch-kwargs go with --arch package.module:Class")
    sources: list[str | None] = ([str(weights)] if weights else []) + list(models or ([] if weights else [None]))
    built = [arch is not None and m is not None and (m == str(weights) or is_state_dict(m)) for m in sources]
    return [load_model(m, input_shape, arch=arch if b else None, arch_kwargs=arch_kwargs if b else None)
            for m, b in zip(sources, built)]
