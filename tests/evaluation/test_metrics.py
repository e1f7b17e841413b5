import numpy as np
import pytest

from slimforge.evaluation.metrics import accuracy, cosine_similarity, fidelity_metrics, neighbour_agreement, sqnr_db


def test_accuracy_top_k():
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = np.array([2, 0, 0])
    assert accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert accuracy(logits, labels, 3) == pytest.approx(1.0)


def test_cosine_and_sqnr():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 1.0], [0.0, 5.0]])
    assert cosine_similarity(a, b).tolist() == [0.0, 1.0]
    assert sqnr_db(np.ones(100), np.ones(100) * 1.01) == pytest.approx(40.0, abs=1e-6)
    assert sqnr_db(a, a) == float("inf")


def test_neighbour_agreement_detects_shuffled_embeddings():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((50, 16))
    assert neighbour_agreement(e, e + 1e-6 * rng.standard_normal(e.shape), k=10) == 1.0
    shuffled = e[rng.permutation(50)]
    assert neighbour_agreement(e, shuffled, k=10) < 0.4


def test_fidelity_metrics():
    ref = [np.array([[1.0, 2.0], [3.0, 4.0]])]
    cand = [np.array([[1.0, 2.5], [3.0, 4.0]])]
    m = fidelity_metrics(ref, cand)
    assert m["max_abs"] == pytest.approx(0.5)
    assert 0.99 < m["cosine"] < 1.0
    assert m["min_cosine"] < m["cosine"]
