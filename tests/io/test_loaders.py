"""Every loader: modules, HF folders, sentence-transformers, TorchScript, torch.export, ONNX (+external data), OpenVINO."""

import copy

import numpy as np
import pytest
import torch

import slimforge
from slimforge.core.artifact import Format
from slimforge.runtimes import open_session
from tests.conftest import TinyImage2Image, TinySR, rand


def test_module_is_not_modified(mlp, tmp_path):
    mlp.train()
    before = copy.deepcopy(mlp.state_dict())
    art = slimforge.load(mlp, example_inputs=torch.randn(3, 16))
    out = open_session(art).run({"input": rand(4, 16)})[0]
    assert out.shape == (4, 10)
    slimforge.export(art, None, workdir=tmp_path)
    assert mlp.training, "training flag was changed"
    for k, v in mlp.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert art.io.inputs[0].shape == ("batch", 16)
    assert art.io.outputs[0].shape == ("batch", 10)


def test_module_dict_examples_and_dynamic_hw():
    art = slimforge.load(TinyImage2Image(), example_inputs={"image": torch.randn(1, 3, 32, 32)})
    assert art.io.input_names == ["image"]
    assert art.io.inputs[0].shape == ("batch", 3, "height", "width")
    assert art.io.outputs[0].shape == ("batch", 3, "height", "width")


@pytest.mark.parametrize("module, hw, want", [
    (TinySR(), (16, 12), ("2*height", "2*width")),  # PixelShuffle(2): twice the input
    (torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), (15, 20), ("height/2", "width/2")),  # 15 -> 8: rounded up
    (torch.nn.Conv2d(3, 4, 3), (16, 16), ("height-2", "width-2")),  # no padding: a fixed offset
])
def test_scaled_output_axes_are_named_for_what_they_are(module, hw, want):
    art = slimforge.load(module.eval(), example_inputs=torch.randn(1, 3, *hw))
    assert art.io.inputs[0].shape == ("batch", 3, "height", "width")
    assert art.io.outputs[0].shape[0] == "batch" and art.io.outputs[0].shape[2:] == want


def test_an_output_axis_that_follows_height_and_width_gets_its_own_name():
    patches = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 4, stride=4), torch.nn.Flatten(2))  # [N, 2, H/4 * W/4]
    art = slimforge.load(patches, example_inputs=torch.randn(1, 3, 16, 16))
    assert art.io.outputs[0].shape == ("batch", 2, "out0_2")


def test_module_without_examples_is_a_clear_error(mlp):
    with pytest.raises(slimforge.ConfigError, match="example_inputs"):
        slimforge.load(mlp)


def test_sentence_transformers_matches_encode(minilm_path, minilm):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path), device="cpu")
    sentences = ["The cat sat on the mat.", "Quantization makes models faster.", "A third, longer sentence here."]
    expected = st.encode(sentences, convert_to_numpy=True)
    from slimforge.io.data import TextLines  # same preprocessing path as evaluation

    enc = st.tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="np")
    feeds = {n: enc[n].astype(np.int64) for n in minilm.io.input_names}
    got = open_session(minilm).run(feeds)[0]
    assert minilm.meta["task"] == "embedding"
    assert np.abs(got - expected).max() < 1e-5
    assert TextLines is not None


def test_transformers_folder(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from slimforge.io.models import default_model_path

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=3, architectures=["BertForSequenceClassification"])
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    BertTokenizerFast.from_pretrained(str(default_model_path())).save_pretrained(tmp_path)
    art = slimforge.load(tmp_path)
    assert art.meta["task"] == "classification"
    assert art.io.outputs[0].shape == ("batch", 3)
    feeds = {k: v for k, v in art.examples.items()}
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    assert np.allclose(open_session(art).run(feeds)[0], ref, atol=1e-6)


def test_torchscript_and_torch_export(tmp_path, mlp):
    mlp.eval()
    x = torch.randn(2, 16)
    ts = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(mlp, x), ts)
    art = slimforge.load(ts, example_inputs=x)
    assert art.format is Format.TORCHSCRIPT
    with torch.no_grad():
        ref = mlp(x).numpy()
    assert np.allclose(open_session(art).run({art.io.input_names[0]: x.numpy()})[0], ref, atol=1e-6)
    with pytest.raises(slimforge.ConfigError, match="input shapes"):
        slimforge.load(ts)

    pt2 = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(mlp, (x,)), pt2)
    art2 = slimforge.load(pt2)
    assert art2.format is Format.TORCH  # unflattened: an editable module of torch.nn layers
    assert [type(m).__name__ for m in art2.handle.modules() if isinstance(m, torch.nn.Linear)]
    assert np.allclose(open_session(art2).run({art2.io.input_names[0]: x.numpy()})[0], ref, atol=1e-6)


def test_onnx_with_external_data(tmp_path, mlp_art):
    out = slimforge.export(mlp_art, tmp_path / "ext" / "m.onnx", external_data="always", workdir=tmp_path)
    assert (tmp_path / "ext" / "m.onnx.data").stat().st_size > 4000  # the weights live beside the graph
    art = slimforge.load(out.path)
    assert art.format is Format.ONNX
    assert art.size_bytes() > (tmp_path / "ext" / "m.onnx").stat().st_size
    x = rand(5, 16)
    assert np.allclose(open_session(art).run({"input": x})[0], open_session(mlp_art).run({"input": x})[0], atol=1e-5)


def test_openvino_ir(tmp_path, mlp_onnx, mlp_art):
    import openvino as ov

    xml = tmp_path / "m.xml"
    ov.save_model(ov.convert_model(str(mlp_onnx)), str(xml), compress_to_fp16=False)
    art = slimforge.load(xml)
    assert art.format is Format.OPENVINO
    x = rand(3, 16)
    got = open_session(art).run({art.io.input_names[0]: x})[0]
    assert np.allclose(got, open_session(mlp_art).run({"input": x})[0], atol=1e-4)


def test_input_files_are_not_modified(tmp_path, mlp_onnx):
    before = mlp_onnx.read_bytes()
    art = slimforge.load(mlp_onnx)
    from slimforge.core.context import RunContext
    from slimforge.core.registry import apply
    from slimforge.convert.optimize import GraphOptConfig

    apply(art, GraphOptConfig(), RunContext(workdir=tmp_path / "w"))
    assert mlp_onnx.read_bytes() == before
