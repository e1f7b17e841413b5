"""Answers the server sends: JSON encoded once, KServe v2 responses (JSON or binary tensors), and the page's
example inputs."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import numpy as np
from fastapi.responses import Response

from slimforge.serve.models import V2_TYPES, ServedModel
from slimforge.serve.requests import ApiError


def json_response(doc: dict[str, Any]) -> Any:
    """A JSON response serialised once by the C encoder (FastAPI's jsonable_encoder walks every float)."""
    return Response(json.dumps(doc), media_type="application/json")


def predict_response(model: ServedModel, outs: list[np.ndarray], head: dict[str, Any], accept: str,
                     started: float) -> Any:
    """The ``/api/predict`` answer: JSON (``head``, then per-row ``predictions``, the raw ``outputs`` and every
    output's shape), or the output image itself as ``image/png`` when the client asks for it with ``Accept``;
    ``processing_ms`` counts from ``started`` (a ``time.perf_counter()`` reading) to the encoded answer.

    An output rendered as PNG (an image-to-image model's) is left out of ``outputs``: its values are in the image,
    and as floats it would be ~20 bytes of JSON per value (the v2 ``infer`` route returns the raw tensor).
    """
    names = [t.name for t in model.artifact.io.outputs]
    if wants_png(accept):
        pngs = model.output_images(outs)
        if pngs is None:
            raise ApiError(406, f"model {model.name} does not output an image; ask for application/json")
        if len(pngs) != 1:
            raise ApiError(406, f"Accept: image/png answers one image, and this request has {len(pngs)} items; "
                                "send one image per request or ask for application/json")
        hdrs = {"X-Model": model.name, "X-Model-Version": model.version, "X-Batch-Rows": str(head.get("batch_rows")),
                "X-Processing-Ms": f"{(time.perf_counter() - started) * 1000.0:.3f}"}
        return Response(pngs[0], media_type="image/png", headers=hdrs)
    preds = model.postprocess(outs)
    rendered = {names[0]} if preds and isinstance(preds[0], dict) and "image" in preds[0] and names else set()
    doc = {**head, "predictions": preds,
           "outputs": {n: o.tolist() for n, o in zip(names, outs) if n not in rendered},
           "output_shapes": {n: list(o.shape) for n, o in zip(names, outs)}}
    doc["processing_ms"] = (time.perf_counter() - started) * 1000.0
    return json_response(doc)


def wants_png(accept: str) -> bool:
    """Whether an ``Accept`` header asks for ``image/png`` before (or instead of) JSON.

    Example:
        >>> wants_png("image/png"), wants_png("*/*"), wants_png("application/json, image/png;q=0.5")
        (True, False, False)
    """
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if "image/png" not in types:
        return False
    first_json = min((i for i, t in enumerate(types) if t in ("application/json", "*/*")), default=len(types))
    return types.index("image/png") < first_json


def v2_response(model: ServedModel, req: dict[str, Any], outs: list[np.ndarray]) -> Any:
    names = [t.name for t in model.artifact.io.outputs]
    wanted = [o["name"] for o in req.get("outputs") or [] if isinstance(o, dict) and "name" in o] or names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ApiError(400, f"unknown output(s) {unknown}; the model gives {names}")
    params = req.get("parameters") or {}
    binary_wanted = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", params.get(
        "binary_data_output", False))) for o in req.get("outputs") or [] if isinstance(o, dict) and "name" in o}
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version,
                            "id": req.get("id", str(uuid.uuid4())), "outputs": []}
    blobs: list[bytes] = []
    for name in wanted:
        arr = np.ascontiguousarray(outs[names.index(name)])
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape),
                                 "datatype": V2_TYPES.get(arr.dtype.name, "FP32")}
        if binary_wanted.get(name, bool(params.get("binary_data_output", False))):
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        body["outputs"].append(entry)
    if not blobs:
        return json_response(body)
    head = json.dumps(body).encode()
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def examples_for(model: ServedModel, given: list[str]) -> list[dict[str, str]]:
    """Example inputs for the page: sentences for text models, the model's example images as PNG data URLs."""
    if model.kind == "text":
        texts = given or ["A small model that still works.", "Quantization makes inference faster on CPUs.",
                          "The cat sat on the mat."]
        return [{"text": t} for t in texts]
    if model.kind != "image":
        return []
    import io as _io

    from PIL import Image

    from slimforge.io.data import image_preprocess_for

    pre = image_preprocess_for(model.artifact)
    ex = next(iter(model.artifact.examples.values()), None)
    out = []
    if ex is None:
        return out
    arr = np.asarray(ex, dtype=np.float32)
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(-1, 1, 1)
    for img in arr[:4]:
        pix = ((img * std + mean) / float(pre.get("rescale", 1 / 255))).clip(0, 255).astype(np.uint8)
        pil = Image.fromarray(pix[0]) if pix.shape[0] == 1 else Image.fromarray(pix.transpose(1, 2, 0))
        pil = pil.resize((max(64, pil.width), max(64, pil.height)), Image.NEAREST)
        buf = _io.BytesIO()
        pil.save(buf, format="PNG")
        out.append({"image": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()})
    return out
