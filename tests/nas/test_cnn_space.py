"""The subnet space on convolutional nets (``nas.cnn``): stages found through Torch-Pruning's dependency groups
(residual sums and depthwise convolutions couple channels), candidates cut to the widths asked for and refitted
without training, and the latency prediction's arithmetic."""

import numpy as np
import pytest
import torch
from torch import nn

from slimforge.nas.cnn import CnnArch, CnnBuilder, CnnLatency, cnn_geometry

pytest.importorskip("torch_pruning")


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                   nn.Conv2d(64, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.down = nn.Conv2d(32, 48, 3, stride=2, padding=1)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.down(self.dw(torch.relu(x + self.block(x))))
        return self.head(x.mean((2, 3)))


def _data():
    torch.manual_seed(0)
    model = Residual().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.train()
        for _ in range(5):
            model(torch.randn(32, 3, 16, 16))
        model.eval()
    x = torch.randn(96, 3, 16, 16)
    return model, x


def test_stages_follow_the_channels_that_must_go_together():
    model, x = _data()
    geo = cnn_geometry(model, (x[:2],))
    assert geo.stages == ("stem.0", "block.0", "down") and geo.channels == (32, 64, 48)
    # the residual sum couples the stem, the block's last convolution and the depthwise one
    assert set(geo.writers[0]) == {"stem.0", "block.3", "dw"} and "head" in geo.readers[2]
    assert geo.choices(1) == [8, 16, 24, 32, 40, 48, 56, 64] and geo.choices(0) == [8, 16, 24, 32]


def test_candidates_have_the_widths_asked_for_and_stay_close_after_the_refit():
    model, x = _data()
    geo = cnn_geometry(model, (x[:2],))
    builder = CnnBuilder(model, geo, [(x[i:i + 32],) for i in range(0, 64, 32)])
    def cosine(m):  # on inputs the refit never saw
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x[64:]), model(x[64:])).mean())

    for widths in ((24, 48, 40), (16, 32, 24)):
        cut, fits = builder.build(CnnArch(widths))
        assert (cut.stem[0].out_channels, cut.block[0].out_channels, cut.down.out_channels) == widths
        assert cut.dw.groups == cut.dw.in_channels == widths[0]  # the depthwise convolution followed the stem
        assert fits and fits[-1]["layer"] == "head" and fits[-1]["rel_error_after"] < fits[-1]["rel_error_before"]
        plain, _ = builder.build(CnnArch(widths), refit=False)
        assert cosine(cut) > 0.98 and cosine(cut) > cosine(plain) + 0.05  # (here: 0.996 against 0.88-0.92)
    assert next(model.parameters()).shape[0] == 32  # the user's model is untouched


def test_prediction_is_the_convolutions_plus_the_interpolated_rest():
    model, x = _data()
    geo = cnn_geometry(model, (x[:2],))
    builder = CnnBuilder(model, geo, [(x[:32],)])
    table = CnnLatency(builder, {"x": x[:8].numpy()}, threads=1)
    table.outside_ms, table.outside_narrow_ms = 1.0, 0.25  # a filled table: nothing is timed
    for arch in (geo.full(), table.narrow, CnnArch((16, 32, 24))):
        table.ms.update({s: 0.01 * s[2] for s in table.signatures(arch)})
    conv_ms = lambda a: sum(0.01 * s[2] for s in table.signatures(a))  # noqa: E731
    assert table.predict(geo.full()) == pytest.approx(1.0 + conv_ms(geo.full()))
    assert table.predict(table.narrow) == pytest.approx(0.25 + conv_ms(table.narrow))
    mid = table.predict(CnnArch((16, 32, 24))) - conv_ms(CnnArch((16, 32, 24)))
    assert 0.25 < mid < 1.0 and table.measured == 0
    assert np.isfinite(table.predict(CnnArch((16, 32, 24))))


def test_subnet_search_as_a_recipe_step(tmp_path):
    """``subnet_search`` runs through the engine like any step (its handler is the nas plugin's): the sub-network
    comes back with its figures as the step's check; without data it refuses with one line."""
    import slimforge
    from slimforge.core.context import RunContext
    from slimforge.errors import ConfigError
    from slimforge.io.data import load_data
    from slimforge.plan.engine import apply_step
    from slimforge.techniques.prune.subnet_config import SubnetSearchConfig

    model, x = _data()
    art = slimforge.load(model, example_inputs={"x": x[:2]})
    np.savez(tmp_path / "x.npz", x=x.numpy())  # no labels: scored by cosine to the model
    cfg = SubnetSearchConfig(latency_share=0.8, batch=16, trials=4)
    out = apply_step(art, cfg, RunContext(calibration_data=load_data(tmp_path / "x.npz", art)))
    check = next(c for c in out.checks if c.name == "subnet_search")
    assert out.lineage[-1].name == "subnet_search" and out.meta["subnet"]["channels"] != [32, 64, 48]
    assert check.metrics["parameters_after"] < check.metrics["parameters_before"] and check.metrics["test_cosine"] > 0
    assert sum(p.numel() for p in model.parameters()) == check.metrics["parameters_before"]  # the model untouched
    assert out.lineage == (*art.lineage, out.lineage[-1]) and out.lineage[-1].config == cfg.to_dict()
    got = slimforge.open_session(out).run({"x": x[:3].numpy()})[0]
    assert got.shape == (3, 10) and np.isfinite(got).all()
    with pytest.raises(ConfigError, match="--data"):
        apply_step(art, cfg, RunContext())
    with pytest.raises(ConfigError, match="latency_share"):
        SubnetSearchConfig(latency_share=1.5)


def test_a_cnn_sub_network_is_distilled_when_asked(tmp_path):
    """``--distill-epochs`` on a CNN (it crashed: the encoder's "freeze the embeddings" was applied to a net without
    any): the best finalists are distilled on the labelled data and the best after training is kept."""
    import slimforge

    model, x = _data()
    y = model(x).argmax(1).detach().numpy()  # labels the model gets right: accuracy is the score
    np.savez(tmp_path / "d.npz", x=x.numpy(), labels=y)
    art = slimforge.load(model, example_inputs={"x": x[:2]})
    res = slimforge.search_architecture(art, tmp_path / "d.npz", space="subnet", max_latency_ms="80%", batch=16,
                                        trials=3, threads=1, distill_epochs=2)
    assert res.artifact is not None and res.distilled is not None, res.outcome.notes
    runs = res.distilled["finalists"]
    assert runs and all("accuracy_after" in r["heldout"] and r["heldout"]["log_loss"] > 0 for r in runs)
    # ranked by held-out log-loss (accuracy ties at 100% of a small held-out share)
    assert res.distilled["heldout"]["log_loss"] == min(r["heldout"]["log_loss"] for r in runs)
    assert res.artifact.meta["lineage"]["distilled"]["trial"] == res.outcome.chosen.number
