"""Reading requests into model feeds: JSON text, base64 images, multipart uploads, nested-list tensors and KServe v2
(JSON and the binary tensor extension). Everything is validated here, before the model is touched, and every fault
is an ``ApiError`` with a 4xx status and a message. These functions are synchronous: the server runs them on its
bounded preprocessing pool, off the event loop (JSON parsing, image decoding and tokenisation take CPU time).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable

import numpy as np

from slimforge.errors import DataError, InputError
from slimforge.serve.limits import Limits, check_token_feeds
from slimforge.serve.models import NP_TYPES, V2_TYPES, ImageTooLarge, ServedModel

Feeds = dict[str, np.ndarray]
Pick = Callable[[Any, Any], ServedModel]


class ApiError(Exception):
    """An answer other than 200: status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def parse_json(raw: bytes, what: str = "the body") -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise ApiError(400, f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"{what} is not valid JSON ({str(exc)[:200]})") from None


def predict_feeds(pick: Pick, raw: bytes | None, form: tuple[dict[str, Any], list[bytes]] | None,
                  limits: Limits) -> tuple[ServedModel, Feeds, int]:
    """The model a ``/api/predict`` request names, its feeds and its number of items."""
    if form is not None:
        body, files = form
    else:
        if not raw:
            raise ApiError(422, "empty body: send JSON {\"text\": ...}, {\"image\": base64}, {\"inputs\": {...}} or "
                                "a multipart image upload")
        body, files = parse_json(raw), []
        if not isinstance(body, dict):
            raise ApiError(422, "the JSON body must be an object")
    for key in ("model", "version"):
        if body.get(key) is not None and not isinstance(body[key], (str, int)):
            raise ApiError(422, f"'{key}' must be a string")
    model = pick(body.get("model"), None if body.get("version") is None else str(body["version"]))
    try:
        feeds, n = _feeds_from(model, body, files, limits)
    except ImageTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except (DataError, InputError, ValueError) as exc:
        raise ApiError(422 if isinstance(exc, ValueError) and not isinstance(exc, InputError) else 400,
                       str(exc)) from None
    validate(model, feeds)
    return model, feeds, n


def validate(model: ServedModel, feeds: Feeds) -> None:
    """The feeds against the model's inputs (names, ranks, fixed dims, dtypes) and its embedding tables."""
    from slimforge.runtimes.base import check_feeds

    try:
        check_feeds(model.artifact, feeds)
    except InputError as exc:
        raise ApiError(400, str(exc)) from None
    for name, arr in feeds.items():
        if arr.ndim == 0 or len(arr) == 0:
            raise ApiError(400, f"input {name!r} has no rows (shape {list(arr.shape)})")
    if model.kind == "text" and len({a.shape for a in feeds.values()}) > 1:
        raise ApiError(400, "token inputs must share one shape; got " +
                       ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items()))
    if len({len(a) for a in feeds.values()}) > 1:
        raise ApiError(400, "inputs must have the same number of rows; got " +
                       ", ".join(f"{k} {len(v)}" for k, v in feeds.items()))
    try:
        check_token_feeds(feeds, model.token_limits, f"model {model.name}")
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


def _rows(n: int, limits: Limits) -> None:
    if n > limits.max_rows:
        raise ApiError(413, f"the request has {n:,} rows; the limit is {limits.max_rows:,} per request "
                            "(split it, or start the server with a larger --max-rows)")


def _feeds_from(model: ServedModel, body: dict[str, Any], files: list[bytes], limits: Limits) -> tuple[Feeds, int]:
    if "text" in body:
        texts = body["text"]
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(422, "'text' must be a non-empty string or list of strings")
        _rows(len(texts), limits)
        return encode_texts(model, texts, limits), len(texts)
    images = list(files)
    if "image" in body or "images" in body:
        items = body.get("images", body.get("image"))
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise ApiError(422, "'image' must be a base64 string (or a list of them)")
        _rows(len(items) + len(images), limits)
        for item in items:
            images.append(_b64(item))
    if images:
        _rows(len(images), limits)
        return decode_images(model, images, limits), len(images)
    if "inputs" in body:
        return _tensor_feeds(model, body["inputs"], limits)
    raise ApiError(422, "missing field: send 'text', 'image' (base64), 'inputs' ({name: nested list}) or a "
                        "multipart image upload")


def _b64(item: str) -> bytes:
    data = item
    if item.startswith("data:"):
        if "," not in item:
            raise ApiError(400, "a data URL needs a comma before its base64 payload (data:image/png;base64,...)")
        data = item.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "'image' is not valid base64") from None


