"""fit / evaluate / predict: learning, determinism, NaN policies, callbacks, devices, torch parity."""
from __future__ import annotations

import csv
import json
import math

import numpy
import pytest

import gpuconv
from gpuconv.backend import to_device, to_numpy
from gpuconv.layers import (BatchNorm2d, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU,
                            Tanh)
from gpuconv.losses import SoftmaxCrossEntropy
from gpuconv.optim import SGD, Adam
from gpuconv.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR
from gpuconv.training import progress
from gpuconv.training.callbacks import (LOG_FIELDS, Callback, EarlyStopping, HistoryLogger,
                                        ModelCheckpoint)
from gpuconv.training.loop import ArrayBatches
from toy_data import blob_images
from conftest import device_fixture_with_second_gpu, on_device  # noqa: F401

device = device_fixture_with_second_gpu()


def parity_data() -> tuple[numpy.ndarray, numpy.ndarray]:
    """3-bit parity (XOR of 3 bits): 8 samples, float64 inputs in {-1, 1}."""
    bits = numpy.array([[(i >> k) & 1 for k in range(3)] for i in range(8)])
    return (2.0 * bits - 1.0), bits.sum(axis=1) % 2


def small_cnn(dtype="float32", dropout: float = 0.0) -> gpuconv.Sequential:
    layers = [Conv2D(1, 4, 3, padding=1, dtype=dtype), BatchNorm2d(4, dtype=dtype), ReLU(),
              MaxPool2D(2), Flatten()]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(4 * 4 * 4, 3, dtype=dtype))
    return gpuconv.Sequential(layers)


def weights(model) -> dict[str, numpy.ndarray]:
    return {k: to_numpy(v).copy() for k, v in model.state_dict().items()}


# ---- learning -------------------------------------------------------------------------

def test_mlp_learns_3bit_parity():
    x, y = parity_data()
    model = gpuconv.Sequential([Dense(3, 16, dtype="float64"), Tanh(),
                                Dense(16, 2, dtype="float64")])
    history = model.fit(ArrayBatches(x, y, batch_size=8), epochs=300,
                        optimizer=Adam(model, lr=0.03), loss=SoftmaxCrossEntropy(), verbose=0)
    assert len(history) == 300 and history.history["accuracy"][-1] == 1.0
    result = model.evaluate(ArrayBatches(x, y, batch_size=3, shuffle=False))
    assert result["accuracy"] == 1.0 and result["samples"] == 8
    assert result["loss"] < 0.05
    pred = numpy.argmax(to_numpy(model.predict(x)), axis=1)
    numpy.testing.assert_array_equal(pred, y)


