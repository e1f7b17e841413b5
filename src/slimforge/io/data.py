"""Calibration and evaluation data, produced lazily in batches so memory stays bounded.

Sources: a folder of images (labels from sub-folder names), a text file (one sentence per line), ``.npy``/``.npz``,
and CSV. Preprocessing (tokenizer, image size and normalisation) comes from the model's metadata.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

import numpy as np

from slimforge.core.artifact import Artifact
from slimforge.errors import DataError, require

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LABEL_KEYS = ("labels", "label", "y", "target", "targets")


@dataclass
class Batch:
    """Model feeds for one batch, with labels and the raw items (sentences, file names) when known."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    items: list[Any] = field(default_factory=list)


class Dataset(Protocol):
    name: str

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]: ...


def bundled_sentences_path() -> Path:
    """The bundled file of 2,884 real English sentences (from Python standard library docstrings)."""
    return Path(__file__).resolve().parent.parent / "data" / "sentences.txt"


class TextEncoder:
    """A text model's own tokenizer (from its metadata): texts -> padded feeds. Evaluation, calibration and serving
    all encode through this, so served outputs equal offline ones.

    Example:
        >>> # TextEncoder(minilm_artifact)(["a sentence"])["input_ids"].shape  -> (1, 4)
    """

    def __init__(self, art: Artifact, *, what: str = "text data") -> None:
        pre = art.meta.get("preprocess") or {}
        if pre.get("kind") != "text":
            raise DataError(f"{what}: text needs a text model (with a tokenizer); {art.name} takes "
                            f"{art.io.input_names}")
        tf = require("transformers", extra="hf")
        self.tokenizer = tf.AutoTokenizer.from_pretrained(pre["tokenizer"], local_files_only=True)
        self.max_length = int(pre.get("max_length") or 256)
        self.input_names = list(pre["input_names"])

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return {n: enc[n].astype(np.int64) for n in self.input_names}


class TextLines:
    """One example per non-empty line, tokenized per batch with the model's tokenizer.

    Example:
        >>> # ds = TextLines(bundled_sentences_path(), artifact); next(ds.batches(8)).feeds["input_ids"].shape
    """

    def __init__(self, path: Path, art: Artifact) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.encoder = TextEncoder(art, what=str(self.path))
        self._n = sum(1 for _ in self._lines())
        if self._n == 0:
            raise DataError(f"{self.path}: the file is empty (expected one sentence per line)")

    def _lines(self) -> Iterator[str]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if line:
                        yield line
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc

    def __len__(self) -> int:
        return self._n

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.encoder(texts)

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        lines = itertools.islice(self._lines(), limit)
        while chunk := list(itertools.islice(lines, batch_size)):
            yield Batch(self.encode(chunk), None, chunk)