def encode_texts(model: ServedModel, texts: list[str], limits: Limits) -> Feeds:
    """Tokenise with the model's tokenizer, truncating (or refusing) texts over the token limit."""
    limit = model.text_limit(limits.max_tokens)
    max_chars = 64 * limit  # no token is longer; tokenising a 10 MB string would hold a worker for seconds
    if limits.long_text == "refuse":
        for i, t in enumerate(texts):
            if len(t) > max_chars:
                raise ApiError(413, f"text {i} has {len(t):,} characters; the limit is {limit} tokens")
        lengths = model.token_counts(texts)
        long = [(i, n) for i, n in enumerate(lengths) if n > limit]
        if long:
            i, n = long[0]
            raise ApiError(422, f"text {i} has {n:,} tokens; the model takes at most {limit} (the server refuses "
                                "longer texts: --long-text refuse)")
    texts = [t[:max_chars] for t in texts]
    try:
        return model.encode_text(texts, max_length=limit)
    except (InputError, DataError) as exc:
        raise ApiError(400, str(exc)) from None


def decode_images(model: ServedModel, images: list[bytes], limits: Limits) -> Feeds:
    """Read every header first (pixel caps per image and per request), then decode."""
    sizes = [model.image_pixels(raw, limits.max_image_pixels) for raw in images]
    if sum(sizes) > limits.max_request_pixels:
        own = (" This model takes images at their own size (its height and width are dynamic), so the server does "
               "not scale them down: send a smaller image, or start the server with a larger --max-request-pixels."
               if model.keeps_upload_size else "")
        raise ApiError(413, f"the request's images hold {sum(sizes):,} pixels; the limit is "
                            f"{limits.max_request_pixels:,} per request.{own}")
    arrays = [model.decode_image(raw, limits.max_image_pixels) for raw in images]
    shapes = sorted({a.shape[1:] for a in arrays})
    if len(shapes) > 1:
        raise ApiError(422, "the images have different sizes (" + ", ".join(f"{w}x{h}" for h, w in shapes) + "); "
                            "this model takes each at its own size: send them in separate requests")
    return {model.artifact.io.inputs[0].name: np.stack(arrays)}


def _tensor_feeds(model: ServedModel, inputs: Any, limits: Limits) -> tuple[Feeds, int]:
    specs = {t.name: t for t in model.artifact.io.inputs}
    if isinstance(inputs, list) and len(specs) == 1:
        inputs = {next(iter(specs)): inputs}
    if not isinstance(inputs, dict) or not inputs:
        raise ApiError(422, f"'inputs' must map input names {list(specs)} to nested lists")
    feeds: Feeds = {}
    for name, value in inputs.items():
        if name not in specs:
            raise ApiError(400, f"unknown input {name!r}; the model takes {list(specs)}")
        if not isinstance(value, list):
            raise ApiError(400, f"input {name!r} must be a nested list with one entry per row, got "
                                f"{type(value).__name__}")
        _rows(len(value), limits)
        feeds[name] = as_array(value, specs[name].dtype, name)
    return feeds, len(next(iter(feeds.values())))


