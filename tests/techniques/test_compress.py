"""Pruning, distillation, low-rank and fusion on real trained models (the digits CNN), with their numbers."""

import numpy as np
import pytest
import torch

import slimforge
from slimforge.bench.timing import BenchSpec
from tests.digits import DigitsCNN

FAST = BenchSpec(warmup=2, repeats=30, min_time_s=0.2, max_rounds=8)


def _acc(art, test):
    return slimforge.evaluate(art, test, limit=None)["accuracy"].value


@pytest.fixture(scope="module")
def train_npz(digits, tmp_path_factory):
    p = tmp_path_factory.mktemp("d") / "train.npz"
    np.savez(p, input=digits["data"]["x_train"], labels=digits["data"]["y_train"])
    return p


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_structured_pruning_half_the_channels(digits, train_npz, criterion, tmp_path):
    fp32 = _acc(digits["torch"], digits["test"])
    small = slimforge.prune(digits["torch"], ratio=0.5, criterion=criterion, iterative_steps=2, finetune_epochs=4,
                            finetune_data=train_npz, batch_sizes=(64,), spec=FAST, workdir=tmp_path)
    acc = _acc(small, digits["test"])
    m = small.meta
    assert fp32 - acc <= 1.0, (fp32, acc)
    assert m["parameters_before"] / m["parameters_after"] >= 2.0
    assert m["flops_before"] / m["flops_after"] >= 2.0
    speed = next(c for c in small.step_checks if c.name == "no_slowdown")
    assert speed.metrics["p50_ms_b64"] < speed.metrics["reference_p50_ms_b64"]
    convs = [mod for mod in small.handle.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs[:-1])  # rounded to a multiple of 8
    assert digits["torch"].handle.features[0].out_channels == 32  # the input model is untouched
    # the smaller model exports to ONNX and verifies
    onnx_art = slimforge.export(small, tmp_path / "pruned.onnx", workdir=tmp_path)
    assert onnx_art.step_checks[0].passed


def test_unstructured_pruning_reports_sparsity_honestly(digits, tmp_path):
    sparse = slimforge.prune(digits["torch"], ratio=0.6, structured=False, global_pruning=True,
                             check_speed=False, workdir=tmp_path)
    assert sparse.meta["pruning"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert sparse.meta["parameters_after"] == sparse.meta["parameters_before"]  # same dense shapes
    assert "do not run faster" in sparse.step_checks[0].detail


def test_distillation_beats_training_without_the_teacher(digits, train_npz, tmp_path):
    def student():
        torch.manual_seed(1)
        return DigitsCNN(width=8)

    teacher = digits["torch"]
    params_t = sum(p.numel() for p in teacher.handle.parameters())
    params_s = sum(p.numel() for p in student().parameters())
    assert params_t / params_s >= 4
    kd = slimforge.distill(teacher, student(), data=train_npz, epochs=30, lr=3e-3, alpha=0.7, check_speed=False,
                           workdir=tmp_path)
    alone = slimforge.distill(teacher, student(), data=train_npz, epochs=30, lr=3e-3, alpha=0.0, check_speed=False,
                              workdir=tmp_path)
    acc_kd, acc_alone = _acc(kd, digits["test"]), _acc(alone, digits["test"])
    assert acc_kd >= 97.0
    assert acc_kd >= acc_alone, (acc_kd, acc_alone)
    curve = kd.meta["distill"]["curve"]
    assert curve[0]["epoch"] == 0 and len(curve) == 31 and curve[-1]["accuracy"] > curve[0]["accuracy"]


def test_student_derived_from_teacher_layers(minilm, tmp_path):
    from slimforge.compress import derive_student

    s = derive_student(minilm, 3)
    assert len(s.st[0].auto_model.encoder.layer) == 3
    assert len(minilm.handle.st[0].auto_model.encoder.layer) == 6


def test_fusion_is_exact_to_1e5(digits, tmp_path):
    fused = slimforge.fuse(digits["torch"], check_speed=False, workdir=tmp_path)
    assert fused.meta["fused_pairs"] == 3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.handle.modules())
    x = digits["data"]["x_test"]
    a = slimforge.open_session(digits["torch"]).run({"input": x})[0]
    b = slimforge.open_session(fused).run({"input": x})[0]
    assert np.abs(a - b).max() <= 1e-5
    assert fused.step_checks[0].name == "verify_fusion" and fused.step_checks[0].metrics["max_abs"] <= 1e-5