def test_small_cnn_improves(device):
    x, y = blob_images()
    model = small_cnn().to(device)
    data = ArrayBatches(x, y, batch_size=16)  # device=None: follows the model
    before = model.evaluate(data, SoftmaxCrossEntropy())
    history = model.fit(data, epochs=4, optimizer=Adam(model, lr=0.02),
                        loss=SoftmaxCrossEntropy(), val_data=data, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_loss"][-1] < before["loss"]
    assert history.history["val_accuracy"][-1] >= 0.9
    for record in history.records:
        assert set(LOG_FIELDS) <= set(record)
        assert record["images_per_s"] > 0 and record["time"] > 0 and record["lr"] == 0.02
    assert all(isinstance(v, float) for v in history.history["loss"])
    out = model.predict(to_device(x, device), batch_size=40)
    assert gpuconv.backend.device_of(out) == gpuconv.get_device(device)
    assert out.shape == (96, 3)


def test_same_seed_same_weights():
    x, y = blob_images(48)

    def run(seed: int) -> dict:
        gpuconv.seed(seed)
        model = small_cnn(dropout=0.3)
        model.fit(ArrayBatches(x, y, batch_size=16), epochs=2,
                  optimizer=Adam(model, lr=0.01), loss=SoftmaxCrossEntropy(), verbose=0)
        return weights(model)

    a, b, c = run(7), run(7), run(8)
    for key in a:
        numpy.testing.assert_array_equal(a[key], b[key])
    assert any(not numpy.array_equal(a[k], c[k]) for k in a)


def test_same_seed_same_weights_fakecupy():
    x, y = blob_images(32)
    results = []
    for _ in range(2):
        gpuconv.seed(3)
        model = small_cnn(dropout=0.3).to("fakecupy")
        model.fit(ArrayBatches(x, y, batch_size=16), epochs=1,
                  optimizer=SGD(model, lr=0.05, momentum=0.9), loss=SoftmaxCrossEntropy(),
                  verbose=0)
        results.append(weights(model))
    for key in results[0]:
        numpy.testing.assert_array_equal(results[0][key], results[1][key])


def test_array_batches_order_depends_only_on_seed_and_epoch():
    x = numpy.arange(10, dtype=numpy.float32)[:, None]
    data = ArrayBatches(x, numpy.arange(10), batch_size=4, seed=5)
    assert len(data) == 3
    first = numpy.concatenate([b[1] for b in data])
    second = numpy.concatenate([b[1] for b in data])
    assert sorted(first) == list(range(10)) and not numpy.array_equal(first, second)
    data.set_epoch(1)
    numpy.testing.assert_array_equal(numpy.concatenate([b[1] for b in data]), first)
    numpy.testing.assert_array_equal(data.order(2), second)
    assert len(ArrayBatches(x, numpy.arange(10), batch_size=4, drop_last=True)) == 2


# ---- NaN policies ---------------------------------------------------------------------

class CountingBatches:
    """Re-iterable (x, y) batches that records how many were yielded in total."""

    def __init__(self, batches):
        self.batches = batches
        self.yielded = 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.yielded += 1
            yield batch


def poisoned_batches(bad_batch: int = 2, n_batches: int = 4):
    x, y = parity_data()
    x = numpy.tile(x, (n_batches, 1))
    y = numpy.tile(y, n_batches)
    x[bad_batch * 8 + 3, 1] = numpy.nan
    return CountingBatches([(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8])
                            for i in range(n_batches)])


def mlp():
    return gpuconv.Sequential([Dense(3, 8, dtype="float64"), ReLU(),
                               Dense(8, 2, dtype="float64")])


def test_nan_loss_raises_naming_epoch_and_step():
    data = poisoned_batches(bad_batch=2)  # the 3rd batch of every epoch is bad
    model = mlp()
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 3"):
        model.fit(data, epochs=2, optimizer=SGD(model, lr=0.1), loss=SoftmaxCrossEntropy(),
                  verbose=0)
    assert data.yielded == 4  # verbose=0: detected at the end of the epoch


def test_nan_detected_at_progress_refresh(monkeypatch, capsys):
    monkeypatch.setattr(progress, "REFRESH_INTERVAL", 0.0)  # refresh (and read) every step
    data = poisoned_batches(bad_batch=1)
    model = mlp()
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 2"):
        model.fit(data, epochs=1, optimizer=SGD(model, lr=0.1), loss=SoftmaxCrossEntropy(),
                  verbose=1)
    assert data.yielded == 2
    assert "Epoch 1/1" in capsys.readouterr().err


def test_progress_bar_shows_live_lr(monkeypatch, capsys):
    """The bar shows loss, acc, lr and img/s; a per-batch scheduler's lr updates live."""
    import re
    monkeypatch.setattr(progress, "REFRESH_INTERVAL", 0.0)  # refresh every step
    x, y = parity_data()
    model = mlp()
    opt = SGD(model, lr=0.1)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=4)
    model.fit(ArrayBatches(x, y, batch_size=2), 1, opt, SoftmaxCrossEntropy(),
              scheduler=sched, verbose=1)
    err = capsys.readouterr().err
    bars = [line for line in re.split(r"[\r\n]", err) if "img/s=" in line]
    assert bars and all(re.search(r"loss=.*acc=.*lr=.*img/s=", line) for line in bars)
    shown = {re.search(r"lr=([^,\s]+)", line).group(1) for line in bars}
    expected = {progress._fmt(sched.get_lr_at(step)) for step in (1, 2, 3)}
    assert expected <= shown  # the lr after each scheduler step, not just the epoch's first


def test_nan_skip_policy_skips_and_counts():
    data = poisoned_batches(bad_batch=2)
    model = mlp()
    history = model.fit(data, epochs=3, optimizer=SGD(model, lr=0.1),
                        loss=SoftmaxCrossEntropy(), verbose=0, nan_policy="skip")
    assert history.history["skipped"] == [1, 1, 1] and history.skipped_batches == 3
    assert all(math.isfinite(v) for v in history.history["loss"])
    for value in weights(model).values():
        assert numpy.isfinite(value).all()


