"""Distillation judged honestly: the held-out share is a random, stratified draw (not the tail of class-ordered
data), and a student that ends far below its teacher fails the check, with both numbers recorded."""

import numpy as np
import pytest
import torch

import slimforge
from slimforge.techniques.distill.heldout import split_indices
from slimforge.train.data import spread_batches
from tests.digits import DigitsCNN


def _student():
    torch.manual_seed(1)
    return DigitsCNN(width=8)


@pytest.fixture(scope="module")
def sorted_npz(digits, tmp_path_factory):
    """The digits training set stored class by class, as an image folder or a per-class .npz is."""
    order = np.argsort(digits["data"]["y_train"], kind="stable")
    p = tmp_path_factory.mktemp("sorted") / "train.npz"
    np.savez(p, input=digits["data"]["x_train"][order], labels=digits["data"]["y_train"][order])
    return p


def _acc(art, test):
    return slimforge.evaluate(art, test, limit=None)["accuracy"].value


def test_student_on_class_ordered_data_ends_near_the_teacher(digits, sorted_npz, tmp_path):
    # before: the last 20% (classes 8 and 9 only) were held out: never trained on, and early stopping kept the
    # epoch best on them alone; the student ended at 44% on the test set
    out = slimforge.distill(digits["torch"], _student(), data=sorted_npz, epochs=10, check_speed=False,
                            workdir=tmp_path)
    check = out.step_checks[0]
    assert check.name == "distill_heldout" and check.passed
    m = check.metrics
    assert m["teacher_accuracy"] >= 97.0 and m["student_accuracy"] >= m["teacher_accuracy"] - 5.0, m
    assert m["accuracy_drop"] == pytest.approx(m["teacher_accuracy"] - m["student_accuracy"])
    assert m["max_drop"] == 5.0 and 0.0 <= m["agreement"] <= 100.0
    assert _acc(out, digits["test"]) >= 90.0


def test_a_student_far_below_its_teacher_fails_the_check(digits, sorted_npz, tmp_path):
    with pytest.raises(slimforge.VerificationError, match="far below its teacher") as info:
        slimforge.distill(digits["torch"], _student(), data=sorted_npz, epochs=1, lr=1e-5, check_speed=False,
                          workdir=tmp_path)
    check = info.value.report.step_checks[0]  # the trained student and its failed check travel with the error
    assert not check.passed and check.metrics["student_accuracy"] < 40.0 < check.metrics["teacher_accuracy"]
    assert check.metrics["accuracy_drop"] > 5.0 and "5 allowed" in check.detail
    # a looser tolerance, or none, is the caller's choice, and the numbers are still recorded
    out = slimforge.distill(digits["torch"], _student(), data=sorted_npz, epochs=1, lr=1e-5, max_drop=None,
                            check_speed=False, workdir=tmp_path)
    loose = out.step_checks[0]
    assert loose.passed and "not judged" in loose.detail and loose.metrics["accuracy_drop"] > 5.0
    with pytest.raises(slimforge.ConfigError, match="max_drop"):
        slimforge.distill(digits["torch"], _student(), data=sorted_npz, max_drop=-1.0, check_speed=False)


def test_heldout_split_is_random_and_stratified():
    labels = np.repeat(np.arange(5), 20)  # class-ordered
    train, held = split_indices(100, 0.2, labels, seed=0)
    assert len(held) == 20 and sorted(set(train) | set(held)) == list(range(100)) and not set(train) & set(held)
    assert np.bincount(labels[held]).tolist() == [4] * 5  # every class in both parts
    assert split_indices(100, 0.2, labels, seed=0) == (train, held)  # seeded
    _, unlabelled = split_indices(100, 0.2, None, seed=0)
    assert len(unlabelled) == 20 and max(unlabelled) - min(unlabelled) > 50  # spread, not the tail
    assert split_indices(2, 0.2, None, seed=0)[0] and split_indices(2, 0.2, None, seed=0)[1]


def test_a_sample_limit_spreads_over_the_whole_data(tmp_path, mlp_art):
    x = np.arange(1000 * 16, dtype=np.float32).reshape(1000, 16)
    np.savez(tmp_path / "d.npz", input=x, labels=np.repeat(np.arange(10), 100))
    ds = slimforge.load_data(tmp_path / "d.npz", mlp_art)
    labels = np.concatenate([b.labels for b in spread_batches(ds, 100)])
    assert len(labels) == 100 and np.bincount(labels).tolist() == [10] * 10  # not the first class alone
    assert sum(len(b.labels) for b in spread_batches(ds, 2000)) == 1000


def test_the_check_scores_a_classifier_by_log_loss_where_accuracy_ties():
    from torch.utils.data import TensorDataset

    from slimforge.techniques.distill.heldout import Tolerance, judge_student

    labels = torch.tensor([0, 1, 2, 1])
    teacher = torch.nn.functional.one_hot(labels, 3).float() * 4.0

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.logits = logits

        def forward(self, x):
            return self.logits[x.long().flatten()] + 0 * self.w

    x = torch.arange(4).float().unsqueeze(1)
    held = TensorDataset(x, teacher, labels)
    sure, unsure = teacher * 2.0, teacher * 0.25  # both 100% accurate
    checks = [judge_student(Fixed(lg), held, has_labels=True, embedding=False, tol=Tolerance(None, None), extra={})
              for lg in (sure, unsure)]
    assert [c.metrics["student_accuracy"] for c in checks] == [100.0, 100.0]
    want = [float(torch.nn.functional.cross_entropy(lg, labels)) for lg in (sure, unsure)]
    assert [c.metrics["log_loss"] for c in checks] == pytest.approx(want)
    assert checks[0].metrics["log_loss"] < checks[1].metrics["log_loss"]
    # the cosine of logits cannot tell them apart: it is why the search ranks finalists by log-loss
    assert checks[0].metrics["cosine_to_teacher"] == pytest.approx(checks[1].metrics["cosine_to_teacher"])
    unlabelled = judge_student(Fixed(unsure), TensorDataset(x, teacher), has_labels=False, embedding=False,
                               tol=Tolerance(None, None), extra={})
    assert unlabelled.metrics["kl_to_teacher"] > 0 and "log_loss" not in unlabelled.metrics
