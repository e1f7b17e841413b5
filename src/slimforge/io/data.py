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

from slimforge.core.artifact import Artifact, IOSpec
from slimforge.errors import DataError, require
from slimforge.io.synth import fillable, synthesize

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

    def __call__(self, texts: list[str], *, max_length: int | None = None) -> dict[str, np.ndarray]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length or self.max_length,
                             return_tensors="np")
        return {n: enc[n].astype(np.int64) for n in self.input_names}

    def lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text, without truncation."""
        return [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]


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
        if len(self.classes) > 1:  # round-robin over the classes: any held-out tail holds every class
            groups = sorted({p.parent.name for p in self.files})
            by_class = [[p for p in self.files if p.parent.name == c] for c in groups]
            self.files = [p for rank in range(max(map(len, by_class))) for group in by_class
                          for p in group[rank:rank + 1]]
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
    """The model's own image preprocessing (a Hugging Face processor, or what the user set with ``--preprocess``,
    over one derived from the input: its size, layout NCHW or NHWC, RGB scaled to [0, 1], no normalisation)."""
    pre = art.meta.get("preprocess") or {}
    if pre.get("kind") == "image" and pre.get("source") != "user":
        return {**pre, "channels": 3}
    spec = art.io.inputs[0]
    example = art.examples.get(spec.name)
    shape = example.shape if example is not None else spec.shape
    if len(shape) != 4:
        raise DataError(f"{art.name}: image data needs a model with one [N, C, H, W] input, its input "
                        f"'{spec.name}' has shape {list(spec.shape)}")
    dims = [d if isinstance(d, (int, np.integer)) and d > 0 else None for d in shape[1:]]
    nhwc = pre.get("layout") == "NHWC" or (pre.get("layout") is None and dims[2] in (1, 3, 4)
                                           and dims[0] not in (1, 3, 4))
    c_dim, h_dim, w_dim = (dims[2], dims[0], dims[1]) if nhwc else (dims[0], dims[1], dims[2])
    c = int(c_dim) if c_dim else 3
    h = int(h_dim) if h_dim else 224  # symbolic height/width: the common 224
    w = int(w_dim) if w_dim else h
    derived = {"kind": "image", "resize": min(h, w), "crop": min(h, w), "size": (h, w), "channels": c,
               "mean": [0.0] * c, "std": [1.0] * c, "rescale": 1 / 255, "layout": "NHWC" if nhwc else "NCHW",
               "order": "RGB", "source": "derived from the input shape"}
    user = {k: v for k, v in pre.items() if k not in ("kind", "source")}
    if "resize" in user:
        user["resize_then_crop"] = True
    if user:
        given = sorted({"rescale": "scale"}.get(k, k) for k in user if k != "resize_then_crop")
        user["source"] = f"--preprocess {', '.join(given)}; the rest derived from the input shape"
    return {**derived, **user}


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
    if "size" not in pre or pre.get("resize_then_crop"):
        scale = pre["resize"] / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    else:
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) * float(pre.get("rescale", 1 / 255))
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if pre.get("order") == "BGR" and arr.shape[0] == 3:
        arr = arr[::-1]
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(-1, 1, 1)
    out = ((arr - mean) / std).astype(np.float32)
    return np.ascontiguousarray(out.transpose(1, 2, 0)) if pre.get("layout") == "NHWC" else out


class ArrayData:
    """``.npy`` (memory-mapped; the model's first input) or ``.npz`` (arrays named like the inputs, plus labels)."""

    def __init__(self, path: Path, art: Artifact) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.art = art
        # recurrent state and a sample rate need not be in the file: zeros and 16 kHz, as a stream starts
        self.filled = [t.name for t in art.io.inputs if fillable(t)]
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
                missing = [n for n in art.io.input_names if n not in named and n not in self.filled]
                if missing:
                    raise DataError(f"{self.path}: holds arrays {inputs}, but the model needs {missing}; name the "
                                    "arrays after the model inputs (np.savez(path, input_ids=..., labels=...))")
                self.arrays = named
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{self.path}: cannot read the arrays ({exc})") from exc
        check_arrays(self.path, self.arrays, art)
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
            feeds = {k: np.ascontiguousarray(v[i:j]) for k, v in self.arrays.items()}
            missing = [t for t in self.art.io.inputs if t.name not in feeds]
            if missing:
                feeds.update(synthesize(IOSpec(tuple(missing)), batch=j - i, meta=self.art.meta))
            yield Batch({t.name: feeds[t.name] for t in self.art.io.inputs}, labels)


def check_arrays(path: Path, arrays: Mapping[str, np.ndarray], art: Artifact) -> None:
    """Data against the model's inputs, before any technique runs: dtype, rank, fixed dimensions, NaN/Inf.

    Example:
        >>> import torch, slimforge
        >>> art = slimforge.load(torch.nn.Linear(4, 2), example_inputs=torch.randn(1, 4))
        >>> check_arrays(Path("d.npz"), {art.io.input_names[0]: np.zeros((3, 5), np.float32)}, art)
        Traceback (most recent call last):
        slimforge.errors.DataError: d.npz: array 'input' has 5 on axis 1, the model's input 'input' needs 4 [batch, 4]
    """
    specs = {t.name: t for t in art.io.inputs}
    for name, arr in arrays.items():
        spec = specs.get(name)
        if spec is None:
            continue
        want = np.dtype(spec.dtype)
        shape = "[" + ", ".join(str(d) for d in spec.shape) + "]"
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{path}: array '{name}' holds {arr.dtype} values; the model's input '{name}' takes "
                            f"{want.name} numbers")
        if want.kind == "f" and arr.dtype.kind != "f":
            raise DataError(f"{path}: array '{name}' is {arr.dtype}, the model's input '{name}' takes {want.name}; "
                            f"save it as floats (arr.astype('{want.name}'))")
        if want.kind in "iu" and arr.dtype.kind not in "iu":
            raise DataError(f"{path}: array '{name}' is {arr.dtype}, the model's input '{name}' takes integers "
                            f"({want.name})")
        if spec.shape and arr.ndim != len(spec.shape):
            raise DataError(f"{path}: array '{name}' has {arr.ndim} dimensions {list(arr.shape)}, the model's input "
                            f"'{name}' has {len(spec.shape)} {shape} (the first is the example axis)")
        for axis, (dim, got) in enumerate(zip(spec.shape, arr.shape)):
            if axis > 0 and isinstance(dim, (int, np.integer)) and dim > 0 and dim != got:
                raise DataError(f"{path}: array '{name}' has {got} on axis {axis}, the model's input '{name}' "
                                f"needs {dim} {shape}")
        if arr.dtype.kind == "f":
            _check_finite(path, name, arr)