def test_bad_arguments_are_rejected():
    model = mlp()
    x, y = parity_data()
    data = ArrayBatches(x, y, 4)
    opt, loss = SGD(model, lr=0.1), SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="nan_policy"):
        model.fit(data, 1, opt, loss, nan_policy="ignore")
    with pytest.raises(ValueError, match="epochs"):
        model.fit(data, 0, opt, loss)
    with pytest.raises(TypeError, match="ArrayBatches"):
        model.fit((x, y), 1, opt, loss)
    with pytest.raises(TypeError, match=r"\(x, y\) pairs"):
        model.fit([x], 1, opt, loss, verbose=0)


# ---- devices --------------------------------------------------------------------------

def test_batches_on_another_device_raise_type_error():
    x, y = parity_data()
    model = mlp()
    data = ArrayBatches(x, y, batch_size=4, device="fakecupy")
    with pytest.raises(TypeError, match=r"step 1\): batch x is on fakecupy:0 but the model is on cpu"):
        model.fit(data, 1, SGD(model, lr=0.1), SoftmaxCrossEntropy(), verbose=0)
    with pytest.raises(TypeError, match="model is on cpu"):
        model.evaluate(data, SoftmaxCrossEntropy())
    with pytest.raises(TypeError, match=r"predict: x is on fakecupy"):
        model.predict(to_device(x, "fakecupy"))
    model.to("fakecupy")
    with pytest.raises(TypeError, match=r"batch x is on cpu but the model is on fakecupy:0"):
        model.fit([(x, y)], 1, SGD(model, lr=0.1), SoftmaxCrossEntropy(), verbose=0)


def test_predict_eval_mode_batches_and_restores_state(device):
    x, _ = blob_images(10)
    model = small_cnn(dropout=0.5).to(device)
    xd = to_device(x, device)
    out_all = to_numpy(model.predict(xd))
    out_chunks = to_numpy(model.predict(xd, batch_size=3))
    numpy.testing.assert_allclose(out_chunks, out_all, rtol=1e-5, atol=1e-6)
    model.eval()
    numpy.testing.assert_allclose(to_numpy(model.forward(xd)), out_all, rtol=1e-5, atol=1e-6)
    model.train()
    model.predict(xd)
    assert model.training and all(layer.training for layer in model)
    assert all(getattr(layer, "_cache", None) is None for layer in model)


def test_verbose_outputs(capsys):
    x, y = parity_data()
    model = mlp()
    model.fit(ArrayBatches(x, y, 4), 2, SGD(model, lr=0.1), SoftmaxCrossEntropy(), verbose=2)
    out = capsys.readouterr()
    assert "Epoch 1/2 loss=" in out.out and "Epoch 2/2" in out.out and out.err == ""
    model.fit(ArrayBatches(x, y, 4), 1, SGD(model, lr=0.1), SoftmaxCrossEntropy(), verbose=0)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    model.fit(ArrayBatches(x, y, 4), 1, SGD(model, lr=0.1), SoftmaxCrossEntropy(), verbose=1)
    err = capsys.readouterr().err
    assert "Epoch 1/1" in err and "loss=" in err


# ---- schedulers -----------------------------------------------------------------------

def test_schedulers_step_per_batch_or_per_epoch():
    x, y = parity_data()
    data = ArrayBatches(x, y, batch_size=2)  # 4 batches per epoch
    model = mlp()
    opt = SGD(model, lr=0.1)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=12)
    history = model.fit(data, 3, opt, SoftmaxCrossEntropy(), scheduler=sched, verbose=0)
    assert sched.state_dict()["last_epoch"] == 12
    assert len(set(history.history["lr"])) == 3

    opt = SGD(model, lr=0.1)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    history = model.fit(data, 3, opt, SoftmaxCrossEntropy(), scheduler=sched, verbose=0)
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])

    class RecordingPlateau(ReduceLROnPlateau):
        def step(self, metric):
            self.metrics = getattr(self, "metrics", []) + [metric]
            super().step(metric)

    opt = SGD(model, lr=0.1)
    sched = RecordingPlateau(opt, factor=0.5, patience=0)
    history = model.fit(data, 2, opt, SoftmaxCrossEntropy(), scheduler=sched,
                        val_data=ArrayBatches(x, y, 8), verbose=0)
    assert sched.metrics == history.history["val_loss"]
    sched = RecordingPlateau(opt, factor=0.5, patience=0)
    history = model.fit(data, 2, opt, SoftmaxCrossEntropy(), scheduler=sched, verbose=0)
    assert sched.metrics == history.history["loss"]