class ImageFolder:
    """Images under a folder; sub-folder names are the labels (sorted, indexed from 0)."""

    def __init__(self, path: Path, art: Artifact) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise DataError(f"{self.path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        self.classes = sorted({p.parent.name for p in self.files if p.parent != self.path})
        self.input_name = art.io.input_names[0]
        self.pre = image_preprocess_for(art)

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        files = self.files[:limit] if limit else self.files
        for i in range(0, len(files), batch_size):
            chunk = files[i:i + batch_size]
            arrays = [load_image(p, self.pre) for p in chunk]
            labels = None
            if self.classes:
                labels = np.array([self.classes.index(p.parent.name) if p.parent.name in self.classes else -1
                                   for p in chunk], dtype=np.int64)
            yield Batch({self.input_name: np.stack(arrays)}, labels, [str(p) for p in chunk])


def image_preprocess_for(art: Artifact) -> dict[str, Any]:
    """The model's own image preprocessing, or one derived from its input shape (no normalisation)."""
    pre = art.meta.get("preprocess") or {}
    if pre.get("kind") == "image":
        return {**pre, "channels": 3}
    spec = art.io.inputs[0]
    example = art.examples.get(spec.name)
    shape = example.shape if example is not None else spec.shape
    if len(shape) != 4:
        raise DataError(f"{art.name}: image data needs a model with one [N, C, H, W] input, its input "
                        f"'{spec.name}' has shape {list(spec.shape)}")
    dims = [d if isinstance(d, (int, np.integer)) and d > 0 else None for d in shape[1:]]
    c = int(dims[0]) if dims[0] else 3
    h = int(dims[1]) if dims[1] else 224  # symbolic height/width: the common 224
    w = int(dims[2]) if dims[2] else h
    return {"kind": "image", "resize": min(h, w), "crop": min(h, w), "size": (h, w), "channels": c,
            "mean": [0.0] * c, "std": [1.0] * c, "rescale": 1 / 255}


def load_image(path: Path | Any, pre: Mapping[str, Any]) -> np.ndarray:
    """Decode, resize (shorter side), center-crop, rescale and normalise one image to ``[C, H, W]`` float32."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path) if not isinstance(path, Image.Image) else path
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    img = img.convert("L" if pre.get("channels") == 1 else "RGB")
    h, w = pre.get("size") or (pre["crop"], pre["crop"])
    if "size" not in pre:
        scale = pre["resize"] / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    else:
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) * float(pre.get("rescale", 1 / 255))
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(-1, 1, 1)
    return ((arr - mean) / std).astype(np.float32)


class ArrayData:
    """``.npy`` (memory-mapped; the model's first input) or ``.npz`` (arrays named like the inputs, plus labels)."""

    def __init__(self, path: Path, art: Artifact) -> None:
        self.path = Path(path)
        self.name = self.path.name
        try:
            if self.path.suffix == ".npy":
                self.arrays = {art.io.input_names[0]: np.load(self.path, mmap_mode="r")}
                self.labels = None
            else:
                npz = np.load(self.path)
                keys = list(npz.keys())
                self.labels = next((npz[k] for k in LABEL_KEYS if k in keys), None)
                inputs = [k for k in keys if k not in LABEL_KEYS]
                named = {n: npz[n] for n in art.io.input_names if n in inputs}
                if not named and len(inputs) == 1 and len(art.io.inputs) == 1:
                    named = {art.io.input_names[0]: npz[inputs[0]]}
                missing = [n for n in art.io.input_names if n not in named]
                if missing:
                    raise DataError(f"{self.path}: holds arrays {inputs}, but the model needs {missing}; name the "
                                    "arrays after the model inputs (np.savez(path, input_ids=..., labels=...))")
                self.arrays = named
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{self.path}: cannot read the arrays ({exc})") from exc
        lengths = {len(a) for a in self.arrays.values()}
        if lengths == {0} or not lengths:
            raise DataError(f"{self.path}: holds no examples")
        if len(lengths) > 1:
            raise DataError(f"{self.path}: arrays have different lengths {sorted(lengths)}")
        self._n = lengths.pop()

    def __len__(self) -> int:
        return self._n

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        n = min(self._n, limit or self._n)
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            labels = np.asarray(self.labels[i:j]) if self.labels is not None else None
            yield Batch({k: np.ascontiguousarray(v[i:j]) for k, v in self.arrays.items()}, labels)


class CsvData:
    """Rows of numeric features (one input ``[N, F]``) with an optional label column, read as a stream."""

    def __init__(self, path: Path, art: Artifact, *, label_column: str = "label") -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.input_name = art.io.input_names[0]
        with open(self.path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{self.path}: the file is empty (expected a header row and numeric rows)")
            self._n = sum(1 for row in reader if row)
        if self._n == 0:
            raise DataError(f"{self.path}: has a header but no rows")
        self.label_index = header.index(label_column) if label_column in header else None

    def __len__(self) -> int:
        return self._n

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        with open(self.path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader)
            rows = itertools.islice((r for r in reader if r), limit)
            line = 1
            while chunk := list(itertools.islice(rows, batch_size)):
                feats, labels = [], []
                for row in chunk:
                    line += 1
                    try:
                        values = [float(v) for i, v in enumerate(row) if i != self.label_index]
                        if self.label_index is not None:
                            labels.append(int(float(row[self.label_index])))
                    except ValueError:
                        raise DataError(f"{self.path}: row {line} has a non-numeric value: {row}") from None
                    feats.append(values)
                yield Batch({self.input_name: np.asarray(feats, dtype=np.float32)},
                            np.asarray(labels, dtype=np.int64) if labels else None)


def load_data(path: str | Path, art: Artifact, *, label_column: str = "label") -> Dataset:
    """Open a data source for ``art``: image folder, text file, ``.npy``/``.npz`` or CSV.

    Example:
        >>> # ds = load_data("sentences.txt", art); len(ds)
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return ImageFolder(path, art)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return ArrayData(path, art)
    if suffix == ".csv":
        return CsvData(path, art, label_column=label_column)
    if suffix in (".txt", ".text", ".lines"):
        return TextLines(path, art)
    raise DataError(f"{path}: unknown data type '{suffix}'; use an image folder, .txt (one sentence per line), "
                    ".npy/.npz or .csv")