def as_array(value: Any, dtype: str, name: str) -> np.ndarray:
    """A rectangular numeric array of the model's dtype from JSON (never object arrays, strings or fractions for
    integer inputs)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ApiError(400, f"input {name!r} is ragged or not an array ({str(exc)[:160]}); send a rectangular "
                            "nested list of numbers") from None
    if arr.dtype == object:
        raise ApiError(400, f"input {name!r} is ragged or mixes types; send a rectangular nested list of numbers")
    want = np.dtype(dtype)
    if arr.dtype.kind not in "biuf":
        raise ApiError(400, f"input {name!r} holds {arr.dtype.name} values; the model wants {want.name} numbers")
    if want.kind in "iu" and arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
        raise ApiError(400, f"input {name!r} has fractional values; the model wants integers ({want.name})")
    if want.kind == "f" and arr.dtype.kind == "b":
        raise ApiError(400, f"input {name!r} is boolean; the model wants {want.name}")
    if want.kind in "iu" and arr.size and (np.abs(arr.astype(np.float64)).max() > np.iinfo(want).max):
        raise ApiError(400, f"input {name!r} has values outside the range of {want.name}")
    if want.kind == "f" and arr.size and not np.isfinite(arr.astype(np.float64)).all():
        raise ApiError(400, f"input {name!r} holds NaN or Inf")
    return arr.astype(want)


# ---- KServe v2 (Open Inference Protocol) ----
def v2_request(model: ServedModel, raw: bytes, header_len: str | None, limits: Limits) -> tuple[dict[str, Any], Feeds]:
    """The inference request's JSON header and the feeds it carries (tensors, or BYTES text for text models)."""
    if header_len is not None:
        if not header_len.strip().isdigit() or int(header_len) > len(raw):
            raise ApiError(400, "Inference-Header-Content-Length must be a whole number no larger than the body")
        head, binary = raw[:int(header_len)], raw[int(header_len):]
    else:
        head, binary = raw, b""
    req = parse_json(head or b"{}", "the inference request")
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise ApiError(422, "an inference request needs a non-empty 'inputs' list")
    if req.get("parameters") is not None and not isinstance(req["parameters"], dict):
        raise ApiError(422, "'parameters' must be an object")
    if req.get("outputs") is not None and not isinstance(req["outputs"], list):
        raise ApiError(422, "'outputs' must be a list")
    feeds, texts, offset = {}, None, 0
    specs = {t.name: t for t in model.artifact.io.inputs}
    for inp in req["inputs"]:
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str) or "datatype" not in inp:
            raise ApiError(422, "each input needs 'name', 'shape' and 'datatype'")
        shape = _v2_shape(inp)
        offset, chunk = _v2_binary(inp, binary, offset)
        dt = str(inp["datatype"]).upper()
        if dt == "BYTES":  # text for text models
            texts = _v2_texts(inp, chunk)
            continue
        name = inp["name"]
        if name not in specs:
            raise ApiError(400, f"unknown input {name!r}; the model takes {list(specs)}")
        if dt not in NP_TYPES:
            raise ApiError(400, f"input {name!r}: datatype {dt} is not supported")
        want = specs[name].dtype
        if NP_TYPES[dt] != want:
            raise ApiError(400, f"input {name!r}: datatype {dt}, but the model wants "
                                f"{V2_TYPES.get(want, want.upper())}")
        if shape:
            _rows(shape[0], limits)
        if chunk is not None:
            try:
                arr = np.frombuffer(chunk, dtype=NP_TYPES[dt]).reshape(shape)
            except ValueError as exc:
                raise ApiError(400, f"input {name!r}: the binary data does not fit shape {shape} ({exc})") from None
        else:
            data = inp.get("data")
            if not isinstance(data, list):
                raise ApiError(422, f"input {name!r} needs 'data' (a list) or binary_data_size")
            arr = as_array(data, NP_TYPES[dt], name)
            if arr.size != int(np.prod(shape, dtype=np.int64)):
                raise ApiError(400, f"input {name!r}: {arr.size} values do not fit shape {shape}")
            arr = arr.reshape(shape)
        feeds[name] = arr
    if texts is not None and not feeds:
        _rows(len(texts), limits)
        if not texts:
            raise ApiError(422, "the BYTES input holds no texts")
        feeds = encode_texts(model, texts, limits)
    elif not feeds:
        raise ApiError(422, "the request has no tensor inputs")
    validate(model, feeds)
    return req, feeds


def _v2_shape(inp: dict[str, Any]) -> list[int]:
    shape = inp.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ApiError(422, f"input {inp.get('name')!r}: 'shape' must be a list of non-negative integers")
    return shape


def _v2_binary(inp: dict[str, Any], binary: bytes, offset: int) -> tuple[int, bytes | None]:
    """The input's slice of the binary tensor data (None: its data is in JSON) and the offset after it."""
    params = inp.get("parameters")
    if params is None:
        return offset, None
    if not isinstance(params, dict):
        raise ApiError(422, f"input {inp['name']!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is None:
        return offset, None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ApiError(400, f"input {inp['name']!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if offset + size > len(binary):
        raise ApiError(400, f"input {inp['name']!r}: binary_data_size {size} passes the end of the body")
    return offset + size, binary[offset:offset + size]


def _v2_texts(inp: dict[str, Any], chunk: bytes | None) -> list[str]:
    if chunk is not None:  # each element: 4-byte little-endian length, then the bytes
        texts, i = [], 0
        while i + 4 <= len(chunk):
            n = int.from_bytes(chunk[i:i + 4], "little")
            if i + 4 + n > len(chunk):
                raise ApiError(400, f"input {inp['name']!r}: a BYTES element passes the end of its data")
            texts.append(chunk[i + 4:i + 4 + n].decode("utf-8", "replace"))
            i += 4 + n
        if i != len(chunk):
            raise ApiError(400, f"input {inp['name']!r}: the BYTES data has {len(chunk) - i} stray byte(s)")
        return texts
    data = inp.get("data")
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ApiError(422, f"input {inp['name']!r}: BYTES data must be a flat list of strings")
    return list(data)