# ---- callbacks ------------------------------------------------------------------------

def test_early_stopping_unit_restores_best_weights():
    model = mlp()
    stopper = EarlyStopping(patience=2)
    stopper.set_model(model)
    stopper.on_train_begin()
    for epoch, value in enumerate([1.0, 0.5, 0.6, 0.7, 0.2], 1):
        model[0].weight.data[...] = epoch
        stopper.on_epoch_end(epoch, {"val_loss": value})
        if model.stop_training:
            break
    stopper.on_train_end()
    assert stopper.stopped_epoch == 4 and stopper.best_epoch == 2 and stopper.best == 0.5
    assert (model[0].weight.data == 2).all()
    with pytest.raises(ValueError, match="pass val_data"):
        EarlyStopping().on_epoch_end(1, {"loss": 1.0})
    assert EarlyStopping(monitor="val_accuracy").mode == "max"


def test_early_stopping_in_fit():
    x, y = parity_data()
    model = mlp()
    stopper = EarlyStopping(monitor="loss", patience=2)
    history = model.fit(ArrayBatches(x, y, 8, shuffle=False), 10, SGD(model, lr=0.0),
                        SoftmaxCrossEntropy(), callbacks=[stopper], verbose=0)
    assert len(history) == 3 and stopper.stopped_epoch == 3 and model.stop_training


def test_model_checkpoint_saves_best_only(tmp_path):
    model = mlp()
    path = tmp_path / "best.npz"
    saver = ModelCheckpoint(path, monitor="val_loss")
    saver.set_model(model)
    for epoch, value in enumerate([1.0, 0.5, 0.7], 1):
        model[0].weight.data[...] = epoch
        saver.on_epoch_end(epoch, {"val_loss": value})
    assert [e for e, _ in saver.saved] == [1, 2]
    loaded = gpuconv.load_model(path)
    assert (to_numpy(loaded[0].weight.data) == 2).all()
    assert [p.name for p in tmp_path.iterdir()] == ["best.npz"]  # no temporary files left