def test_lowrank_shrinks_and_reports(digits, tmp_path):
    small = slimforge.lowrank(digits["torch"], ratio=0.25, layers=("head.*",), check_speed=False, workdir=tmp_path)
    assert small.meta["parameters_after"] < small.meta["parameters_before"]
    assert "head.1" in small.meta["factorized_layers"]
    fid = next(c for c in small.step_checks if c.name == "lowrank_fidelity")
    assert 0.5 < fid.metrics["cosine"] <= 1.0
    energy = slimforge.lowrank(digits["torch"], energy=0.9, ratio=None, layers=("head.1",), check_speed=False,
                               workdir=tmp_path)
    rank = energy.meta["factorized_layers"]["head.1"]
    assert rank % 8 == 0 and 8 <= rank < 64


def test_hidden_state_distillation_pairs_layers_and_removes_its_hooks(digits, train_npz, tmp_path):
    import copy

    noisy = copy.deepcopy(digits["module"])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = slimforge.distill(digits["torch"], noisy, data=train_npz, epochs=2, lr=1e-3, check_speed=False,
                            hidden_layers=("features.2", "features.5"), freeze=("features.0",), workdir=tmp_path)
    assert all(not m._forward_hooks for m in out.handle.modules()), "hooks left on the distilled model"
    assert torch.equal(out.handle.features[0].weight, noisy.features[0].weight)  # frozen
    assert not torch.equal(out.handle.features[3].weight, noisy.features[3].weight)  # trained
    assert all(p.requires_grad for p in out.handle.parameters())  # thawed after training
    check = out.step_checks[0]
    assert check.metrics["accuracy_after"] >= check.metrics["accuracy_before"] - 0.5
    with pytest.raises(slimforge.ConfigError, match="hidden_layers"):
        slimforge.distill(digits["torch"], noisy, data=train_npz, epochs=1, check_speed=False,
                          hidden_layers=("no.such.layer",), workdir=tmp_path)
    with pytest.raises(slimforge.ConfigError, match="freeze"):
        slimforge.distill(digits["torch"], noisy, data=train_npz, epochs=1, check_speed=False,
                          freeze=("no.such.layer",), workdir=tmp_path)


@pytest.mark.slow  # 80 s on 2 cores; the refit on small models runs in the default suite
def test_minilm_pruning_with_data_refits_layers_by_least_squares(minilm, tmp_path):
    """Heads and FFN neurons pruned in 2 steps (6 of 12 heads left, not over-pruned by the step schedule); with data,
    every layer that reads pruned features is refitted against the original and the held-out cosine rises a lot."""
    from slimforge.evaluation.metrics import cosine_similarity
    from slimforge.io.data import TextLines, bundled_sentences_path

    lines = bundled_sentences_path().read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.txt").write_text("\n".join(lines[:256]) + "\n", encoding="utf-8")
    (tmp_path / "held.txt").write_text("\n".join(lines[-128:]) + "\n", encoding="utf-8")
    plain = slimforge.prune(minilm, ratio=0.5, check_speed=False, workdir=tmp_path)
    refit = slimforge.prune(minilm, ratio=0.5, iterative_steps=2, finetune_data=tmp_path / "train.txt",
                            criterion="lsq", check_speed=False, workdir=tmp_path)
    assert plain.meta["pruning"]["attention_heads"] == refit.meta["pruning"]["attention_heads"] == [6] * 6
    assert refit.meta["parameters_after"] == plain.meta["parameters_after"]
    fits = refit.meta["pruning"]["steps"][-1]["reconstruction"]
    assert len(fits) == 12 and all(f["rel_error_after"] < f["rel_error_before"] for f in fits), fits
    held = [b.feeds for b in TextLines(tmp_path / "held.txt", minilm).batches(64)]
    ref, a, b = ([s.run(f)[0] for f in held] for s in map(slimforge.open_session, (minilm, plain, refit)))
    cos_plain = float(np.mean([cosine_similarity(r, x).mean() for r, x in zip(ref, a)]))
    cos_refit = float(np.mean([cosine_similarity(r, x).mean() for r, x in zip(ref, b)]))
    assert cos_refit > cos_plain + 0.1, (cos_plain, cos_refit)
    assert "reconstruction" not in plain.meta["pruning"]["steps"][0]
