import pytest

from slimforge.core.artifact import Artifact, Check, Format, IOSpec, Step, TensorSpec
from slimforge.core.context import atomic_path


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


def test_checks_do_not_leak_to_children():
    a = _art().with_check(Check("v", True, {"max_abs": 0.0}))
    assert len(a.checks) == 1
    assert a.derive(Step("s")).checks == ()


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
