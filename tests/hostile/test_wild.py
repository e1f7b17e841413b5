"""Models from the wild (tests/wild.py): dynamic dims whose valid sizes must be probed (a stride-32 detector, STFT
audio, anonymous ``?`` dims), the task each one is judged by, the user's shapes and preprocessing reaching every
run, and the baseline and every candidate fed byte-identical inputs. The whole corpus through every command is
the slow test at the end (and ``benchmarks/wild_corpus.py``)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import slimforge
from slimforge.cli.app import app
from slimforge.convert.verify import verification_cases
from slimforge.errors import ConfigError
from slimforge.evaluation.tasks import detect_task
from slimforge.io.inputs import with_overrides
from tests import foreign, wild

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("wild")
    return {name: make(d / f"{name}.onnx") for name, make in wild.WILD.items()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return foreign.calibration_images(tmp_path_factory.mktemp("photos"), n=12, size=160)


def _runs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})


EXPECTED_TASK = {"strided_detector": "detection", "text_detector": "segmentation", "vad": "stateful",
                 "anonymous_classifier": "classification", "super_resolution": "image-to-image",
                 "recognizer": "sequence"}


@pytest.mark.parametrize("name", list(wild.WILD))
def test_probed_examples_run_and_every_verification_case_runs(files, name):
    art = slimforge.load(files[name])
    cases = verification_cases(art)
    assert len(cases) >= 2, cases  # the probed size, then a second valid one for whatever may vary
    for _, feeds in cases:
        _runs(files[name], feeds)  # ONNX Runtime itself: every case is a size the model takes
    ref = _runs(files[name], art.examples)
    assert detect_task(art.io, ref, art.meta) == EXPECTED_TASK[name]


def test_detector_sizes_are_multiples_of_its_stride(files):
    art = slimforge.load(files["strided_detector"])
    sizes = [feeds["images"].shape[2:] for _, feeds in verification_cases(art)]
    assert art.examples["images"].shape[2:] == (224, 224)  # the typical size first
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in sizes), sizes
    assert len(set(sizes)) == 2 and sizes[1][0] != sizes[1][1]  # H and W varied independently
    for h in (224 + 8, 224 + 16):  # what the probe rules out really fails
        with pytest.raises(Exception, match="(?i)concat|dimension"):
            _runs(files["strided_detector"], {"images": np.zeros((1, 3, h, 224), np.float32)})


def test_user_shape_is_used_by_every_verification_case(files):
    art = slimforge.load(files["strided_detector"], input_shapes={"images": (1, 3, 320, 320)})
    cases = verification_cases(art)
    assert cases[0][1]["images"].shape == (1, 3, 320, 320)
    assert all(feeds["images"].shape[2:] == (320, 320) for _, feeds in cases)  # only the batch varies


def test_audio_gets_a_realistic_chunk_and_a_sample_rate(files):
    art = slimforge.load(files["vad"])
    ex = art.examples
    assert ex["input"].shape[1] >= 512 and int(ex["sr"]) == 16000
    assert ex["state"].shape == (2, ex["input"].shape[0], 64) and not ex["state"].any()
    prob = _runs(files["vad"], ex)[0]
    assert np.all((prob >= 0) & (prob <= 1))


def test_anonymous_dims_are_independent(files):
    r = runner.invoke(app, ["info", str(files["anonymous_classifier"]), "--input-shape", "x:1x3x48x192", "--json"])
    assert r.exit_code == 0, r.output
    art = slimforge.load(files["anonymous_classifier"], input_shapes={"x": (1, 3, 48, 192)})
    assert art.examples["x"].shape == (1, 3, 48, 192)
    assert [feeds["x"].shape[2:] for _, feeds in verification_cases(art)] == [(48, 192), (48, 192)]


def test_further_sizes_are_verified_and_a_slowdown_there_rejects(files):
    """``--input-shape`` given twice for one input (an image-to-image net used at 64x64 and at 96x128): the first
    is the main size, the second is verified and timed; slower there is slower."""
    from slimforge.auto.candidates import Candidate
    from slimforge.auto.evaluate import Evaluated
    from slimforge.auto.select import slowdowns
    from slimforge.bench.compare import Ratio
    from slimforge.cli.common import load_model
    from slimforge.plan.recipe import Recipe

    art = load_model(str(files["super_resolution"]), ["input:1x3x64x64", "input:1x3x96x128"])
    assert art.examples["input"].shape == (1, 3, 64, 64)
    cases = verification_cases(art)
    assert cases[-1][0] == "at input=1x3x96x128" and cases[-1][1]["input"].shape == (1, 3, 96, 128)
    assert _runs(files["super_resolution"], cases[-1][1])[0].shape == (1, 3, 192, 256)
    e = Evaluated(Candidate(Recipe(steps=())))
    e.latency = {1: {"p50": 2.0}}
    e.ratio = {1: Ratio(1.5, 1.4, 1.6)}  # faster at the main size
    assert slowdowns(e) == ""
    e.at_sizes = {"input=1x3x96x128": {"batch": 1, "p50": 44.0}}
    e.size_ratio = {"input=1x3x96x128": Ratio(0.88, 0.85, 0.91)}  # 44 vs 39 ms at the larger size
    assert "at input=1x3x96x128 (44 ms, 0.88x" in slowdowns(e)


def test_a_baseline_that_cannot_run_is_one_line_naming_the_input(files, tmp_path):
    """300x300 is no multiple of the detector's stride: the user's shape is what runs, so the search stops at once."""
    p = subprocess.run([sys.executable, "-m", "slimforge", "optimize", str(files["strided_detector"]), "--target",
                        "cpu", "--input-shape", "images:1x3x300x300", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    lines = [x for x in p.stderr.splitlines() if x.startswith("error")]
    assert p.returncode == 2 and len(lines) == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "images 1x3x300x300" in lines[0], lines
    assert "--input-shape images:1x3xNxN, its image sizes multiples of 32" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_preprocess_is_parsed_checked_and_applied(files, photos):
    from PIL import Image

    from slimforge.io.data import load_data

    for bad, says in (("layout=NCWH", "NCHW or NHWC"), ("scale=abc", "as a number"), ("std=0", "not be 0"),
                      ("colour=red", "unknown key"), ("size=big", "HxW")):
        with pytest.raises(ConfigError, match=says):
            with_overrides(slimforge.load(files["anonymous_classifier"]), preprocess=bad)
    art = with_overrides(slimforge.load(files["anonymous_classifier"]),
                         preprocess="order=BGR scale=1/255 mean=0.5,0.4,0.3 std=0.25 size=48x192")
    batch = next(load_data(photos, art).batches(2))
    first = sorted(Path(photos).rglob("*.*"))[0]
    img = np.asarray(Image.open(first).convert("RGB").resize((192, 48), Image.BILINEAR), np.float32) / 255
    want = (img.transpose(2, 0, 1)[::-1] - np.array([0.5, 0.4, 0.3]).reshape(3, 1, 1)) / 0.25
    np.testing.assert_allclose(batch.feeds["x"][0], want, atol=1e-5)


def test_baseline_and_every_candidate_get_byte_identical_inputs(files, photos, tmp_path, monkeypatch):
    """A search on real photos with the user's preprocessing: every artifact that is evaluated on the data gets
    the very same bytes as the baseline, and they are the bytes the preprocessing makes."""
    from slimforge.auto.targets import Target
    from slimforge.io.data import load_data
    from slimforge.runtimes import base, onnxruntime as rt_ort, openvino as rt_ov

    pre = "mean=0.485,0.456,0.406 std=0.229,0.224,0.225 size=64x96"
    art = with_overrides(slimforge.load(files["anonymous_classifier"]), preprocess=pre)
    rows = {hashlib.sha256(r.tobytes()).hexdigest() for b in load_data(photos, art).batches(4) for r in b.feeds["x"]}
    seen: dict[str, set[str]] = {}

    def spy(a, feeds):
        x = np.asarray(feeds.get("x"))
        if x.ndim == 4:
            seen.setdefault(f"{a.format.value}:{a.path}", set()).update(
                hashlib.sha256(np.ascontiguousarray(r, np.float32).tobytes()).hexdigest() for r in x)
        return base.check_feeds(a, feeds)

    monkeypatch.setattr(rt_ort, "check_feeds", spy)
    monkeypatch.setattr(rt_ov, "check_feeds", spy)
    target = Target(name="t", runtimes=("onnxruntime", "openvino"), precisions=("fp32", "int8"), batch_sizes=(1,),
                    training=False)
    res = slimforge.optimize(art, data=photos, target=target, output_dir=tmp_path / "out", time_budget_s=120)
    fed = {k: v & rows for k, v in seen.items() if v & rows}
    assert len(fed) >= 3, list(fed)  # the baseline and at least two candidates saw the photos
    assert all(v == rows for v in fed.values()), {k: len(v) for k, v in fed.items()}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    used = " ".join(report.get("notes", []))
    assert "mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225]" in used and "64x96" in used, used
    assert "(--preprocess mean, size, std; the rest derived from the input shape)" in used, used
    assert res is not None


@pytest.mark.slow
def test_the_whole_corpus_through_every_command(tmp_path):
    """12 models, info + every quantize method + optimize --target cpu with and without data, as a user runs
    them: no tracebacks, and every optimize ends in a gain or an honest "no gain" with its task metric."""
    out = tmp_path / "corpus.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wild_corpus.py"), "--budget", "60s", "--out",
                        str(out), "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=5400)
    doc = json.loads(out.read_text())
    assert doc["tracebacks"] == 0, p.stdout[-3000:]
    assert len(doc["models"]) >= 12
    for row in doc["models"]:
        for run in row["runs"]:
            assert run["exit"] in (0, 2, 3), (row["model"], run)
            if run["args"][0] == "optimize":
                assert run["exit"] in (0, 3), (row["model"], run)
                assert run.get("task") and (run.get("chosen") or run.get("no_gain")), (row["model"], run)
                assert "agreement" in (run.get("quality") or {}) or run.get("no_gain"), (row["model"], run)
