"""Hostile requests against a running server: every malformed request gets 400/413/422 with a message, before the
model runs; overload gets 503 with Retry-After; health stays "ok" and answers throughout."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import time

import httpx
import numpy as np
import pytest
import torch

import slimforge
from slimforge.serve import ServeConfig
from slimforge.serve.local import running_server


@pytest.fixture(scope="module")
def text_server(minilm_onnx):
    with running_server(ServeConfig(paths=[str(minilm_onnx)], name="minilm", max_batch=8, token="s3cret")) as url:
        yield url


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 3))
    path = tmp_path_factory.mktemp("img") / "cnn.onnx"
    art = slimforge.export(slimforge.load(net, example_inputs=torch.randn(1, 3, 32, 32)), path)
    with running_server(ServeConfig(paths=[str(art.path)], max_request_pixels=3_000_000,
                                    max_image_pixels=2_000_000, max_rows=8)) as url:
        yield url


AUTH = {"Authorization": "Bearer s3cret"}


def _post(url, path, *, headers=AUTH, **kw):
    return httpx.post(url + path, headers=headers, timeout=60, **kw)


def _healthy(url):
    r = httpx.get(url + "/api/health", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text


def _png(w, h):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _v2_bytes(texts):
    return b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in texts)


TEXT_CASES = [
    ("predict", {"inputs": {"input_ids": 5}}, 400, "nested list"),
    ("predict", {"inputs": [[1, 2]]}, 422, "inputs"),
    ("predict", {"inputs": {"input_ids": [[101, 99999999, 102]], "attention_mask": [[1, 1, 1]],
                            "token_type_ids": [[0, 0, 0]]}}, 422, "ids"),
    ("predict", {"inputs": {"input_ids": [[101] * 1000], "attention_mask": [[1] * 1000],
                            "token_type_ids": [[0] * 1000]}}, 422, "at most 512"),
    ("predict", {"inputs": {"input_ids": [[101, -5]], "attention_mask": [[1, 1]], "token_type_ids": [[0, 0]]}},
     422, "ids"),
    ("predict", {"inputs": {"input_ids": [[1.5, 2]], "attention_mask": [[1, 1]], "token_type_ids": [[0, 0]]}},
     400, "fractional"),
    ("predict", {"inputs": {"input_ids": [[1, 2], [3]]}}, 400, "ragged"),
    ("predict", {"inputs": {"input_ids": [["a", "b"]]}}, 400, "str"),
    ("predict", {"inputs": {"nope": [[1]]}}, 400, "unknown input"),
    ("predict", {"inputs": {"input_ids": [[1e30]], "attention_mask": [[1]], "token_type_ids": [[0]]}}, 400,
     "range"),
    ("predict", {"text": ["ok"] * 100_000}, 413, "rows"),
    ("predict", {"text": []}, 422, "non-empty"),
    ("predict", {"text": [1, 2]}, 422, "strings"),
    ("predict", {"text": "hi", "version": {"a": 1}}, 422, "version"),
    ("predict", {"text": "hi", "version": "7"}, 404, "no version"),
    ("predict", {"image": "data:image/png;base64"}, 400, "comma"),
    ("predict", {"image": "!!!not base64"}, 400, "base64"),
    ("predict", {"image": 5}, 422, "base64"),
    ("predict", {}, 422, "missing field"),
    ("predict", [1, 2], 422, "object"),
    ("v2", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [["nested"]]}]}, 422, "flat"),
    ("v2", {"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]}, 422, "no texts"),
    ("v2", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": [1]}]}, 422,
     "parameters"),
    ("v2", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": "abc"}}]}, 400, "binary_data_size"),
    ("v2", {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}, 400,
     "datatype"),
    ("v2", {"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2]}]}, 400,
     "shape"),
    ("v2", {"inputs": [{"name": "input_ids", "shape": "x", "datatype": "INT64", "data": [1]}]}, 422, "shape"),
    ("v2", {"inputs": []}, 422, "inputs"),
    ("v2", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}], "outputs": 3}, 422,
     "outputs"),
]


@pytest.mark.parametrize("route, body, status, says", TEXT_CASES,
                         ids=[f"{i}-{c[0]}-{c[2]}" for i, c in enumerate(TEXT_CASES)])
def test_malformed_text_requests(text_server, route, body, status, says):
    path = "/api/predict" if route == "predict" else "/v2/models/minilm/infer"
    r = _post(text_server, path, content=json.dumps(body).encode(), headers={**AUTH, "content-type":
                                                                                "application/json"})
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["status"] == status and says in doc["error"] and "Traceback" not in doc["error"], doc
    _healthy(text_server)


@pytest.mark.parametrize("raw, status, says", [
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400, "nested"),
    (b"{" * 1000, 400, "JSON"),
    (b"not json", 400, "JSON"),
    (b"", 422, "empty body"),
    (b'{"inputs": {"input_ids": [[NaN]]}}', 400, "fractional"),
])
def test_unreadable_bodies(text_server, raw, status, says):
    r = _post(text_server, "/api/predict", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == status and says in r.json()["error"], r.text
    _healthy(text_server)


def test_v2_binary_header_past_the_body(text_server):
    head = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 500}}]}).encode()
    r = _post(text_server, "/v2/models/minilm/infer", content=head + _v2_bytes(["hi"]),
              headers={**AUTH, "Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "passes the end" in r.json()["error"]
    r = _post(text_server, "/v2/models/minilm/infer", content=head,
              headers={**AUTH, "Inference-Header-Content-Length": "99999"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_the_token_covers_every_route_but_health(text_server):
    for path in ("/docs", "/openapi.json", "/api/models", "/metrics", "/v2", "/v2/models/minilm",
                 "/api/examples"):
        assert httpx.get(text_server + path).status_code == 401, path
        assert httpx.get(text_server + path, headers=AUTH).status_code in (200, 404), path
    for path in ("/api/health", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(text_server + path).status_code == 200, path
    r = httpx.post(text_server + "/api/predict", json={"text": "hi"})
    assert r.status_code == 401


def test_long_texts_are_truncated_quickly_and_health_answers_meanwhile(text_server):
    huge = "word " * 2_000_000  # 10 MB
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fut = pool.submit(_post, text_server, "/api/predict", json={"text": [huge]})
        t = time.perf_counter()
        for _ in range(5):
            h = httpx.get(text_server + "/api/health", timeout=5)
            assert h.status_code == 200
        health_s = (time.perf_counter() - t) / 5
        r = fut.result()
    assert r.status_code == 200, r.text
    assert len(r.json()["outputs"]["embedding"][0]) == 384
    assert health_s < 1.0


def test_refuse_mode_refuses_long_texts(minilm_onnx):
    with running_server(ServeConfig(paths=[str(minilm_onnx)], long_text="refuse", max_tokens=32)) as url:
        r = httpx.post(url + "/api/predict", json={"text": ["word " * 100]}, timeout=60)
        assert r.status_code == 422 and "tokens" in r.json()["error"]
        assert httpx.post(url + "/api/predict", json={"text": ["short"]}, timeout=60).status_code == 200


def test_overload_is_503_with_retry_after_and_health_answers(minilm_onnx):
    cfg = ServeConfig(paths=[str(minilm_onnx)], preprocess_workers=1, preprocess_queue=2, max_batch=4)
    long = ["a longer sentence that takes the tokenizer and the model some time " * 6] * 64
    with running_server(cfg) as url:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            futs = [pool.submit(httpx.post, url + "/api/predict", json={"text": long}, timeout=120)
                    for _ in range(24)]
            time.sleep(0.2)
            assert httpx.get(url + "/api/health", timeout=2).status_code == 200
            codes = [f.result() for f in futs]
    busy = [r for r in codes if r.status_code == 503]
    assert busy and all(r.headers.get("retry-after") for r in busy)
    assert {r.status_code for r in codes} <= {200, 503}
    assert any(r.status_code == 200 for r in codes)


def test_memory_budget_is_503_not_an_oom(minilm_onnx):
    with running_server(ServeConfig(paths=[str(minilm_onnx)], max_memory_mb=1.0)) as url:
        r = httpx.post(url + "/api/predict", json={"text": "hi"}, timeout=60)
        assert r.status_code == 503 and "budget" in r.json()["error"] and r.headers["retry-after"]
        assert httpx.get(url + "/api/health").json()["status"] == "ok"


@pytest.mark.parametrize("kind, status, says", [
    ("not-an-image", 400, "not a readable image"),
    ("too-many-pixels", 413, "pixels"),
    ("request-pixels", 413, "per request"),
    ("too-many-rows", 413, "rows"),
    ("truncated", 400, "image"),
])
def test_hostile_images(image_server, kind, status, says):
    if kind == "not-an-image":
        files = [("file", ("x.png", b"hello", "image/png"))]
    elif kind == "too-many-pixels":
        files = [("file", ("big.png", _png(2000, 1200), "image/png"))]
    elif kind == "request-pixels":
        files = [("file", (f"{i}.png", _png(1000, 1000), "image/png")) for i in range(4)]
    elif kind == "truncated":
        files = [("file", ("t.png", _png(64, 64)[:60], "image/png"))]
    else:
        files = [("file", (f"{i}.png", _png(8, 8), "image/png")) for i in range(9)]
    r = httpx.post(image_server + "/api/predict", files=files, timeout=60)
    assert r.status_code == status and says in r.json()["error"], r.text
    _healthy(image_server)


def test_an_image_as_json_and_a_good_image_still_work(image_server):
    ok = base64.b64encode(_png(40, 40)).decode()
    r = httpx.post(image_server + "/api/predict", json={"image": "data:image/png;base64," + ok}, timeout=60)
    assert r.status_code == 200 and np.asarray(r.json()["outputs"]["output"]).shape == (1, 3)
    r = httpx.post(image_server + "/api/predict", json={"text": "hello"}, timeout=60)
    assert r.status_code == 400 and "not text" in r.json()["error"]


def test_many_large_uploads_at_once_keep_health_answering(tmp_path):
    """24 concurrent 5000x5000 uploads (under the pixel limit): decoding runs off the event loop on the bounded
    pool, so health answers within a second throughout, and every upload gets 200 or 503."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    art = slimforge.export(slimforge.load(net, example_inputs=torch.randn(1, 3, 64, 64)), tmp_path / "c.onnx")
    big = _png(5000, 5000)
    with running_server(ServeConfig(paths=[str(art.path)], preprocess_queue=16)) as url:
        with concurrent.futures.ThreadPoolExecutor(26) as pool:
            futs = [pool.submit(httpx.post, url + "/api/predict", files=[("f", ("b.png", big, "image/png"))],
                                timeout=120) for _ in range(24)]
            slowest = 0.0
            while not all(f.done() for f in futs):
                t = time.perf_counter()
                assert httpx.get(url + "/api/health", timeout=5).status_code == 200
                slowest = max(slowest, time.perf_counter() - t)
                time.sleep(0.1)
            codes = [f.result().status_code for f in futs]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1, codes
    assert slowest < 1.0, slowest
