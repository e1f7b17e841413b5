"""Images in and out of the server: the size an upload is fed at, and image outputs (image-to-image models) turned
back into PNG by the inverse of the input's preprocessing."""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np

from slimforge.core.artifact import IOSpec, TensorSpec

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
MIN_IMAGE_SIDE = 8  # a fixed output smaller than this is a feature map, not a picture


def fixed_hw(spec: TensorSpec) -> tuple[int | None, int | None]:
    """The model's fixed height and width (None where that axis is dynamic or unknown)."""
    dims = [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in spec.shape[2:4]]
    return (dims + [None, None])[0], (dims + [None, None])[1]


def upload_size(spec: TensorSpec, width: int, height: int) -> tuple[int, int]:
    """``(height, width)`` an upload is fed at: fixed axes as the model needs them, dynamic ones at the upload's own
    size; when only one axis is fixed, the other keeps the upload's aspect ratio.

    Example:
        >>> upload_size(TensorSpec("x", ("batch", 3, "height", "width")), 640, 480)
        (480, 640)
        >>> upload_size(TensorSpec("x", ("batch", 1, 32, "width")), 640, 480), upload_size(
        ...     TensorSpec("x", ("batch", 3, 224, 224)), 640, 480)
        ((32, 43), (224, 224))
    """
    fh, fw = fixed_hw(spec)
    if fh and fw:
        return fh, fw
    if fh:
        return fh, max(1, round(width * fh / max(1, height)))
    if fw:
        return max(1, round(height * fw / max(1, width))), fw
    return int(height), int(width)


def is_dense(io: IOSpec) -> bool:
    """A dense-prediction or image-to-image model: an output ``[N, C, H', W']`` whose height or width varies (with
    the input's). A classifier or embedder whose height/width are dynamic only thanks to global pooling is not one.

    Example:
        >>> x = (TensorSpec("x", ("batch", 3, "height", "width")),)
        >>> is_dense(IOSpec(x, (TensorSpec("y", ("batch", 3, "2*height", "2*width")),))), is_dense(
        ...     IOSpec(x, (TensorSpec("y", ("batch", 1000)),)))
        (True, False)
    """
    return any(len(t.shape) == 4 and None in fixed_hw(t) for t in io.outputs)


def is_image_spec(spec: TensorSpec) -> bool:
    """An output that is a picture: ``[N, C, H, W]`` with 1, 3 or 4 channels and spatial axes that are dynamic or at
    least ``MIN_IMAGE_SIDE`` pixels.

    Example:
        >>> is_image_spec(TensorSpec("y", ("batch", 3, "2*height", "2*width"))), is_image_spec(TensorSpec("y", (1, 10)))
        (True, False)
    """
    if len(spec.shape) != 4 or spec.shape[1] not in (1, 3, 4):
        return False
    return all(not isinstance(d, int) or d >= MIN_IMAGE_SIDE for d in spec.shape[2:])


def to_png(arr: np.ndarray, pre: Mapping[str, Any]) -> bytes:
    """One ``[C, H, W]`` output as PNG: the inverse of the input's preprocessing (``x * std + mean``, divided by the
    rescale factor), rounded and clipped to [0, 255]; integer outputs are taken as pixel values.

    Example:
        >>> from PIL import Image
        >>> pre = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "rescale": 1 / 255}
        >>> png = to_png(np.array([-1.0, 0.0, 1.0, 3.0], np.float32).reshape(1, 1, 4).repeat(3, 0), pre)
        >>> np.asarray(Image.open(io.BytesIO(png)))[0, :, 0].tolist()
        [0, 128, 255, 255]
    """
    from PIL import Image

    c = int(arr.shape[0])
    if arr.dtype.kind in "iub":
        pix = arr.astype(np.float64)
    else:
        mean = _per_channel(pre.get("mean") or [0.0], c, 0.0)
        std = _per_channel(pre.get("std") or [1.0], c, 1.0)
        x = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        pix = (x * std + mean) / float(pre.get("rescale") or 1 / 255)
    pix = np.clip(np.rint(pix), 0, 255).astype(np.uint8)
    img = Image.fromarray(pix[0], "L") if c == 1 else Image.fromarray(np.ascontiguousarray(pix.transpose(1, 2, 0)),
                                                                         _MODES[c])
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # lossless either way; level 1 is several times faster than 6
    return buf.getvalue()


def _per_channel(values: Sequence[float], c: int, pad: float) -> np.ndarray:
    """Per-channel statistics of the input, fitted to an output with ``c`` channels (alpha gets ``pad``; one channel
    from three gets their mean)."""
    v = [float(x) for x in values]
    if len(v) == c:
        out = v
    elif len(v) == 1:
        out = v * c
    elif c == 4 and len(v) == 3:
        out = [*v, pad]
    else:
        out = [float(np.mean(v))] * c
    return np.asarray(out, dtype=np.float64).reshape(-1, 1, 1)
