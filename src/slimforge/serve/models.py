"""The models a server holds: versions of one model, a fallback, and the preprocessing each needs.

Preprocessing comes from the model's own metadata, through the same code as evaluation (``TextEncoder`` for text,
``load_image`` for images), so served outputs equal offline outputs.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimforge.core.artifact import Artifact, Format
from slimforge.errors import DataError, InputError, SlimforgeError
from slimforge.serve.batcher import Batcher
from slimforge.serve.images import fixed_hw, is_dense, is_image_spec, to_png, upload_size
from slimforge.serve.limits import TokenLimits, token_limits

log = logging.getLogger(__name__)

V2_TYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64", "int32": "INT32",
            "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
NP_TYPES = {v: k for k, v in V2_TYPES.items()}


class ImageTooLarge(Exception):
    """A decompression bomb (or just too many pixels): answered with 413."""


@dataclass
class ServedModel:
    name: str
    version: str
    artifact: Artifact
    runtime: str
    session: Any
    batcher: Batcher | None = None
    report: dict[str, Any] | None = None
    _text: Any = None
    _image_pre: dict[str, Any] | None = None
    _limits: TokenLimits | None = None

    @property
    def kind(self) -> str:
        pre = self.artifact.meta.get("preprocess") or {}
        if pre.get("kind") == "text":
            return "text"
        spec = self.artifact.io.inputs[0]
        if len(self.artifact.io.inputs) == 1 and len(spec.shape) == 4 and spec.dtype.startswith("float"):
            return "image"
        return "tensor"

    @property
    def task(self) -> str:
        return str(self.artifact.meta.get("task") or "generic")

    @property
    def token_limits(self) -> TokenLimits:
        """Bounds of the token-id inputs and the longest sequence (read once from the model)."""
        if self._limits is None:
            self._limits = token_limits(self.artifact)
        return self._limits

    def _encoder(self) -> Any:
        if self.kind != "text":
            raise InputError(f"model {self.name} takes tensors {self.artifact.io.input_names}, not text")
        if self._text is None:
            from slimforge.io.data import TextEncoder

            self._text = TextEncoder(self.artifact, what=f"model {self.name}")
        return self._text

    def text_limit(self, asked: int | None) -> int:
        """Tokens per text: the server's cap, never more than the tokenizer's and the position table's."""
        own = [int(self._encoder().max_length)]
        if self.token_limits.max_positions:
            own.append(int(self.token_limits.max_positions))
        return min([*own, *([int(asked)] if asked else [])])

    def token_counts(self, texts: list[str]) -> list[int]:
        return self._encoder().lengths(texts)

    def encode_text(self, texts: list[str], *, max_length: int | None = None) -> dict[str, np.ndarray]:
        return self._encoder()(texts, max_length=max_length)

    def _open_image(self, raw: bytes, max_pixels: int) -> Any:
        from PIL import Image, UnidentifiedImageError

        if self.kind != "image":
            raise InputError(f"model {self.name} does not take images; its inputs are {self.artifact.io.input_names}")
        try:
            img = Image.open(io.BytesIO(raw))  # reads the header only
        except Image.DecompressionBombError as exc:  # PIL's own guard (far above ours by default)
            raise ImageTooLarge(str(exc)) from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"not a readable image ({type(exc).__name__}: {exc})") from exc
        w, h = img.size
        if w * h > max_pixels:
            raise ImageTooLarge(f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}")
        return img

    def image_pixels(self, raw: bytes, max_pixels: int) -> int:
        """Pixels of an image, from its header (nothing decoded)."""
        w, h = self._open_image(raw, max_pixels).size
        return int(w) * int(h)

    @property
    def image_pre(self) -> dict[str, Any]:
        """The model's image preprocessing (its own, or derived from its input: resize, rescale, normalise)."""
        if self._image_pre is None:
            from slimforge.io.data import image_preprocess_for

            self._image_pre = image_preprocess_for(self.artifact)
        return self._image_pre

    @property
    def keeps_upload_size(self) -> bool:
        """Uploads are fed at their own size: the model's height or width is dynamic, its output is an image or a
        map that follows them (image-to-image, dense prediction), and it declares no resize of its own. Classifiers
        and embedders (dynamic only through global pooling) get the size they were loaded with, and a declared
        preprocessing (e.g. resize 256 + crop 224) is followed as declared."""
        declared = (self.artifact.meta.get("preprocess") or {}).get("kind") == "image"
        return (self.kind == "image" and not declared and None in fixed_hw(self.artifact.io.inputs[0])
                and is_dense(self.artifact.io))

    def decode_image(self, raw: bytes, max_pixels: int) -> np.ndarray:
        """``[C, H, W]`` float32 through the model's own image preprocessing; refuses bombs before decoding. A model
        with dynamic height/width takes the upload at its own size (``keeps_upload_size``)."""
        from slimforge.io.data import load_image

        img = self._open_image(raw, max_pixels)
        pre = self.image_pre
        if self.keeps_upload_size:
            pre = {**pre, "size": upload_size(self.artifact.io.inputs[0], *img.size)}
        try:
            return load_image(img, pre)
        except DataError as exc:
            raise DataError(f"not a readable image ({str(exc).split(': ', 1)[-1]})") from None

    def output_images(self, outputs: list[np.ndarray]) -> list[bytes] | None:
        """Each row of the first output as PNG when that output is an image (an image-to-image model), else None."""
        out = outputs[0] if outputs else None
        spec = self.artifact.io.outputs[0] if self.artifact.io.outputs else None
        if (self.kind != "image" or out is None or spec is None or not is_image_spec(spec) or out.ndim != 4
                or out.shape[1] not in (1, 3, 4)):
            return None
        return [to_png(row, self.image_pre) for row in out]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(feeds)

    def postprocess(self, outputs: list[np.ndarray]) -> list[Any]:
        """Per-row predictions people read: top classes with probabilities for classifiers, the vector for embedding
        models, a PNG (base64) for image-to-image models, else None."""
        out = outputs[0]
        if self.task == "embedding":
            return [{"embedding": row.tolist()} for row in out]
        pngs = self.output_images(outputs)
        if pngs is not None:
            return [{"image": base64.b64encode(png).decode("ascii"), "media_type": "image/png",
                     "height": int(out.shape[2]), "width": int(out.shape[3])} for png in pngs]
        if self.task == "classification" or (self.task == "generic" and out.ndim == 2 and 1 < out.shape[1] <= 1000
                                             and self.kind == "image"):
            z = out - out.max(axis=1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            labels = self.artifact.meta.get("labels")
            preds = []
            for row in p:
                top = np.argsort(-row)[:5]
                preds.append({"label": (labels[int(top[0])] if labels else int(top[0])), "score": float(row[top[0]]),
                              "top": [{"label": labels[int(i)] if labels else int(i), "score": float(row[i])}
                                      for i in top]})
            return preds
        return [None] * len(out)

    def metadata_v2(self) -> dict[str, Any]:
        """KServe v2 model metadata."""

        def spec(t: Any) -> dict[str, Any]:
            return {"name": t.name, "datatype": V2_TYPES.get(t.dtype, t.dtype.upper()),
                    "shape": [d if isinstance(d, int) and d > 0 else -1 for d in t.shape]}

        platform = {Format.ONNX: "onnxruntime_onnx", Format.OPENVINO: "openvino"}.get(self.artifact.format,
                                                                                       "pytorch_libtorch")
        return {"name": self.name, "versions": [self.version], "platform": platform,
                "inputs": [spec(t) for t in self.artifact.io.inputs],
                "outputs": [spec(t) for t in self.artifact.io.outputs]}

    def summary(self) -> dict[str, Any]:
        rep = self.report or {}
        chosen = rep.get("chosen") or {}
        comparison = rep.get("comparison") or {}
        return {"name": self.name, "version": self.version, "format": self.artifact.format.value,
                "runtime": self.runtime, "kind": self.kind, "task": self.task,
                "precision": self.artifact.meta.get("precision", "fp32"),
                "inputs": [t.name for t in self.artifact.io.inputs],
                "outputs": [t.name for t in self.artifact.io.outputs],
                "lineage": [s.name for s in self.artifact.lineage],
                "optimization": {k: v for k, v in {
                    "chosen": chosen.get("name"), "speedup_p50": chosen.get("speedup_p50")
                    or comparison.get("speedup_p50"), "goals_met": rep.get("goals_met"),
                    "verification": (rep.get("verification") or {}).get("detail")}.items() if v is not None}}


def _find_report(folder: Path) -> dict[str, Any] | None:
    """The optimize report (search or fixed recipe) in ``folder``, if any."""
    for name in ("search.json", "report.json"):
        p = folder / name
        if p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    return None


def resolve_artifact_path(path: Path) -> Path:
    """A model file, or an output folder of ``optimize`` (its chosen artifact)."""
    if path.is_dir():
        rep = _find_report(path)
        chosen = ((rep or {}).get("chosen") or {}).get("path")
        if chosen and Path(chosen).exists():
            return Path(chosen)
        if chosen and (path / Path(chosen).name).exists():
            return path / Path(chosen).name
        art = (rep or {}).get("artifact", {}).get("path") if rep else None
        if art and Path(art).exists():
            return Path(art)
        models = sorted(p for p in path.iterdir() if p.suffix in (".onnx", ".xml") and not p.name.startswith("."))
        if (path / "config.json").exists() or (path / "modules.json").exists():
            return path  # a Hugging Face / sentence-transformers folder
        if len(models) == 1:
            return models[0]
        raise DataError(f"{path}: a folder to serve must hold an optimize report (search.json / report.json), one "
                        f"model file or a Hugging Face model; found {[m.name for m in models]}")
    return path


def open_model(path: str | Path, *, name: str | None, version: str, runtime: str | None,
               threads: int | None, input_shapes: list[str] | None = None) -> ServedModel:
    from slimforge.io.models import load
    from slimforge.io.synth import parse_shape_sets
    from slimforge.runtimes import default_runtime, open_session

    p = resolve_artifact_path(Path(path))
    sets = parse_shape_sets(input_shapes)
    art = reapply_on_load(load(p, input_shapes=sets[0] if sets else None))
    rt = runtime or art.meta.get("runtime") or default_runtime(art)
    if art.format is Format.OPENVINO:
        rt = "openvino"
    session = open_session(art, rt, threads=threads)
    return ServedModel(name or art.name, version, art, rt, session, report=_find_report(p.parent))


def reapply_on_load(art: Artifact) -> Artifact:
    """A GPU search whose engine could not be compiled writes the original model with the winner's steps in its
    sidecar (``reapply_on_load``): they are applied again here, on the GPU, so the server runs the winner. Without a
    GPU the original is served as it is, and the log says so."""
    steps = art.meta.get("reapply_on_load")
    if not steps:
        return art
    import torch

    from slimforge.core.context import RunContext
    from slimforge.plan.engine import run_steps
    from slimforge.plan.recipe import Recipe

    recipe = Recipe.from_dict({"steps": steps, "runtime": "torch"})
    if not torch.cuda.is_available():
        log.warning("%s: its steps (%s) are for a GPU and this machine has none: serving the original model",
                    art.name, ", ".join(s.kind for s in recipe.steps))
        return art
    log.info("%s: applying its steps again on the GPU (%s)", art.name, ", ".join(s.kind for s in recipe.steps))
    return run_steps(art, recipe, RunContext())


@dataclass
class ModelSet:
    """Versions of the served model and an optional fallback; ``degraded`` says why the fallback is in use."""

    name: str
    versions: dict[str, ServedModel] = field(default_factory=dict)
    default_version: str | None = None
    fallback: ServedModel | None = None
    load_errors: dict[str, str] = field(default_factory=dict)
    last_error: str | None = None
    fallback_uses: int = 0

    def get(self, version: str | None) -> ServedModel:
        if version is not None and str(version) not in self.versions:
            if str(version) in self.load_errors and self.fallback is not None:
                return self.fallback
            raise KeyError(f"model {self.name} has no version {version!r}; versions: {sorted(self.versions)}")
        v = str(version) if version is not None else self.default_version
        if v is None or v not in self.versions:
            if self.fallback is not None:
                return self.fallback
            raise KeyError(f"model {self.name} has no loaded version")
        return self.versions[v]

    @property
    def degraded(self) -> bool:
        """A version failed to load (the fallback stands in): a fact about the server, never about one request."""
        return bool(self.load_errors)

    def all_models(self) -> list[ServedModel]:
        return [*self.versions.values(), *([self.fallback] if self.fallback else [])]


def load_model_set(paths: list[str], *, name: str | None = None, fallback: str | None = None,
                   runtime: str | None = None, threads: int | None = None,
                   input_shapes: list[str] | None = None) -> ModelSet:
    """``paths`` are the versions, in order (``PATH`` or ``VERSION=PATH``); a version that fails to load is recorded
    and, with a fallback, the server starts degraded instead of not at all."""
    ms = ModelSet(name or "model")
    for i, spec in enumerate(paths, start=1):
        version, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        version = version or str(i)
        try:
            m = open_model(path, name=name, version=version, runtime=runtime, threads=threads,
                           input_shapes=input_shapes)
        except (SlimforgeError, OSError) as exc:
            if fallback is None:
                raise
            ms.load_errors[version] = f"{type(exc).__name__}: {exc}"
            log.error("version %s (%s) failed to load: %s", version, path, exc)
            continue
        ms.versions[version] = m
        ms.default_version = version
        if name is None and ms.name == "model":
            ms.name = m.name
    if fallback is not None:
        fb = open_model(fallback, name=None, version="fallback", runtime=None, threads=threads)
        fb.name = ms.name if ms.name != "model" else fb.name
        ms.fallback = fb
        if ms.name == "model":
            ms.name = fb.name
    for m in ms.all_models():
        m.name = ms.name
    return ms
