import dataclasses

import pytest

from slimforge.core.config import Config, config_types
from slimforge.core.registry import handlers, lookup
from slimforge.core.artifact import Format
from slimforge.errors import ConfigError, UnsupportedModelError
from slimforge.convert.onnx import ExportConfig
from slimforge.convert.optimize import GraphOptConfig
from slimforge.plan.recipe import Recipe
from slimforge.techniques.quantize.onnx_dynamic import DynamicQuantConfig


@pytest.mark.parametrize("kind", sorted(config_types()))
def test_every_config_round_trips_and_is_frozen(kind):
    cls = config_types()[kind]
    cfg = cls()
    data = cfg.to_dict()
    assert data["type"] == kind and "version" in data
    assert Config.from_dict(data) == cfg
    field = dataclasses.fields(cfg)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, field, None)


def test_every_handler_has_a_registered_config():
    kinds = set(config_types().values())
    assert handlers(), "no handlers registered"
    for h in handlers():
        assert h.config_type in kinds


@pytest.mark.parametrize("bad, match", [
    ({"type": "export_onnx", "opset": 3}, "opset must be between"),
    ({"type": "export_onnx", "exporter": "magic"}, "not one of"),
    ({"type": "export_onnx", "dynamic_axes": ["x"]}, "bad dynamic axes"),
    ({"type": "export_onnx", "colour": 1}, "unknown setting"),
    ({"type": "nope"}, "unknown step type"),
    ({"opset": 17}, "'type' key"),
    ({"type": "quantize_dynamic", "min_cosine": 2}, "min_cosine"),
    ({"type": "graph_optimize", "ort_level": "turbo"}, "not one of"),
])
def test_bad_configs_fail_loudly(bad, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict(bad)


def test_dynamic_axes_parse():
    cfg = ExportConfig(dynamic_axes=("input_ids:0=batch,1=sequence", "x:0"))
    assert cfg.parsed_axes() == {"input_ids": {0: "batch", 1: "sequence"}, "x": {0: "batch"}}


def test_lookup_names_supported_formats():
    with pytest.raises(UnsupportedModelError, match="supports: onnx"):
        lookup(DynamicQuantConfig(), Format.TORCHSCRIPT)


def test_recipe_yaml_round_trip(tmp_path):
    r = Recipe(steps=(ExportConfig(opset=18), GraphOptConfig(slim=False), DynamicQuantConfig(per_channel=True)),
               batch_sizes=(1, 8), threads=2)
    p = tmp_path / "r.yaml"
    p.write_text(r.to_yaml())
    assert Recipe.load(p) == r
    p.write_text("steps: [ {type: export_onnx, opset: 99} ]")
    with pytest.raises(ConfigError, match="opset"):
        Recipe.load(p)
    with pytest.raises(ConfigError, match="batch sizes"):
        Recipe(steps=(), batch_sizes=(0,))


def test_strings_become_enums():
    from slimforge.convert.onnx import Exporter

    assert ExportConfig(exporter="dynamo").exporter is Exporter.DYNAMO
    assert ExportConfig(dynamic_axes=["x:0"]).dynamic_axes == ("x:0",)
    with pytest.raises(ConfigError, match="not one of"):
        ExportConfig(exporter="magic")
