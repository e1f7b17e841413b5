"""NNCF static INT8: ``exclude`` names ONNX nodes and keeps them float in the IR (OpenVINO renames the ops a Conv
with a bias becomes), and the preset follows the activations (symmetric after ReLU, asymmetric where they go
negative)."""

import onnx
import pytest

import slimforge
from tests import foreign

pytest.importorskip("nncf")


def _quantize(src, data, tmp_path, **kw):
    return slimforge.quantize(src, "static", runtime="openvino", data=data, num_samples=16,
                              workdir=tmp_path / f"w{len(kw)}", check_speed=False, **kw)


def _int8_convs(path):
    """Friendly names of the Convolutions with INT8 weights (an i8 constant, converted and scaled) in the IR."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    int8 = set()
    for op in model.get_ops():
        if op.get_type_name() == "Convolution":
            node, seen = op.input_value(1).get_node(), 0
            while node.get_type_name() != "Constant" and seen < 6:
                node, seen = node.input_value(0).get_node(), seen + 1
            if node.get_type_name() == "Constant" and node.get_output_element_type(0).get_type_name() == "i8":
                int8.add(op.get_friendly_name())
    return int8


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return foreign.calibration_images(tmp_path_factory.mktemp("img") / "photos", n=16, size=128)


def test_excluded_onnx_node_names_stay_float_in_the_ir(tmp_path, images):
    src = foreign.cnn(tmp_path / "cnn.onnx")
    convs = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv"]
    full = _int8_convs(_quantize(src, images, tmp_path).path)
    assert len(full) == len(convs)
    kept = _int8_convs(_quantize(src, images, tmp_path, exclude=(convs[1], convs[-1])).path)
    assert f"{convs[1]}/WithoutBiases" not in kept and f"{convs[-1]}/WithoutBiases" not in kept
    assert full - kept == {f"{convs[1]}/WithoutBiases", f"{convs[-1]}/WithoutBiases"}


def test_preset_follows_the_activations(tmp_path, images):
    relu = _quantize(foreign.cnn(tmp_path / "cnn.onnx"), images, tmp_path)
    leaky = _quantize(foreign.detector(tmp_path / "det.onnx"), images, tmp_path)
    assert relu.meta["nncf_preset"] == "performance"
    assert leaky.meta["nncf_preset"] == "mixed"