def test_model_checkpoint_every_epoch_in_fit(tmp_path):
    x, y = parity_data()
    model = mlp()
    saver = ModelCheckpoint(tmp_path / "m-{epoch:02d}-{loss:.2f}.npz", save_best_only=False)
    model.fit(ArrayBatches(x, y, 4), 3, SGD(model, lr=0.1), SoftmaxCrossEntropy(),
              callbacks=[saver], verbose=0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3 and names[0].startswith("m-01-") and names[2].startswith("m-03-")
    final = gpuconv.load_model(tmp_path / names[2])
    numpy.testing.assert_array_equal(to_numpy(final.predict(x)), to_numpy(model.predict(x)))


def test_history_logger_files(tmp_path):
    x, y = parity_data()
    model = mlp()
    logger = HistoryLogger(tmp_path / "h.json", tmp_path / "h.csv")
    history = model.fit(ArrayBatches(x, y, 4), 2, SGD(model, lr=0.1), SoftmaxCrossEntropy(),
                        val_data=ArrayBatches(x, y, 8), callbacks=[logger], verbose=0)
    records = json.loads((tmp_path / "h.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    assert list(records[0]) == list(LOG_FIELDS)
    for record, logs in zip(records, history.records):
        for key in LOG_FIELDS:
            assert record[key] == pytest.approx(logs[key])
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and tuple(rows[0]) == LOG_FIELDS
    assert float(rows[1]["val_loss"]) == pytest.approx(history.history["val_loss"][1])
    assert float(rows[0]["lr"]) == 0.1 and float(rows[0]["images_per_s"]) > 0


def test_history_logger_without_validation_writes_empty_cells(tmp_path):
    x, y = parity_data()
    model = mlp()
    model.fit(ArrayBatches(x, y, 4), 1, SGD(model, lr=0.1), SoftmaxCrossEntropy(),
              callbacks=[HistoryLogger(csv_path=tmp_path / "h.csv",
                                       json_path=tmp_path / "h.json")], verbose=0)
    row = next(csv.DictReader(open(tmp_path / "h.csv", newline="")))
    assert row["val_loss"] == "" and row["loss"] != ""
    assert json.loads((tmp_path / "h.json").read_text())[0]["val_accuracy"] is None


def test_callback_hooks_order():
    calls = []

    class Recorder(Callback):
        def on_train_begin(self, logs=None):
            calls.append("begin")

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(f"e{epoch}")

        def on_batch_end(self, step, logs=None):
            calls.append(f"b{step}:{logs['size']}")

        def on_epoch_end(self, epoch, logs):
            calls.append(f"end{epoch}")

        def on_train_end(self, logs=None):
            calls.append("done")

    x, y = parity_data()
    model = mlp()
    model.fit(ArrayBatches(x, y, 5), 2, SGD(model, lr=0.1), SoftmaxCrossEntropy(),
              callbacks=[Recorder()], verbose=0)
    assert calls == ["begin", "e1", "b1:5", "b2:3", "end1", "e2", "b1:5", "b2:3", "end2", "done"]


# ---- torch parity ---------------------------------------------------------------------

def test_five_adam_steps_match_torch():
    torch = pytest.importorskip("torch")
    x, y = blob_images(40, seed=1, dtype=numpy.float64)
    # no conv bias: in front of BatchNorm its gradient is rounding noise that Adam amplifies
    model = gpuconv.Sequential([Conv2D(1, 3, 3, padding=1, bias=False, dtype="float64"),
                                BatchNorm2d(3, dtype="float64"), ReLU(), MaxPool2D(2),
                                Flatten(), Dense(3 * 4 * 4, 3, dtype="float64")])
    conv, bn, dense = model[0], model[1], model[5]
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1, bias=False), torch.nn.BatchNorm2d(3),
                              torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(3 * 4 * 4, 3)).double()
    with torch.no_grad():
        ref[0].weight.copy_(torch.from_numpy(conv.weight.data))
        ref[5].weight.copy_(torch.from_numpy(dense.weight.data.T))
        ref[5].bias.copy_(torch.from_numpy(dense.bias.data))
    opt_ref = torch.optim.Adam(ref.parameters(), lr=0.01)
    loss_ref = torch.nn.CrossEntropyLoss()
    for i in range(5):
        xb, yb = torch.from_numpy(x[i * 8:(i + 1) * 8]), torch.from_numpy(y[i * 8:(i + 1) * 8])
        opt_ref.zero_grad()
        loss_ref(ref(xb), yb).backward()
        opt_ref.step()

    history = model.fit(ArrayBatches(x, y, batch_size=8, shuffle=False), 1,
                        Adam(model, lr=0.01), SoftmaxCrossEntropy(), verbose=0)
    assert len(history) == 1
    pairs = [(conv.weight.data, ref[0].weight),
             (bn.weight.data, ref[1].weight), (bn.bias.data, ref[1].bias),
             (bn.running_mean, ref[1].running_mean), (bn.running_var, ref[1].running_var),
             (dense.weight.data, ref[5].weight.T), (dense.bias.data, ref[5].bias)]
    for ours, theirs in pairs:
        numpy.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-5, atol=1e-12)


# ---- host<->device syncs --------------------------------------------------------------

def count_device_reads(monkeypatch) -> list:
    """Count every device->host read of fakecupy arrays (get, bool/float/int/index/format)."""
    import fakecupy

    reads = []
    for name in ("get", "__bool__", "__float__", "__int__", "__index__", "__format__"):
        original = getattr(fakecupy.FakeArray, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(fakecupy.FakeArray, name, counted)
    return reads


@pytest.mark.parametrize("n", [32, 96])
def test_training_step_never_reads_the_device(monkeypatch, n):
    """verbose=0: two reads per epoch (losses, correct counts), whatever the batch count."""
    x, y = blob_images(n)
    model = small_cnn().to("fakecupy")
    data = ArrayBatches(x, y, batch_size=8)
    opt, loss = Adam(model, lr=0.01), SoftmaxCrossEntropy()
    reads = count_device_reads(monkeypatch)
    model.fit(data, 2, opt, loss, verbose=0)
    assert reads == ["get"] * 4
    del reads[:]
    model.fit(data, 1, opt, loss, verbose=0, nan_policy="skip")  # one read per step
    assert len(reads) == 2 + len(data)
