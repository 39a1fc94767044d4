"""Sequential.summary: layer table, output shapes, parameter counts, mode restoration."""
from __future__ import annotations

import numpy
import pytest

import gpuconv
from gpuconv.layers import (BatchNorm1d, BatchNorm2d, Conv2D, Dense, Dropout, Flatten,
                            MaxPool2D, ReLU, Residual)
from gpuconv.training.summary import count_parameters


def cnn(dtype="float32") -> gpuconv.Sequential:
    return gpuconv.Sequential([
        Conv2D(3, 8, 3, padding=1, dtype=dtype), BatchNorm2d(8, dtype=dtype), ReLU(),
        MaxPool2D(2), Residual([Conv2D(8, 8, 3, padding=1, dtype=dtype), ReLU()]),
        Flatten(), Dropout(0.5), Dense(8 * 16 * 16, 10, dtype=dtype),
        BatchNorm1d(10, dtype=dtype)])


def test_table_rows_shapes_and_counts(device):
    model = cnn().to(device)
    text = model.summary((3, 32, 32), print_fn=None)
    lines = text.splitlines()
    expected_rows = [
        ("Conv2D", "(None, 8, 32, 32)", 3 * 8 * 9 + 8),
        ("BatchNorm2d", "(None, 8, 32, 32)", 4 * 8),
        ("ReLU", "(None, 8, 32, 32)", 0),
        ("MaxPool2D", "(None, 8, 16, 16)", 0),
        ("Residual", "(None, 8, 16, 16)", 8 * 8 * 9 + 8),
        ("Flatten", "(None, 2048)", 0),
        ("Dropout", "(None, 2048)", 0),
        ("Dense", "(None, 10)", 2048 * 10 + 10),
        ("BatchNorm1d", "(None, 10)", 4 * 10),
    ]
    for i, (name, shape, count) in enumerate(expected_rows):
        row = next(line for line in lines if line.split()[:2] == [str(i), name])
        assert shape in row and row.split()[-1] == f"{count:,}"
    trainable = sum(p.data.size for p in model.parameters())
    buffers = sum(b.size for _, b in model.named_buffers())
    assert buffers == 2 * 8 + 2 * 10
    assert f"Total params: {trainable + buffers:,}" in text
    assert f"Trainable params: {trainable:,}" in text
    assert f"Non-trainable params: {buffers:,}" in text
    assert count_parameters(model) == (trainable, buffers)
    assert "(None, 3, 32, 32)" in lines[0] and "float32" in lines[0]
    assert str(gpuconv.get_device(device)) in lines[0]


def test_prints_by_default_and_returns_text(capsys):
    model = gpuconv.Sequential([Flatten(), Dense(4, 2)])
    text = model.summary((2, 2))
    assert capsys.readouterr().out.strip() == text.strip()
    assert "Dense" in text and "(None, 2)" in text
    model.summary((2, 2), print_fn=None)
    assert capsys.readouterr().out == ""


def test_modes_restored_caches_cleared_float64():
    model = cnn("float64")
    model.train()
    model[6].eval()  # mixed modes must come back exactly
    stats = numpy.array(model[1].running_mean, copy=True)
    text = model.summary((3, 32, 32), print_fn=None)
    assert "float64" in text.splitlines()[0]
    assert model.training and model[0].training and not model[6].training
    assert all(getattr(layer, "_cache", None) is None for layer in model)
    numpy.testing.assert_array_equal(model[1].running_mean, stats)  # eval: stats untouched


def test_bad_input_shape_names_the_layer():
    model = cnn()
    with pytest.raises(ValueError, match=r"summary: layer 0 \(Conv2D"):
        model.summary((1, 32, 32), print_fn=None)
    with pytest.raises(ValueError, match="input_shape"):
        model.summary((), print_fn=None)
    assert model.training
