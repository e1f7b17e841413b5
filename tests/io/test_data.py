"""Data sources: image folders, text lines, .npy/.npz, CSV; lazily batched."""

import numpy as np
import pytest
import torch

import slimforge
from slimforge.io.data import ArrayData, ImageFolder, TextLines, bundled_sentences_path, load_image


def test_bundled_sentences(minilm):
    ds = slimforge.load_data(bundled_sentences_path(), minilm)
    assert isinstance(ds, TextLines) and len(ds) >= 500
    batch = next(ds.batches(8))
    assert batch.feeds["input_ids"].shape[0] == 8
    assert set(batch.feeds) == set(minilm.io.input_names)
    assert len(batch.items) == 8 and all(isinstance(s, str) for s in batch.items)
    assert sum(len(b.items) for b in ds.batches(64, limit=100)) == 100


def test_text_batches_are_lazy(minilm, tmp_path):
    p = tmp_path / "many.txt"
    p.write_text("\n".join(f"sentence number {i} is here." for i in range(5000)))
    ds = slimforge.load_data(p, minilm)
    gen = ds.batches(4)
    assert not isinstance(gen, list)
    first = next(gen)
    assert first.items[0] == "sentence number 0 is here."


def test_image_folder_labels_and_preprocessing(tmp_path):
    from PIL import Image

    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40 + i, 30), colour).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    art = slimforge.load(conv, example_inputs=torch.randn(1, 3, 16, 16))
    ds = slimforge.load_data(tmp_path / "imgs", art)
    assert isinstance(ds, ImageFolder) and len(ds) == 6 and ds.classes == ["cat", "dog"]
    batches = list(ds.batches(4))
    assert [b.feeds["input"].shape for b in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    labels = np.concatenate([b.labels for b in batches])
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]  # round-robin over the classes: a held-out tail has them all
    red = batches[0].feeds["input"][0]
    assert red[0].mean() == pytest.approx(1.0) and red[2].mean() == pytest.approx(0.0)


def test_image_preprocess_resize_crop_normalise(tmp_path):
    from PIL import Image

    p = tmp_path / "x.png"
    Image.new("RGB", (64, 32), (128, 128, 128)).save(p)
    pre = {"kind": "image", "resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "rescale": 1 / 255}
    arr = load_image(p, pre)
    assert arr.shape == (3, 16, 16)
    assert np.allclose(arr, (128 / 255 - 0.5) / 0.5, atol=1e-6)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(slimforge.DataError, match="bad.png: not a readable image"):
        load_image(bad, pre)


def test_npy_is_memory_mapped_and_npz_names(tmp_path, mlp_art):
    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = slimforge.load_data(tmp_path / "x.npy", mlp_art)
    assert isinstance(ds, ArrayData) and isinstance(ds.arrays["input"], np.memmap)
    assert np.array_equal(np.concatenate([b.feeds["input"] for b in ds.batches(32)]), x)
    np.savez(tmp_path / "d.npz", input=x, labels=np.arange(100))
    ds2 = slimforge.load_data(tmp_path / "d.npz", mlp_art)
    assert next(ds2.batches(10)).labels.tolist() == list(range(10))
    np.savez(tmp_path / "wrong.npz", a=x, b=x)
    with pytest.raises(slimforge.DataError, match="name the arrays after the model inputs"):
        slimforge.load_data(tmp_path / "wrong.npz", mlp_art)


def test_csv_with_labels(tmp_path, mlp_art):
    rows = ["," .join([f"f{i}" for i in range(16)] + ["label"])]
    rows += [",".join([str(float(j))] * 16 + [str(j % 3)]) for j in range(10)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    ds = slimforge.load_data(tmp_path / "d.csv", mlp_art)
    b = next(ds.batches(4))
    assert b.feeds["input"].shape == (4, 16) and b.labels.tolist() == [0, 1, 2, 0]
    (tmp_path / "bad.csv").write_text("a,label\n1,0\nx,1\n")
    with pytest.raises(slimforge.DataError, match="row 3 has a non-numeric value"):
        list(slimforge.load_data(tmp_path / "bad.csv", mlp_art).batches(8))


def test_text_data_on_a_non_text_model(tmp_path, mlp_art):
    (tmp_path / "s.txt").write_text("hello\n")
    with pytest.raises(slimforge.DataError, match="needs a text model"):
        slimforge.load_data(tmp_path / "s.txt", mlp_art)


def test_image_preprocessing_comes_from_the_model_folder(tmp_path):
    """A transformers image classifier folder with preprocessor_config.json: size, crop and normalisation used."""
    import json

    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_labels=4, architectures=["ViTForImageClassification"])
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2],
        "size": {"height": 32, "width": 32}, "rescale_factor": 1 / 255}))
    art = slimforge.load(tmp_path / "vit")
    assert art.meta["task"] == "classification" and art.io.input_names == ["pixel_values"]
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (64, 48), (255, 255, 255)).save(tmp_path / "imgs" / "a" / "white.png")
    batch = next(slimforge.load_data(tmp_path / "imgs", art).batches(1))
    x = batch.feeds["pixel_values"]
    assert x.shape == (1, 3, 32, 32)
    assert np.allclose(x[0, :, 0, 0], [(1 - 0.5) / 0.2, (1 - 0.4) / 0.2, (1 - 0.3) / 0.2], atol=1e-5)
    out = slimforge.open_session(art).run(batch.feeds)[0]
    assert out.shape == (1, 4)
