"""The search report's side-by-side profiles: where the time went in the baseline and where it goes in the
winner, block by block, with both end-to-end latencies."""

from slimforge.report.render import _profiles


def _side(runtime: str, e2e: float, blocks: list[tuple[str, float]]) -> dict:
    total = sum(ms for _, ms in blocks)
    return {"runtime": runtime, "batch": 1, "end_to_end_ms": e2e,
            "blocks": [{"name": n, "self_ms": ms, "pct": ms / total} for n, ms in blocks]}


def test_profiles_side_by_side():
    page = _profiles({"baseline": _side("onnxruntime", 10.0, [("enc.layer.0", 6.0), ("enc.layer.1", 4.0)]),
                      "chosen": _side("openvino", 5.0, [("enc.layer.0", 2.0), ("enc.layer.1", 3.0)])})
    assert "baseline (onnxruntime) and chosen (openvino)" in page
    assert "<td>enc.layer.0</td><td>6 ms (60.0%)</td><td>2 ms (40.0%)</td>" in page
    assert "<td>end to end</td><td>10 ms</td><td>5 ms</td>" in page
    assert _profiles(None) == "" and _profiles({"baseline": {}}) == ""