def _check_finite(path: Path, name: str, arr: np.ndarray) -> None:
    rows = max(1, (1 << 22) // max(1, int(np.prod(arr.shape[1:], dtype=np.int64))))
    for start in range(0, len(arr), rows):
        chunk = np.asarray(arr[start:start + rows])
        bad = ~np.isfinite(chunk)
        if bad.any():
            where = np.argwhere(bad)[0]
            kind = "NaN" if np.isnan(chunk[tuple(where)]) else "Inf"
            raise DataError(f"{path}: array '{name}' holds {int(bad.sum())} NaN/Inf value(s) (first: {kind} in "
                            f"example {start + int(where[0])}); clean the data before calibrating")


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
            self.label_index = header.index(label_column) if label_column in header else None
            self._n = 0
            for line, row in enumerate(reader, start=2):
                if row:
                    self._n += 1
                    self._check_row(row, len(header), line)
        if self._n == 0:
            raise DataError(f"{self.path}: has a header but no rows")
        spec = art.io.inputs[0]
        width = len(header) - (self.label_index is not None)
        if spec.shape and len(spec.shape) != 2:
            raise DataError(f"{self.path}: CSV rows feed a [N, features] input, but the model's input "
                            f"'{spec.name}' has shape {list(spec.shape)}; use .npy/.npz for it")
        if len(spec.shape) == 2 and isinstance(spec.shape[1], int) and spec.shape[1] > 0 and spec.shape[1] != width:
            raise DataError(f"{self.path}: rows have {width} feature columns, the model's input '{spec.name}' needs "
                            f"{spec.shape[1]}")

    def _check_row(self, row: list[str], width: int, line: int) -> None:
        if len(row) != width:
            raise DataError(f"{self.path}: row {line} has {len(row)} columns, the header has {width}")
        try:
            values = [float(v) for v in row]
        except ValueError:
            raise DataError(f"{self.path}: row {line} has a non-numeric value: {row[:8]}") from None
        if not all(np.isfinite(values)):
            raise DataError(f"{self.path}: row {line} holds NaN/Inf; clean the data before calibrating")

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
