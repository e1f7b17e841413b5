"""What every command shares: argument types, and the parsing of batches, durations and models."""

from __future__ import annotations

import re
from typing import Annotated, Any, Optional

import typer

from slimforge.errors import ConfigError

ModelArg = Annotated[Optional[str], typer.Argument(help="Model: ONNX file, HF folder, TorchScript .pt, .pt2, "
                                                        "OpenVINO .xml. Default: the bundled all-MiniLM-L6-v2.")]
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


def load_model(model: str | None, input_shape: list[str] | None) -> Any:
    from slimforge.io.models import default_model_path, load
    from slimforge.io.synth import parse_input_shapes

    return load(model or default_model_path(), input_shapes=parse_input_shapes(input_shape) or None)
