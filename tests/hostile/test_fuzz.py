"""Property-based fuzz of the REST and KServe v2 request schemas: whatever the body, the answer is never a 5xx
(503 for overload aside, which these sequential requests never cause), every error carries a message, and the
server stays healthy. ``make test`` runs a bounded number of examples; ``make test-slow`` runs 2,000+."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimforge.serve import ServeConfig
from slimforge.serve.local import running_server

NAMES = ["input_ids", "attention_mask", "token_type_ids", "text", "bogus", ""]
SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=24)
IDS = st.integers(-5, 40_000) | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=True) | JSON
ROWS = st.lists(st.lists(IDS, min_size=0, max_size=6), min_size=0, max_size=4)
TENSORS = st.dictionaries(st.sampled_from(NAMES), ROWS | JSON, max_size=4)
TEXTS = st.text(max_size=60) | st.lists(st.text(max_size=40), max_size=6) | JSON
IMAGES = st.sampled_from(["data:image/png;base64", "data:,", "iVBORw0KGgo=", "", "@@"]) | st.text(max_size=30) | JSON

PREDICT = st.one_of(
    JSON,
    st.fixed_dictionaries({}, optional={"text": TEXTS, "image": IMAGES, "images": IMAGES, "inputs": TENSORS | JSON,
                                        "model": JSON, "version": JSON}),
)
V2_INPUT = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(NAMES) | JSON,
    "shape": st.lists(st.integers(-2, 8), max_size=3) | JSON,
    "datatype": st.sampled_from(["INT64", "INT32", "FP32", "FP16", "BOOL", "BYTES", "UINT8", "junk"]) | JSON,
    "data": st.lists(IDS, max_size=12) | st.lists(st.text(max_size=20), max_size=3) | JSON,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-3, 64) | JSON}) | JSON,
})
V2 = st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "inputs": st.lists(V2_INPUT, max_size=4) | JSON,
    "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["embedding", "x"]) | JSON}), max_size=2)
    | JSON,
    "parameters": JSON, "id": JSON}))


@pytest.fixture(scope="module")
def server(minilm_onnx):
    with running_server(ServeConfig(paths=[str(minilm_onnx)], name="minilm", max_batch=8)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def _fuzz(client: httpx.Client, examples: int) -> None:
    seen: dict[int, int] = {}

    def check(r: httpx.Response) -> None:
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (r.status_code, r.text[:500], r.request.content[:300])
        if r.status_code >= 400:
            doc = r.json()
            assert doc["status"] == r.status_code and doc["error"] and "Traceback" not in doc["error"]

    common = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))

    @common
    @given(PREDICT)
    def predict(body):
        check(client.post("/api/predict", content=json.dumps(body).encode(),
                          headers={"content-type": "application/json"}))

    @common
    @given(V2, st.binary(max_size=40), st.booleans())
    def v2(body, blob, binary):
        head = json.dumps(body).encode()
        headers = {"Inference-Header-Content-Length": str(len(head))} if binary else {}
        check(client.post("/v2/models/minilm/infer", content=head + (blob if binary else b""), headers=headers))

    @common
    @given(st.binary(max_size=200))
    def raw(blob):
        check(client.post("/api/predict", content=blob, headers={"content-type": "application/json"}))

    predict()
    v2()
    raw()
    print("statuses:", dict(sorted(seen.items())))
    assert sum(seen.values()) >= 3 * examples * 0.9
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0 and seen.get(422, 0) > 0  # both paths exercised
    health = client.get("/api/health").json()
    assert health["status"] == "ok", health


def test_schema_fuzz_finds_no_5xx(server):
    _fuzz(server, 120)


@pytest.mark.slow
def test_schema_fuzz_finds_no_5xx_long(server):
    _fuzz(server, 800)  # 3 x 800 = 2,400 examples
