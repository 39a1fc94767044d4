"""Metrics against hand-computed values (sklearn definitions, zero_division=0); cpu and fakecupy."""
from __future__ import annotations

import numpy
import pytest

import gpuconv.metrics as M
from gpuconv.backend import to_device
from conftest import device_fixture_with_second_gpu, on_device  # noqa: F401

device = device_fixture_with_second_gpu()

Y_TRUE = numpy.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
Y_PRED = numpy.array([0, 1, 1, 1, 2, 2, 2, 0, 2, 3])   # class 3: predicted once, never true
CM = numpy.array([[1, 1, 0, 1],
                  [0, 2, 1, 0],
                  [1, 0, 3, 0],
                  [0, 0, 0, 0]])
PRECISION = [1 / 2, 2 / 3, 3 / 4, 0.0]
RECALL = [1 / 3, 2 / 3, 3 / 4, 0.0]        # class 3 has no true samples -> 0
F1 = [2 / 5, 2 / 3, 3 / 4, 0.0]


def _logits_for(labels, k=4, seed=0):
    """Random scores whose argmax is ``labels``."""
    scores = numpy.random.default_rng(seed).standard_normal((len(labels), k))
    scores[numpy.arange(len(labels)), labels] = scores.max(axis=1) + 1.0
    return scores


@pytest.fixture
def data(device):
    return to_device(Y_TRUE, device), to_device(Y_PRED, device), device


def test_confusion_matrix(data):
    y, p, device = data
    cm = M.confusion_matrix(y, p, 4)
    assert isinstance(cm, numpy.ndarray) and cm.dtype == numpy.int64
    numpy.testing.assert_array_equal(cm, CM)
    numpy.testing.assert_array_equal(
        M.confusion_matrix(y, to_device(_logits_for(Y_PRED), device), 4), CM)


def test_accuracy_from_labels_and_logits(data):
    y, p, device = data
    assert M.accuracy(y, p) == pytest.approx(0.6)
    assert isinstance(M.accuracy(y, p), float)
    assert M.accuracy(y, to_device(_logits_for(Y_PRED), device)) == pytest.approx(0.6)
    binary = to_device(numpy.array([[2.0], [-1.0], [0.5], [-3.0]]), device)
    assert M.accuracy(to_device(numpy.array([1, 0, 0, 0]), device), binary) == 0.75
    assert M.accuracy(to_device(numpy.zeros(0, dtype=int), device),
                      to_device(numpy.zeros(0, dtype=int), device)) == 0.0


def test_host_labels_with_device_logits(device):
    logits = to_device(_logits_for(Y_PRED), device)
    assert M.accuracy(Y_TRUE, logits) == pytest.approx(0.6)
    numpy.testing.assert_array_equal(M.confusion_matrix(Y_TRUE, logits, 4), CM)


def test_top_k_accuracy(device):
    logits = numpy.array([[0.1, 0.5, 0.3, 0.0],    # true 2: rank 1 (one higher)
                          [0.9, 0.1, 0.2, 0.3],    # true 1: rank 3
                          [0.2, 0.2, 0.2, 0.1],    # true 0: tie at the top -> rank 0
                          [0.0, 0.1, 0.2, 0.3]])   # true 3: rank 0
    y = numpy.array([2, 1, 0, 3])
    expected = {1: 0.5, 2: 0.75, 3: 0.75, 4: 1.0}
    for k, value in expected.items():
        got = M.top_k_accuracy(to_device(y, device), to_device(logits, device), k)
        assert got == pytest.approx(value), k
    no_ties = to_device(logits[[0, 1, 3]], device)    # without ties top-1 == accuracy
    assert M.top_k_accuracy(to_device(y[[0, 1, 3]], device), no_ties, 1) == \
        M.accuracy(to_device(y[[0, 1, 3]], device), no_ties)


def test_precision_recall_f1_per_class(data):
    y, p, _ = data
    precision, recall, f1 = M.precision_recall_f1(y, p, 4)
    for got, want in ((precision, PRECISION), (recall, RECALL), (f1, F1)):
        assert isinstance(got, numpy.ndarray) and got.dtype == numpy.float64
        numpy.testing.assert_allclose(got, want, rtol=1e-12)


def test_precision_recall_f1_averages(data):
    y, p, _ = data
    support = CM.sum(axis=1)
    macro = M.precision_recall_f1(y, p, 4, average="macro")
    weighted = M.precision_recall_f1(y, p, 4, average="weighted")
    numpy.testing.assert_allclose(macro, [numpy.mean(PRECISION), numpy.mean(RECALL),
                                          numpy.mean(F1)], rtol=1e-12)
    numpy.testing.assert_allclose(weighted, [0.65, 0.6, 0.62], rtol=1e-12)
    numpy.testing.assert_allclose(weighted[2], numpy.dot(F1, support) / support.sum())
    assert all(isinstance(v, float) for v in macro + weighted)
    with pytest.raises(ValueError, match="average"):
        M.precision_recall_f1(y, p, 4, average="micro")


def test_all_zero_division_gives_zero(device):
    y = to_device(numpy.array([0, 0, 0]), device)
    p = to_device(numpy.array([1, 1, 1]), device)
    precision, recall, f1 = M.precision_recall_f1(y, p, 3)
    numpy.testing.assert_array_equal(precision, [0, 0, 0])
    numpy.testing.assert_array_equal(recall, [0, 0, 0])
    numpy.testing.assert_array_equal(f1, [0, 0, 0])
    assert numpy.isfinite(M.precision_recall_f1(y, p, 3, average="weighted")).all()


def test_classification_report(data):
    y, p, _ = data
    report = M.classification_report(y, p, ["cat", "dog", "bird", "frog"])
    expected = (
        "              precision    recall  f1-score   support\n"
        "\n"
        "         cat       0.50      0.33      0.40         3\n"
        "         dog       0.67      0.67      0.67         3\n"
        "        bird       0.75      0.75      0.75         4\n"
        "        frog       0.00      0.00      0.00         0\n"
        "\n"
        "    accuracy                           0.60        10\n"
        "   macro avg       0.48      0.44      0.45        10\n"
        "weighted avg       0.65      0.60      0.62        10\n"
    )
    assert report == expected
    default = M.classification_report(y, p)  # names "0".."3" from the largest label
    assert default.splitlines()[2].split() == ["0", "0.50", "0.33", "0.40", "3"]
    with pytest.raises(ValueError, match="class names"):
        M.classification_report(y, p, ["a", "b"], num_classes=4)


def test_bad_inputs(device):
    y = to_device(Y_TRUE, device)
    with pytest.raises(ValueError, match=r"predicted labels must lie in \[0, 2\]"):
        M.confusion_matrix(y, to_device(Y_PRED, device), 3)
    with pytest.raises(ValueError, match="y_true"):
        M.accuracy(to_device(Y_TRUE[:5], device), to_device(Y_PRED, device))
    with pytest.raises(TypeError, match="integer"):
        M.accuracy(y, to_device(Y_PRED.astype(float), device))
    with pytest.raises(ValueError, match="y_true labels"):
        M.top_k_accuracy(y, to_device(numpy.zeros((10, 2)), device), 1)
