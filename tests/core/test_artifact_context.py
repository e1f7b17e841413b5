import pytest

from slimforge.core.artifact import Artifact, Check, Format, IOSpec, Step, TensorSpec
from slimforge.core.outputs import atomic_path


def _art():
    return Artifact(format=Format.ONNX, io=IOSpec((TensorSpec("x", ("batch", 4)),)), source_id="src")


def test_ids_follow_lineage():
    a = _art()
    b = a.derive(Step("s", {"k": 1}))
    c = a.derive(Step("s", {"k": 1}))
    d = a.derive(Step("s", {"k": 2}))
    assert b.id == c.id != d.id != a.id
    assert b.lineage == (Step("s", {"k": 1}),)
    assert a.lineage == ()  # the parent is untouched


def test_children_keep_the_history_of_checks():
    a = _art().derive(Step("export")).with_check(Check("v", True, {"max_abs": 0.0}))
    b = a.derive(Step("quantize")).with_check(Check("q", True))
    assert [(c.name, c.step) for c in b.checks] == [("v", 1), ("q", 2)]
    assert [c.name for c in b.step_checks] == ["q"]
    assert a.derive(Step("s")).step_checks == ()


def test_atomic_path_success_and_failure(tmp_path):
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            (tmp.parent / "model.onnx.data").write_bytes(b"side")
            raise RuntimeError("boom")
    assert list((tmp_path / "out").iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"full")
        (tmp.parent / "model.onnx.data").write_bytes(b"side")
    assert target.read_bytes() == b"full"
    assert (target.parent / "model.onnx.data").read_bytes() == b"side"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
