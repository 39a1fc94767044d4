"""Training checkpoints: bit-identical resume in a new process, interrupts, safety."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy
import pytest

import gpuconv
from gpuconv.backend import to_device, to_numpy
from gpuconv.io.checkpoint import load_checkpoint, save_checkpoint
from gpuconv.training.interrupts import TrainingInterrupted
from gpuconv.io.npzfile import read_npz

import fakecupy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Executed both here and in a fresh interpreter, so both build the same kinds of objects.
SETUP = textwrap.dedent('''
    import numpy
    import gpuconv
    from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
    from gpuconv.losses import SoftmaxCrossEntropy
    from gpuconv.optim import Adam
    from gpuconv.optim.lr_scheduler import StepLR
    from gpuconv.training.callbacks import EarlyStopping
    from gpuconv.training.loop import ArrayBatches

    def build(seed, device="cpu", dropout=0.3):
        gpuconv.seed(seed)
        model = gpuconv.Sequential([
            Conv2D(1, 4, 3, padding=1), BatchNorm2d(4), ReLU(), MaxPool2D(2), Flatten(),
            Dropout(dropout), Dense(4 * 4 * 4, 3)]).to(device)
        opt = Adam(model, lr=0.01)
        sched = StepLR(opt, step_size=1, gamma=0.5)
        rng = numpy.random.default_rng(0)
        x = rng.normal(size=(64, 1, 8, 8)).astype(numpy.float32)
        y = (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(numpy.int64) + (x[:, 0, 4:].mean(axis=(1, 2)) > 0)
        data = ArrayBatches(x, y, batch_size=16)      # shuffle seed drawn from gpuconv.seed
        val = ArrayBatches(x[:32], y[:32], batch_size=32, shuffle=False)
        stopper = EarlyStopping(monitor="val_loss", patience=10)
        return model, opt, sched, data, val, stopper

    def train(parts, epochs, **kwargs):
        model, opt, sched, data, val, stopper = parts
        return model.fit(data, epochs, opt, SoftmaxCrossEntropy(), val_data=val,
                         scheduler=sched, callbacks=[stopper], verbose=0, **kwargs)
''')

RESUME_SCRIPT = SETUP + textwrap.dedent('''
    import json, sys
    ckpt, out = sys.argv[1], sys.argv[2]
    parts = build(seed=12345)        # different init and data seed: all must come from ckpt
    history = train(parts, 2, resume_from=ckpt)
    parts[0].save(out)
    json.dump({"history": history.records, "lr": parts[1].lr,
               "best_epoch": parts[5].best_epoch}, open(out + ".json", "w"))
''')


def namespace() -> dict:
    ns: dict = {}
    exec(SETUP, ns)  # noqa: S102 - test-local source
    return ns


def weights(model) -> dict[str, numpy.ndarray]:
    return {k: to_numpy(v).copy() for k, v in model.state_dict().items()}


def test_resume_in_new_process_is_bit_identical(tmp_path):
    ns = namespace()
    straight = ns["build"](0)
    history = ns["train"](straight, 2)
    expected = weights(straight[0])

    first = ns["build"](0)
    ckpt = tmp_path / "ckpt.npz"
    ns["train"](first, 1, checkpoint_path=ckpt)
    assert load_checkpoint(ckpt).epoch == 1

    out = str(tmp_path / "resumed.npz")
    env = dict(os.environ, PYTHONPATH=ROOT, GPUCONV_DEVICE="cpu")
    result = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(ckpt), out], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    resumed = weights(gpuconv.load_model(out))
    assert resumed.keys() == expected.keys()
    for key in expected:
        numpy.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)
    info = json.load(open(out + ".json"))
    assert [r["epoch"] for r in info["history"]] == [1, 2]
    for ours, theirs in zip(info["history"], history.records):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert ours[key] == theirs[key], key
    assert info["lr"] == straight[1].lr == 0.0025
    assert info["best_epoch"] == straight[5].best_epoch


def test_checkpoint_every_epoch_and_readable_as_model(tmp_path):
    ns = namespace()
    parts = ns["build"](0)
    ckpt = tmp_path / "run" / "ckpt.npz"
    ns["train"](parts, 3, checkpoint_path=ckpt)
    loaded = load_checkpoint(ckpt)
    assert loaded.epoch == 3 and [r["epoch"] for r in loaded.history] == [1, 2, 3]
    assert loaded.extra["loader"]["seed"] == parts[3].seed
    assert loaded.optimizer_state["step"] == 12 and loaded.scheduler_state["last_epoch"] == 3
    assert "host" in loaded.rng_state and "cpu" in loaded.rng_state
    assert all(a.dtype != object for a in read_npz(ckpt).values())
    model = gpuconv.load_model(ckpt)  # the model inside a checkpoint
    x = numpy.random.default_rng(3).normal(size=(4, 1, 8, 8)).astype(numpy.float32)
    numpy.testing.assert_array_equal(to_numpy(model.predict(x)), to_numpy(parts[0].predict(x)))
    assert sorted(os.listdir(tmp_path / "run")) == ["ckpt.npz"]
    # resuming a finished run trains nothing more
    again = ns["build"](0)
    history = ns["train"](again, 3, resume_from=ckpt)
    assert len(history) == 3
    for key, value in weights(parts[0]).items():
        numpy.testing.assert_array_equal(weights(again[0])[key], value)


def test_keyboard_interrupt_saves_checkpoint_and_reraises(tmp_path):
    ns = namespace()

    class Interrupt(gpuconv.training.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_batch_end(self, step, logs=None):
            if self.epoch == 2 and step == 2:
                raise KeyboardInterrupt

    model, opt, sched, data, val, stopper = ns["build"](0)
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(TrainingInterrupted) as caught:
        model.fit(data, 3, opt, ns["SoftmaxCrossEntropy"](), val_data=val, scheduler=sched,
                  callbacks=[Interrupt()], verbose=0, checkpoint_path=ckpt)
    assert isinstance(caught.value, KeyboardInterrupt)  # `except KeyboardInterrupt` still works
    assert (caught.value.epoch, caught.value.step, caught.value.reason) == (2, 2, "callback")
    assert caught.value.checkpoint == str(ckpt)
    saved = load_checkpoint(ckpt)
    assert (saved.epoch, saved.step, saved.status) == (1, 2, "interrupted")
    assert saved.partial["phase"] == "train" and saved.partial["stats"]["steps"] == 2
    assert saved.describe() == "epoch 2, step 2 (1 epoch completed)"
    assert len(saved.history) == 1
    # the weights are those at the interruption (epoch 2, after step 2)
    on_disk = gpuconv.load_model(ckpt)
    for key, value in weights(model).items():
        numpy.testing.assert_array_equal(weights(on_disk)[key], value)
    resumed = ns["build"](0)
    history = ns["train"](resumed, 3, resume_from=ckpt)
    assert [r["epoch"] for r in history.records] == [1, 2, 3]
    straight = ns["build"](0)
    ns["train"](straight, 3)
    for key, value in weights(straight[0]).items():
        numpy.testing.assert_array_equal(weights(resumed[0])[key], value, err_msg=key)


def test_resume_on_another_device(tmp_path):
    # no dropout: the CPU and device generators draw different numbers (device ones restart
    # from (seed, epoch) every epoch; the CPU's run on from the checkpointed state)
    ns = namespace()
    straight = ns["build"](0, dropout=0.0)
    ns["train"](straight, 2)
    first = ns["build"](0, dropout=0.0)
    ns["train"](first, 1, checkpoint_path=tmp_path / "c.npz")
    on_fake = ns["build"](0, device="fakecupy", dropout=0.0)
    ns["train"](on_fake, 2, resume_from=tmp_path / "c.npz")
    got, expected = weights(on_fake[0]), weights(straight[0])
    # "0.bias" feeds a training-mode BatchNorm, which takes the mean out: its gradient is
    # exactly 0 and float32 leaves roundoff that depends on the summation order (another on
    # the device), which Adam scales up to steps of the lr. It moves the BatchNorm's running
    # mean along with it and changes the function only through their difference, so those
    # two are compared through the eval-mode outputs instead
    for key in expected:
        if key in ("0.bias", "1.running_mean"):
            continue
        numpy.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-6,
                                      err_msg=key)
    x = numpy.random.default_rng(5).normal(size=(32, 1, 8, 8)).astype(numpy.float32)
    for model in (on_fake[0], straight[0]):
        model.eval()
    numpy.testing.assert_allclose(to_numpy(on_fake[0].forward(to_device(x, "fakecupy"))),
                                  to_numpy(straight[0].forward(x)), rtol=1e-2, atol=1e-2)


def test_resume_with_dropout_on_a_device_is_bit_identical(tmp_path):
    """Device generators (fakecupy, like CuPy) are not checkpointed, but fit restarts them
    from (seed, epoch) every epoch: 2 epochs straight == 1 epoch + checkpoint + 1 resumed."""
    ns = namespace()
    straight = ns["build"](0, device="fakecupy", dropout=0.5)
    history = ns["train"](straight, 2)
    expected = weights(straight[0])

    first = ns["build"](0, device="fakecupy", dropout=0.5)
    ckpt = tmp_path / "ckpt.npz"
    ns["train"](first, 1, checkpoint_path=ckpt)
    assert set(load_checkpoint(ckpt).rng_state) == {"seed", "host", "cpu"}  # no device state

    gpuconv.backend.generator(fakecupy.xp).random(1000)  # disturb the device generator
    resumed = ns["build"](12345, device="fakecupy", dropout=0.5)  # everything from ckpt
    again = ns["train"](resumed, 2, resume_from=ckpt)
    got = weights(resumed[0])
    assert got.keys() == expected.keys()
    for key in expected:
        numpy.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    for ours, theirs in zip(again.records, history.records):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert ours[key] == theirs[key], key


def test_resume_refuses_other_architecture_and_bad_files(tmp_path):
    ns = namespace()
    parts = ns["build"](0)
    ckpt = tmp_path / "c.npz"
    save_checkpoint(ckpt, parts[0], parts[1], parts[2], epoch=1, history=[], extra={})
    other = gpuconv.Sequential([ns["Flatten"](), ns["Dense"](64, 3)])
    with pytest.raises(ValueError, match=r"c\.npz: the checkpoint's architecture differs"):
        other.fit(parts[3], 2, ns["Adam"](other), ns["SoftmaxCrossEntropy"](), verbose=0,
                  resume_from=ckpt)
    parts[0].save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="not a gpuconv training checkpoint"):
        load_checkpoint(tmp_path / "model.npz")
    arrays = read_npz(ckpt)
    meta = json.loads(arrays["checkpoint"].tobytes())
    meta["optimizer"]["state"]["0.exp_avg"] = {"__array__": "state/999"}
    arrays["checkpoint"] = numpy.frombuffer(json.dumps(meta).encode(), numpy.uint8)
    numpy.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"bad\.npz: optimizer: refers to array entry 'state/999'"):
        load_checkpoint(tmp_path / "bad.npz")


def test_save_checkpoint_packs_nested_state(tmp_path):
    model = gpuconv.Sequential([gpuconv.layers.Dense(2, 2)])
    extra = {"tuple": (1, 2.5, "x"), "ints": {3: numpy.arange(3)}, "nested": [{"a": None}],
             "scalar": numpy.float32(0.5)}
    save_checkpoint(tmp_path / "c.npz", model, epoch=4, extra=extra)
    loaded = load_checkpoint(tmp_path / "c.npz")
    assert loaded.epoch == 4 and loaded.optimizer_state is None and loaded.history == []
    assert loaded.extra["tuple"] == (1, 2.5, "x") and loaded.extra["nested"] == [{"a": None}]
    numpy.testing.assert_array_equal(loaded.extra["ints"][3], numpy.arange(3))
    assert loaded.extra["scalar"] == 0.5
    with pytest.raises(TypeError, match=r"cannot store object at extra\.bad"):
        save_checkpoint(tmp_path / "d.npz", model, extra={"bad": object()})
    assert not os.path.exists(tmp_path / "d.npz")


def test_resume_with_parameter_groups_a_frozen_parameter_and_a_batch_schedule(tmp_path):
    """airbench-style state: two SGD groups (BatchNorm biases at 64x lr, their own weight
    decay), a frozen parameter, a per-batch PiecewiseLinear schedule and a summed,
    label-smoothed loss. 1 epoch + checkpoint + resume == 2 epochs straight, bit for bit."""
    from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Flatten, MaxPool2D, ReLU
    from gpuconv.losses import CrossEntropy
    from gpuconv.optim import SGD, airbench_sgd_hyperparameters
    from gpuconv.optim.lr_scheduler import PiecewiseLinear
    from gpuconv.training.loop import ArrayBatches

    class Freezable(gpuconv.layers.Parameter):
        pass

    def build(seed):
        gpuconv.seed(seed)
        model = gpuconv.Sequential([Conv2D(1, 4, 3, padding=1), BatchNorm2d(4), ReLU(),
                                    MaxPool2D(2), Flatten(), Dense(4 * 4 * 4, 3)])
        conv = model.children()[0]
        conv.bias = frozen = Freezable(conv.bias.data, "bias")  # can carry requires_grad
        frozen.requires_grad = False
        named = dict(model.named_parameters())
        h = airbench_sgd_hyperparameters(16)
        opt = SGD([{"params": [named["1.bias"]], "lr": h["bias_lr"],
                    "weight_decay": h["bias_weight_decay"], "name": "norm_biases"},
                   {"params": [p for n, p in named.items() if n != "1.bias"],
                    "lr": h["lr"], "weight_decay": h["weight_decay"]}],
                  momentum=h["momentum"], nesterov=True)
        sched = PiecewiseLinear(opt, [0, 2, 8], [0.2, 1.0, 0.07])
        rng = numpy.random.default_rng(0)
        x = rng.normal(size=(64, 1, 8, 8)).astype(numpy.float32)
        y = (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(numpy.int64)
        return model, opt, sched, ArrayBatches(x, y, batch_size=16), frozen

    loss = CrossEntropy(label_smoothing=0.2, reduction="sum")
    model, opt, sched, data, frozen = build(0)
    before = to_numpy(frozen.data).copy()
    model.fit(data, 2, opt, loss, scheduler=sched, verbose=0)
    expected = weights(model)
    numpy.testing.assert_array_equal(to_numpy(frozen.data), before)

    first = build(0)
    ckpt = tmp_path / "groups.npz"
    first[0].fit(first[3], 1, first[1], loss, scheduler=first[2], verbose=0,
                 checkpoint_path=ckpt)
    saved = load_checkpoint(ckpt).optimizer_state
    assert [g["name"] for g in saved["param_groups"] if "name" in g] == ["norm_biases"]
    assert saved["param_steps"] == [4, 4, 0, 4, 4, 4]  # norm bias | conv w, conv b (frozen), ...
    resumed = build(7)   # other weights and lrs: everything must come from the checkpoint
    resumed[0].fit(resumed[3], 2, resumed[1], loss, scheduler=resumed[2], verbose=0,
                   resume_from=ckpt)
    for key, value in expected.items():
        numpy.testing.assert_array_equal(weights(resumed[0])[key], value, err_msg=key)
    assert [g["lr"] for g in resumed[1].param_groups] == [g["lr"] for g in opt.param_groups]
    assert resumed[1].param_groups[0]["lr"] == 64 * resumed[1].param_groups[1]["lr"]
