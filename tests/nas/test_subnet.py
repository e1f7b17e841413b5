"""Architecture search, ``subnet`` space: sub-networks of a transformer encoder (a tiny BERT built from a config, with
real tokens), cut per layer with Torch-Pruning, refitted by least squares and scored by cosine; the search end to end
through ``search_architecture`` on an .npz of token inputs."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import slimforge
from slimforge.evaluation.metrics import cosine_similarity
from slimforge.nas.subnet import Skip, SubnetArch, SubnetBuilder, SubnetLatency, geometry

pytest.importorskip("optuna")
transformers = pytest.importorskip("transformers")


class TinyEncoder(nn.Module):
    """A 3-layer BERT (hidden 64, 4 heads, FFN 256) with mean pooling: a sentence embedder in miniature."""

    def __init__(self) -> None:
        super().__init__()
        cfg = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=256, max_position_embeddings=64)
        torch.manual_seed(0)
        self.bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


def _tokens(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 17, n)
    ids = np.zeros((n, 16), np.int64)
    mask = np.zeros((n, 16), np.int64)
    for i, n_tok in enumerate(lengths):
        ids[i, :n_tok] = rng.integers(1000, 30522, n_tok)
        mask[i, :n_tok] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _batches(ids, mask, lo, hi, size=32):
    return [(ids[i:i + size], mask[i:i + size]) for i in range(lo, hi, size)]


def test_geometry_and_choices():
    geo = geometry(TinyEncoder())
    assert (geo.container, geo.layers, geo.heads, geo.ffn, geo.hidden) == ("bert.encoder.layer", 3, 4, 256, 64)
    heads, ffn = geo.choices()
    assert heads == [1, 2, 3, 4] and ffn[-1] == 256 and all(f % 64 == 0 for f in ffn)
    with pytest.raises(slimforge.errors.ConfigError, match="mobilenet_v3"):
        geometry(nn.Sequential(nn.Linear(4, 4)))


def test_a_cut_has_the_asked_shape_and_the_refit_brings_it_closer():
    model = TinyEncoder()
    ids, mask = _tokens(256)
    fit, val = _batches(ids, mask, 0, 192), _batches(ids, mask, 192, 256)
    builder = SubnetBuilder(model, geometry(model), fit, mask_index=1)
    with torch.inference_mode():
        ref = torch.cat([model(*b) for b in val]).numpy()
    arch = SubnetArch(((2, 128), (0, 0), (4, 192)))
    cut, _ = builder.build(arch, refit=False)
    refit, fits = builder.build(arch)
    layers = cut.bert.encoder.layer
    assert isinstance(layers[1], Skip)
    assert layers[0].attention.self.num_attention_heads == 2 and layers[0].attention.self.query.out_features == 32
    assert layers[0].intermediate.dense.out_features == 128 and layers[2].intermediate.dense.out_features == 192
    encoder = sum(p.numel() for p in model.bert.encoder.parameters())
    assert sum(p.numel() for p in cut.bert.encoder.parameters()) < 0.6 * encoder
    with torch.inference_mode():
        cos = {k: float(cosine_similarity(ref, torch.cat([m(*b) for b in val]).numpy()).mean())
               for k, m in (("cut", cut), ("refit", refit))}
    assert cos["cut"] < cos["refit"] < 0.9999, cos  # held-out inputs: the refit generalises
    assert fits and all(f["rel_error_after"] <= f["rel_error_before"] for f in fits)
    narrow, _ = builder.build(SubnetArch(((4, 64), (4, 256), (1, 256))), refit=False)  # an FFN as wide as hidden
    assert narrow.bert.encoder.layer[0].intermediate.dense.out_features == 64
    full, _ = builder.build(geometry(model).full())
    with torch.inference_mode():
        assert torch.allclose(torch.cat([full(*b) for b in val]), torch.from_numpy(ref), atol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # the user's model untouched
    assert model.bert.encoder.layer[1].intermediate.dense.out_features == 256


def test_prediction_is_the_layerless_model_plus_each_kept_layer():
    model = TinyEncoder()
    ids, mask = _tokens(64)
    builder = SubnetBuilder(model, geometry(model), _batches(ids, mask, 0, 64), mask_index=1)
    table = SubnetLatency(builder, {"input_ids": ids[:8].numpy(), "attention_mask": mask[:8].numpy()})
    table.base_ms, table.ms = 0.3, {(4, 256): 1.0, (2, 128): 0.4}  # a filled table: nothing is timed
    assert table.predict(SubnetArch(((4, 256), (0, 0), (2, 128)))) == pytest.approx(1.7)


def _on_file(tmp_path, seed):
    """The tiny encoder as an artifact, and 320 token inputs in an .npz file."""
    model = TinyEncoder()
    ids, mask = _tokens(320, seed=seed)
    data = tmp_path / "tokens.npz"
    np.savez(data, input_ids=ids.numpy(), attention_mask=mask.numpy())
    art = slimforge.load(model, example_inputs={"input_ids": ids[:2], "attention_mask": mask[:2]})
    return model, ids, mask, art, data


# Whether a finalist measures under its budget is a timing outcome; the finalists include one predicted with 15%
# headroom (nas.search.pick_finalists), so a slightly optimistic predictor on a busy machine still leaves one under it
def test_search_architecture_on_token_inputs_from_a_file(tmp_path, minilm_path):
    model, ids, mask, art, data = _on_file(tmp_path, seed=1)
    # the model reads text with MiniLM's tokenizer (same vocabulary): the sub-network must keep that interface
    art = dataclasses.replace(art, meta={**art.meta, "task": "embedding", "preprocess": {
        "kind": "text", "tokenizer": str(minilm_path), "max_length": 16,
        "input_names": ["input_ids", "attention_mask"]}})
    res = slimforge.search_architecture(art, data, max_latency_ms="70%", batch=16, trials=6, threads=1,
                                        output_dir=tmp_path / "out")  # (at 50% a loaded machine once scored none)
    doc = json.loads((tmp_path / "out" / "nas.json").read_text())
    assert doc["space"] == "subnet" and doc["budget_basis_ms"] > 0
    scored = [t for t in doc["trials"] if t["val_accuracy"] is not None]
    assert len(scored) >= 6  # (those predicted over the budget are not cut, and not counted)
    assert all(t["val_accuracy"] is None for t in doc["trials"] if any("latency" in v for v in t["violations"]))
    assert doc["predictor"]["median_abs_error"] is not None and doc["latency_table"]["layers_ms"]
    ch = doc["chosen"]
    assert ch is not None and ch["measured_ms"] <= doc["constraints"]["max_latency_ms"]
    assert 0.0 < ch["test_accuracy"] < 1.0 and ch["predicted_ms"] < doc["baseline"]["latency_ms"]
    back = slimforge.load(res.paths["model"])
    assert back.meta["lineage"]["search"] == "subnet" and back.meta["lineage"]["arch"] == ch["arch_spec"]
    assert back.meta["task"] == "embedding" and back.meta["preprocess"] == art.meta["preprocess"]
    from slimforge.io.data import TextLines, bundled_sentences_path

    text = next(TextLines(bundled_sentences_path(), back).batches(4)).feeds  # (refused text before)
    assert slimforge.open_session(back).run(text)[0].shape == (4, 64)
    assert (tmp_path / "out" / "nas_pareto.png").stat().st_size > 10_000
    feeds = {"input_ids": ids[:8].numpy(), "attention_mask": mask[:8].numpy()}
    got = slimforge.open_session(back).run(feeds)[0]
    with torch.inference_mode():
        want = model(ids[:8], mask[:8]).numpy()
    assert 0.0 < float(cosine_similarity(want, got).mean()) < 1.0


def test_the_chosen_sub_network_is_distilled_from_the_model_when_asked(tmp_path):
    model, ids, mask, art, data = _on_file(tmp_path, seed=2)
    # a loose budget: this test is about the distillation, and at 50% a busy CI machine once measured every finalist
    # of the tiny encoder over it (then nothing is chosen, nothing distilled)
    res = slimforge.search_architecture(art, data, max_latency_ms="75%", batch=16, trials=3, threads=1,
                                        distill_epochs=2, output_dir=tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "nas.json").read_text())
    assert doc["chosen"] is not None, doc["notes"]
    held = doc["distilled"]["heldout"]
    assert doc["distilled"]["curve"][0]["epoch"] == 0 and len(doc["distilled"]["curve"]) == 3  # before + 2 epochs
    # the student handed back is the best epoch's (the trainer's pick), judged on the held-out inputs
    best = max(c["cosine_to_teacher"] for c in doc["distilled"]["curve"][1:])
    assert held["cosine_to_teacher_after"] == pytest.approx(best) and 0.0 < held["cosine_to_teacher"] <= 1.0
    back = slimforge.load(res.paths["model"])
    assert back.meta["lineage"]["distilled"]["heldout"] == held
    assert back.meta["lineage"]["arch"] == doc["chosen"]["arch_spec"]
    # each finalist measured within budget was distilled; the one kept is the best after training, and is the chosen
    runs = doc["distilled"]["finalists"]
    within = [t for t in doc["finalists"] if t["measured_ms"] <= doc["constraints"]["max_latency_ms"]]
    assert len(runs) == min(3, len(within)) >= 1
    afters = [r["heldout"]["cosine_to_teacher_after"] for r in runs]
    assert held["cosine_to_teacher_after"] == max(afters) and doc["distilled"]["trial"] == doc["chosen"]["trial"]
    # each kept layer's output was matched to the same layer of the original (a dropped layer is not: its Skip hands
    # on the layer before it)
    kept = [str(i) for i, layer in enumerate(doc["chosen"]["arch_spec"]["layers"]) if layer["heads"]]
    assert [name.rsplit(".", 1)[1] for name in doc["distilled"]["hidden_layers"]] == kept
