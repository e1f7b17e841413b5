"""Serving: a real server on loopback (uvicorn in a thread) over artifacts made by optimize."""

import base64
import concurrent.futures
import io
import json

import httpx
import numpy as np
import pytest

import slimforge
from slimforge.bench.timing import BenchSpec
from slimforge.evaluation.metrics import cosine_similarity
from slimforge.io.data import TextEncoder
from slimforge.serve import ServeConfig
from slimforge.serve.local import running_server

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Quantized models run faster on CPUs.",
             "A sentence with a few more words in it than the others have."]


@pytest.fixture(scope="module")
def minilm_artifact(minilm, tmp_path_factory):
    """The MiniLM artifact that optimize writes (the fixed recipe: ONNX Runtime dynamic INT8)."""
    out = tmp_path_factory.mktemp("opt")
    res = slimforge.optimize(minilm, output_dir=out, batch_sizes=(1,), eval_limit=32,
                             spec=BenchSpec(warmup=1, repeats=3, min_time_s=0.0, max_time_s=1.0))
    return res.artifact, out


def _offline(art, texts):
    feeds = TextEncoder(art)(texts)
    return slimforge.open_session(art).run(feeds)[0], feeds


def test_predict_equals_offline_and_tritonclient_and_metrics(minilm_artifact):
    import tritonclient.http as triton

    art, out_dir = minilm_artifact
    ref, feeds = _offline(art, SENTENCES)
    with running_server(ServeConfig(paths=[str(out_dir)], max_batch=8)) as url:
        r = httpx.post(f"{url}/api/predict", json={"text": SENTENCES}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        emb = np.asarray(body["outputs"]["embedding"], dtype=np.float32)
        assert cosine_similarity(ref, emb).min() > 0.9999
        assert np.array_equal(np.asarray([p["embedding"] for p in body["predictions"]], np.float32), emb)
        assert body["processing_ms"] > 0 and body["items"] == 3 and body["runtime"] == "onnxruntime"
        health = httpx.get(f"{url}/api/health").json()
        assert health["status"] == "ok" and health["ready"]
        info = httpx.get(f"{url}/api/models").json()["models"][0]
        assert info["format"] == "onnx" and info["precision"].startswith("int8") and info["optimization"]
        # a stock Open Inference Protocol client
        name = info["name"]
        client = triton.InferenceServerClient(url=url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert [i["name"] for i in meta["inputs"]] == list(feeds)
        inputs = []
        for k, v in feeds.items():
            x = triton.InferInput(k, list(v.shape), "INT64")
            x.set_data_from_numpy(v)  # binary tensor extension
            inputs.append(x)
        result = client.infer(name, inputs, outputs=[triton.InferRequestedOutput("embedding")])
        got = result.as_numpy("embedding")
        assert got.shape == ref.shape and cosine_similarity(ref, got).min() > 0.9999
        json_inputs = []
        for k, v in feeds.items():
            x = triton.InferInput(k, list(v.shape), "INT64")
            x.set_data_from_numpy(v, binary_data=False)
            json_inputs.append(x)
        got = client.infer(name, json_inputs, outputs=[triton.InferRequestedOutput("embedding", binary_data=False)]
                           ).as_numpy("embedding")
        assert cosine_similarity(ref, got).min() > 0.9999
        metrics = httpx.get(f"{url}/metrics").text
        lines = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in metrics.splitlines()
                 if ln.startswith("slimforge_requests_total")}
        assert lines['slimforge_requests_total{route="/api/predict",status="200"}'] == 1.0
        assert lines['slimforge_requests_total{route="/v2/models/infer",status="200"}'] == 2.0
        assert "slimforge_batch_rows_bucket" in metrics and "slimforge_request_seconds_bucket" in metrics


def test_dynamic_batching_groups_concurrent_requests(minilm_artifact):
    art, out_dir = minilm_artifact
    own = _offline(art, SENTENCES)[0]

    def fire(url, n=24):
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            futs = [pool.submit(httpx.post, f"{url}/api/predict", json={"text": [SENTENCES[i % 3]]}, timeout=60)
                    for i in range(n)]
            return [f.result() for f in futs]

    with running_server(ServeConfig(paths=[str(out_dir)], max_batch=16, max_wait_ms=20)) as url:
        res = fire(url)
        assert all(r.status_code == 200 for r in res)
        rows = [r.json()["batch_rows"] for r in res]
        assert max(rows) > 1 and max(rows) <= 16
        for i, r in enumerate(res):  # split back correctly: each answer is its own sentence's embedding (dynamic
            emb = np.asarray(r.json()["outputs"]["embedding"], np.float32)  # INT8 scales depend on the batch: close,
            sims = cosine_similarity(np.repeat(emb, 3, 0), own)             # not bit-equal)
            assert sims.argmax() == i % 3 and sims[i % 3] > 0.99, (i, sims)
    with running_server(ServeConfig(paths=[str(out_dir)], max_batch=1)) as url:
        assert {r.json()["batch_rows"] for r in fire(url, 8)} == {1}


def test_bad_inputs_get_json_errors_and_the_server_keeps_serving(minilm_artifact, digits):
    _, out_dir = minilm_artifact
    cfg = ServeConfig(paths=[str(out_dir)], max_body_mb=0.5, token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    with running_server(cfg) as url:
        def post(**kw):
            kw.setdefault("headers", auth)
            return httpx.post(f"{url}/api/predict", timeout=60, **kw)

        cases = {
            "oversized": (post(content=b"x" * 600_000), 413),
            "missing field": (post(json={"txt": "a"}), 422),
            "bad json": (post(content=b"{nope", headers={**auth, "content-type": "application/json"}), 400),
            "wrong dtype": (post(json={"inputs": {"input_ids": [[1.5, 2.0]], "token_type_ids": [[0, 0]],
                                                  "attention_mask": [[1, 1]]}}), 400),
            "wrong shape": (post(json={"inputs": {"input_ids": [1, 2], "token_type_ids": [0, 0],
                                                  "attention_mask": [1, 1]}}), 400),
            "mismatched inputs": (post(json={"inputs": {"input_ids": [[101, 102]], "token_type_ids": [[0, 0]],
                                                        "attention_mask": [[1, 1, 1]]}}), 400),
            "unknown model": (post(json={"text": "a", "model": "resnet"}), 404),
            "unknown version": (post(json={"text": "a", "version": "9"}), 404),
            "bad token": (post(json={"text": "a"}, headers={"Authorization": "Bearer nope"}), 401),
            "no token": (post(json={"text": "a"}, headers={}), 401),
            "image to a text model": (post(json={"image": base64.b64encode(b"abc").decode()}), 400),
            "v2 wrong datatype": (httpx.post(f"{url}/v2/models/{_name(url, auth)}/infer", headers=auth, json={
                "inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}), 400),
        }
        for what, (r, code) in cases.items():
            assert r.status_code == code, (what, r.status_code, r.text)
            body = r.json()
            assert body["status"] == code and body["error"] and "Traceback" not in r.text, what
        assert httpx.get(f"{url}/api/health").status_code == 200  # health needs no token
        ok = post(json={"text": "still serving"})
        assert ok.status_code == 200 and len(ok.json()["outputs"]["embedding"][0]) == 384
    # images: corrupt file, decompression bomb guard
    with running_server(ServeConfig(paths=[str(digits["onnx"].path)], max_image_pixels=4096)) as url:
        r = httpx.post(f"{url}/api/predict", files={"file": ("x.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")})
        assert r.status_code == 400 and "not a readable image" in r.json()["error"]
        from PIL import Image

        buf = io.BytesIO()
        Image.new("L", (100, 100)).save(buf, format="PNG")
        r = httpx.post(f"{url}/api/predict", files={"file": ("big.png", buf.getvalue(), "image/png")})
        assert r.status_code == 413 and "10,000 pixels" in r.json()["error"]
        img = (digits["data"]["x_test"][0, 0] * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        r = httpx.post(f"{url}/api/predict", files={"file": ("d.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == int(digits["data"]["y_test"][0])


def _name(url, headers):
    return httpx.get(f"{url}/api/models", headers=headers).json()["models"][0]["name"]


def test_overload_gives_503_with_retry_after_and_recovers(minilm_artifact):
    _, out_dir = minilm_artifact
    big = {"text": [" ".join(["word"] * 120)] * 64}
    with running_server(ServeConfig(paths=[str(out_dir)], max_batch=64, queue_size=1, max_wait_ms=0)) as url:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            res = list(pool.map(lambda _: httpx.post(f"{url}/api/predict", json=big, timeout=120), range(24)))
        codes = [r.status_code for r in res]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        refused = next(r for r in res if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "overloaded" in refused.json()["error"]
        after = httpx.post(f"{url}/api/predict", json={"text": "recovered"}, timeout=60)
        assert after.status_code == 200
        assert 'slimforge_errors_total{kind="queue_full"}' in httpx.get(f"{url}/metrics").text


def test_versions_and_fallback_when_the_primary_cannot_load(minilm_artifact, minilm_onnx, tmp_path):
    art, out_dir = minilm_artifact
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    cfg = ServeConfig(paths=[f"1={out_dir}", f"2={broken}"], fallback=str(minilm_onnx))
    with running_server(cfg) as url:
        health = httpx.get(f"{url}/api/health").json()
        assert health["status"] == "degraded" and "2" in health["load_errors"] and health["fallback"]
        v1 = httpx.post(f"{url}/api/predict", json={"text": "x", "version": "1"}, timeout=60).json()
        assert v1["version"] == "1" and not v1["fallback"]
        v2 = httpx.post(f"{url}/api/predict", json={"text": "x", "version": "2"}, timeout=60).json()
        assert "fallback" in v2, v2
        assert v2["fallback"] and v2["version"] == "fallback"  # the original FP32 answers for the broken one
        ref, _ = _offline(slimforge.load(minilm_onnx), ["x"])
        assert cosine_similarity(ref, np.asarray(v2["outputs"]["embedding"], np.float32)).min() > 0.9999
        models = httpx.get(f"{url}/api/models").json()["models"]
        assert [m["version"] for m in models] == ["1", "fallback"]


def test_loadtest_reports_throughput_and_percentiles(minilm_artifact, tmp_path):
    from slimforge.serve.loadtest import loadtest

    _, out_dir = minilm_artifact
    with running_server(ServeConfig(paths=[str(out_dir)])) as url:
        s = loadtest(url, concurrency=8, duration_s=3, max_requests=400, out_dir=tmp_path)
    assert s["errors"] == 0 and s["requests"] > 0 and s["requests"] <= 400
    assert s["throughput_rps"] > 0 and s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]
    assert json.loads((tmp_path / "loadtest.json").read_text())["requests"] == s["requests"]
    assert (tmp_path / "loadtest.png").stat().st_size > 5000
    with pytest.raises(slimforge.ConfigError):
        loadtest("ftp://example.com", duration_s=1)
    with pytest.raises(slimforge.ConfigError):
        loadtest("http://127.0.0.1:9", concurrency=0)


# ---- image-to-image and embedding models (tiny, built here) ----
@pytest.fixture(scope="module")
def sr_model(tmp_path_factory):
    """A x2 super-resolution net exported to ONNX (dynamic height/width; output [N, 3, 2H, 2W] in [0, 1])."""
    import torch

    from tests.conftest import TinySR

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("sr")
    art = slimforge.load(TinySR().eval(), example_inputs=torch.rand(1, 3, 16, 16), name="sr")
    return slimforge.export(art, out / "sr.onnx", workdir=out)


def _png(arr):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_super_resolution_keeps_the_upload_size_and_answers_a_png(sr_model):
    from PIL import Image

    pixels = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)  # H=30, W=40
    upload = ("photo.png", _png(pixels), "image/png")
    x = pixels.transpose(2, 0, 1)[None].astype(np.float32) / 255  # the model's own preprocessing: rescale only
    want = np.clip(np.rint(slimforge.open_session(sr_model).run({"input": x})[0][0] * 255), 0, 255)
    with running_server(ServeConfig(paths=[str(sr_model.path)], max_request_pixels=2500)) as url:
        r = httpx.post(f"{url}/api/predict", files={"file": upload}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        pred = body["predictions"][0]
        assert (pred["media_type"], pred["width"], pred["height"]) == ("image/png", 80, 60)
        img = Image.open(io.BytesIO(base64.b64decode(pred["image"])))
        assert img.size == (80, 60) and img.mode == "RGB"
        got = np.asarray(img).transpose(2, 0, 1).astype(np.float64)
        assert np.abs(got - want).max() <= 1  # denormalised: the model's [0, 1] output times 255
        assert body["output_shapes"] == {"output": [1, 3, 60, 80]} and body["outputs"] == {}
        # the image itself when asked for
        r = httpx.post(f"{url}/api/predict", files={"file": upload}, headers={"Accept": "image/png"}, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), np.asarray(img))
        assert float(r.headers["x-processing-ms"]) > 0
        two = [("file", upload), ("file", upload)]
        r = httpx.post(f"{url}/api/predict", files=two, headers={"Accept": "image/png"}, timeout=60)
        assert r.status_code == 406 and "one image" in r.json()["error"]
        # over --max-request-pixels (2,500): refused, never shrunk
        big = ("big.png", _png(np.zeros((50, 51, 3), np.uint8)), "image/png")
        r = httpx.post(f"{url}/api/predict", files={"file": big}, timeout=60)
        assert r.status_code == 413 and "2,550 pixels" in r.json()["error"]
        assert "--max-request-pixels" in r.json()["error"] and "own size" in r.json()["error"]
        mixed = [("file", upload), ("file", ("small.png", _png(pixels[:20, :30]), "image/png"))]
        r = httpx.post(f"{url}/api/predict", files=mixed, timeout=60)
        assert r.status_code == 422 and "separate requests" in r.json()["error"]


def test_embedding_model_returns_its_vectors_and_a_classifier_its_labels(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).eval()
    rows = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(rows)).numpy()
    for task in ("embedding", "classification"):
        art = slimforge.load(net, example_inputs=torch.randn(1, 6), task=task, name=task)
        path = slimforge.export(art, tmp_path / task / "m.onnx", workdir=tmp_path / task).path
        with running_server(ServeConfig(paths=[str(path)])) as url:
            r = httpx.post(f"{url}/api/predict", json={"inputs": rows.tolist()}, timeout=60)
            assert r.status_code == 200, r.text
            preds = r.json()["predictions"]
        assert len(preds) == 2 and None not in preds
        if task == "embedding":
            got = np.asarray([p["embedding"] for p in preds], np.float32)
            assert got.shape == (2, 4) and np.abs(got - want).max() < 1e-5
        else:
            assert [p["label"] for p in preds] == want.argmax(1).tolist()
            p = np.exp(want - want.max(1, keepdims=True))
            assert np.allclose([q["score"] for q in preds], (p / p.sum(1, keepdims=True)).max(1), atol=1e-5)


def test_a_pooling_classifier_with_dynamic_size_is_fed_the_size_it_was_loaded_with(tmp_path):
    """Global pooling makes a classifier's height/width dynamic, yet a phone photo must not run at full size."""
    import torch

    from slimforge.io.data import image_preprocess_for, load_image

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 3))
    art = slimforge.export(slimforge.load(net, example_inputs=torch.rand(1, 3, 24, 24)), tmp_path / "cnn.onnx")
    assert art.io.inputs[0].shape == ("batch", 3, "height", "width")
    upload = _png((np.random.default_rng(2).random((90, 200, 3)) * 255).astype(np.uint8))
    from PIL import Image

    served = slimforge.load(art.path)  # what the server loads: offline evaluation of the same file
    x = load_image(Image.open(io.BytesIO(upload)), image_preprocess_for(served))
    assert x.shape[1:] == served.examples["input"].shape[2:] and x.shape[1:] != (90, 200)
    want = slimforge.open_session(served).run({"input": x[None]})[0]
    with running_server(ServeConfig(paths=[str(art.path)])) as url:
        r = httpx.post(f"{url}/api/predict", files={"file": ("p.png", upload, "image/png")}, timeout=60)
    assert r.status_code == 200, r.text
    assert np.abs(np.asarray(r.json()["outputs"]["output"]) - want).max() < 1e-5
