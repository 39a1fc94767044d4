"""Resume is exact, also inside an epoch: interrupt a run in a subprocess (at the first
batch, in the middle, at the last batch of an epoch, during validation; by a callback's
KeyboardInterrupt, a real SIGINT or a SIGKILL after a periodic checkpoint), resume it in
a fresh process and compare with an uninterrupted run bit for bit.

Compared exactly: every parameter and buffer; the optimizer's, scheduler's and callbacks'
states and the RNG states of the final checkpoint; every history field except the two
wall-clock ones (``time``, ``images_per_s``).

The run exercises every piece of state: a DataLoader with random crop + flip on the CPU
generator (prefetch thread on), Dropout and BatchNorm, Adam, a per-batch OneCycleLR,
EarlyStopping, and a callback with per-batch state (an EMA of the weights, as device
arrays).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy
import pytest

from gpuconv.io.checkpoint import load_checkpoint
from gpuconv.io.npzfile import read_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, STEPS = 3, 4  # 64 samples, batch 16
HISTORY_EXACT = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "skipped")

SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    import numpy
    import gpuconv
    from gpuconv.backend import to_numpy
    from gpuconv.data.augment import Compose, RandomCrop, RandomHorizontalFlip
    from gpuconv.data.loader import DataLoader
    from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
    from gpuconv.losses import SoftmaxCrossEntropy
    from gpuconv.optim import Adam
    from gpuconv.optim.lr_scheduler import OneCycleLR
    from gpuconv.training.callbacks import Callback, EarlyStopping
    from gpuconv.training.interrupts import TrainingInterrupted

    class WeightEMA(Callback):
        """Per-batch state, as an EMA/weight-averaging callback keeps it."""
        def __init__(self):
            self.count, self.avg = 0, None
        def on_batch_end(self, step, logs=None):
            w = self.model.parameters()[0].data
            self.avg = w.copy() if self.avg is None else 0.9 * self.avg + 0.1 * w
            self.count += 1
        def state_dict(self):
            return {"count": self.count, "avg": self.avg}
        def load_state_dict(self, state):
            self.count, self.avg = state["count"], state["avg"]

    class StopAt(Callback):
        """Stop at (epoch, step): raise KeyboardInterrupt, send SIGINT or SIGKILL."""
        def __init__(self, epoch, step, how):
            self.at, self.how, self.epoch = (epoch, step), how, None
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_batch_end(self, step, logs=None):
            if (self.epoch, step) == self.at:
                if self.how == "raise":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGKILL if self.how == "kill" else signal.SIGINT)

    class SignalDuringValidation:
        """Validation data that sends a real SIGINT while epoch `epoch` validates."""
        def __init__(self, loader, epoch, stopper):
            self.loader, self.epoch, self.stopper = loader, epoch, stopper
        def __iter__(self):
            for i, batch in enumerate(self.loader):
                if self.stopper.epoch == self.epoch and i == 1:
                    os.kill(os.getpid(), signal.SIGINT)
                yield batch

    def build(seed, stop=None):
        gpuconv.seed(seed)
        model = gpuconv.Sequential([
            Conv2D(1, 4, 3, padding=1), BatchNorm2d(4), ReLU(), MaxPool2D(2), Flatten(),
            Dropout(0.3), Dense(4 * 4 * 4, 3)])
        opt = Adam(model, lr=0.01)
        sched = OneCycleLR(opt, max_lr=0.02, epochs=%(epochs)d, steps_per_epoch=%(steps)d)
        rng = numpy.random.default_rng(0)
        x = rng.normal(size=(64, 1, 8, 8)).astype(numpy.float32)
        y = ((x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(numpy.int64)
             + (x[:, 0, 4:].mean(axis=(1, 2)) > 0))
        augment = Compose([RandomCrop(8, 1), RandomHorizontalFlip()])
        data = DataLoader((x, y), 16, shuffle=True, seed=seed, device="cpu", augment=augment)
        val = DataLoader((x[:48], y[:48]), 16, device="cpu")
        callbacks = [EarlyStopping(monitor="val_loss", patience=10), WeightEMA()]
        if stop is not None:
            stopper = StopAt(*stop)
            callbacks.append(stopper)
            if stop[1] == "val":
                val = SignalDuringValidation(val, stop[0], stopper)
        return model, opt, sched, data, val, callbacks

    def train(parts, **kwargs):
        model, opt, sched, data, val, callbacks = parts
        return model.fit(data, %(epochs)d, opt, SoftmaxCrossEntropy(), val_data=val,
                         scheduler=sched, callbacks=callbacks, verbose=0, **kwargs)

    def result(parts, history):
        model = parts[0]
        ema = parts[5][1]
        return {"history": history.records, "ema_count": ema.count,
                "ema": to_numpy(ema.avg).tolist(),
                "weights": {k: to_numpy(v).tolist() for k, v in model.state_dict().items()}}

    if __name__ == "__main__":
        job = json.loads(sys.argv[1])
        if job["mode"] == "interrupt":
            parts = build(0, tuple(job["stop"]))
            try:
                train(parts, checkpoint_path=job["ckpt"], checkpoint_every=job.get("every"))
            except TrainingInterrupted as exc:
                print(json.dumps({"epoch": exc.epoch, "step": exc.step, "phase": exc.phase,
                                  "reason": exc.reason, "checkpoint": exc.checkpoint}))
                sys.exit(3)
            sys.exit(0)
        parts = build(12345, tuple(job["stop"]) if job.get("stop") else None)  # all from ckpt
        try:
            history = train(parts, resume_from=job["ckpt"], checkpoint_path=job["ckpt"])
        except TrainingInterrupted as exc:
            sys.exit(3)
        json.dump(result(parts, history), open(job["out"], "w"))
''') % {"epochs": EPOCHS, "steps": STEPS}


def run_script(job: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, GPUCONV_DEVICE="cpu")
    return subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(job)], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run (in this process) and its final checkpoint."""
    ns: dict = {}
    exec(SCRIPT, ns)  # noqa: S102 - test-local source; not __main__, defines build/train
    ckpt = tmp_path_factory.mktemp("straight") / "ckpt.npz"
    parts = ns["build"](0)
    history = ns["train"](parts, checkpoint_path=ckpt)
    return json.loads(json.dumps(ns["result"](parts, history))), load_checkpoint(ckpt)


def assert_same_run(resumed: dict, resumed_ckpt, straight) -> None:
    expected, expected_ckpt = straight
    assert len(resumed["history"]) == len(expected["history"]) == EPOCHS
    for ours, theirs in zip(resumed["history"], expected["history"]):
        for key in HISTORY_EXACT:
            assert ours[key] == theirs[key], (ours["epoch"], key)
    assert resumed["weights"].keys() == expected["weights"].keys()
    for key in expected["weights"]:
        numpy.testing.assert_array_equal(resumed["weights"][key], expected["weights"][key],
                                         err_msg=key)
    assert resumed["ema_count"] == expected["ema_count"] == EPOCHS * STEPS
    numpy.testing.assert_array_equal(resumed["ema"], expected["ema"])
    # the final checkpoints agree in every state, not only in the weights
    assert resumed_ckpt.status == expected_ckpt.status == "finished"
    assert resumed_ckpt.optimizer_state["step"] == expected_ckpt.optimizer_state["step"]
    for key, value in expected_ckpt.optimizer_state["state"].items():
        numpy.testing.assert_array_equal(resumed_ckpt.optimizer_state["state"][key], value,
                                         err_msg=key)
    assert resumed_ckpt.scheduler_state == expected_ckpt.scheduler_state
    assert resumed_ckpt.lr == expected_ckpt.lr
    assert resumed_ckpt.rng_state == expected_ckpt.rng_state
    ours, theirs = (c.extra["callbacks"]["callbacks"] for c in (resumed_ckpt, expected_ckpt))
    assert ours[0]["state"]["best"] == theirs[0]["state"]["best"]  # EarlyStopping
    assert ours[0]["state"]["wait"] == theirs[0]["state"]["wait"]


def interrupt_and_resume(tmp_path, stop, every=None, expect_rc=3) -> tuple[dict, dict]:
    ckpt = str(tmp_path / "ckpt.npz")
    first = run_script({"mode": "interrupt", "stop": stop, "ckpt": ckpt, "every": every})
    assert first.returncode == expect_rc, first.stderr
    info = json.loads(first.stdout) if expect_rc == 3 else {}
    saved = load_checkpoint(ckpt)
    out = str(tmp_path / "resumed.json")
    second = run_script({"mode": "resume", "ckpt": ckpt, "out": out})
    assert second.returncode == 0, second.stderr
    return info, {"saved": saved, "resumed": json.load(open(out)),
                  "final": load_checkpoint(ckpt)}


@pytest.mark.parametrize("stop, position", [
    ((1, 1, "raise"), (0, 1, "train")),       # the very first step of the run
    ((2, 1, "raise"), (1, 1, "train")),       # the first batch of an epoch
    ((2, 2, "signal"), (1, 2, "train")),      # the middle, by a real SIGINT
    ((2, STEPS, "raise"), (1, STEPS, "train")),  # the last batch of an epoch
    ((2, "val", "signal"), (1, STEPS, "validate")),  # during validation (real SIGINT)
], ids=["first-step", "epoch-first-batch", "middle-sigint", "epoch-last-batch",
        "validation-sigint"])
def test_interrupt_anywhere_then_resume_is_bit_identical(tmp_path, straight, stop, position):
    info, got = interrupt_and_resume(tmp_path, list(stop))
    completed, step, phase = position
    saved = got["saved"]
    assert (saved.epoch, saved.step, saved.status) == (completed, step, "interrupted")
    assert saved.partial["phase"] == phase
    assert (info["epoch"], info["step"], info["phase"]) == (completed + 1, step, phase)
    assert info["reason"] == ("callback" if stop[2] == "raise" else "SIGINT")
    assert_same_run(got["resumed"], got["final"], straight)


def test_sigkill_after_a_periodic_checkpoint_loses_at_most_the_period(tmp_path, straight):
    """Periodic checkpoints every step: a SIGKILL at epoch 2, step 3 (nothing can be
    saved then) leaves the checkpoint of step 2, complete, and resuming it is exact."""
    _, got = interrupt_and_resume(tmp_path, [2, 3, "kill"], every="1step", expect_rc=-9)
    saved = got["saved"]
    assert (saved.epoch, saved.step, saved.status) == (1, 2, "running")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # atomic writes only
    assert_same_run(got["resumed"], got["final"], straight)


def test_interrupted_twice_then_resumed(tmp_path, straight):
    """Resume an interrupted run and interrupt it again (a restored partial epoch is saved
    again): still exact."""
    ckpt = str(tmp_path / "ckpt.npz")
    first = run_script({"mode": "interrupt", "stop": [1, 3, "raise"], "ckpt": ckpt})
    assert first.returncode == 3, first.stderr
    again = run_script({"mode": "resume", "ckpt": ckpt, "out": "-", "stop": [2, 2, "signal"]})
    assert again.returncode == 3, again.stderr
    saved = load_checkpoint(ckpt)
    assert (saved.epoch, saved.step) == (1, 2) and len(saved.history) == 1
    out = str(tmp_path / "resumed.json")
    last = run_script({"mode": "resume", "ckpt": ckpt, "out": out})
    assert last.returncode == 0, last.stderr
    assert_same_run(json.load(open(out)), load_checkpoint(ckpt), straight)


def test_finished_and_stopped_runs_train_nothing_more(tmp_path, straight):
    """status 'finished': only epochs beyond the last are trained; 'stopped' (early
    stopping): none, even with more epochs asked for."""
    _, expected_ckpt = straight
    assert expected_ckpt.status == "finished" and expected_ckpt.step == 0
    ns: dict = {}
    exec(SCRIPT, ns)  # noqa: S102
    model, opt, sched, data, val, callbacks = ns["build"](0)
    calls = []
    counter = type("Counter", (ns["Callback"],), {
        "on_batch_end": lambda self, step, logs=None: calls.append(step)})()
    loss = ns["SoftmaxCrossEntropy"]()
    history = model.fit(data, EPOCHS, opt, loss, val_data=val, callbacks=[counter],
                        verbose=0, resume_from=expected_ckpt.path)
    assert len(history) == EPOCHS and calls == []
    ckpt = tmp_path / "stopped.npz"
    stopper = ns["EarlyStopping"](monitor="val_loss", patience=0, min_delta=10.0)
    model, opt, sched, data, val, callbacks = ns["build"](0)
    history = model.fit(data, 5, opt, loss, val_data=val, callbacks=[stopper], verbose=0,
                        checkpoint_path=ckpt)
    assert len(history) == 2 and load_checkpoint(ckpt).status == "stopped"  # epoch 1 improves
    model, opt, sched, data, val, callbacks = ns["build"](0)
    history = model.fit(data, 9, opt, loss, val_data=val, callbacks=[counter], verbose=0,
                        resume_from=ckpt)
    assert len(history) == 2 and calls == []


# ---- the pieces --------------------------------------------------------------------------
def test_epoch_loss_does_not_depend_on_when_the_running_values_are_read():
    """A mid-epoch checkpoint syncs the running totals; the epoch's loss must be the same
    bits as with one read at the end (the host sums are sequential, not per sync)."""
    from gpuconv.training.stats import EpochStats  # noqa: PLC0415

    values = numpy.random.default_rng(1).random(37).astype(numpy.float32) * 3
    once, often, restored = EpochStats(), EpochStats(), EpochStats()
    for i, v in enumerate(values):
        for stats in (once, often):
            stats.add(numpy.float32(v), numpy.int64(i % 5), 16 + i % 3)
        if i % 4 == 0:
            often.sync()
        if i == 20:
            restored.load_state_dict(json.loads(json.dumps(often.state_dict())))
        elif i > 20:
            restored.add(numpy.float32(v), numpy.int64(i % 5), 16 + i % 3)
    for stats in (once, often, restored):
        stats.sync()
    assert once.loss == often.loss == restored.loss
    assert once.accuracy == often.accuracy == restored.accuracy


def test_checkpoint_every_parses_minutes_seconds_and_steps():
    from gpuconv.training.checkpointing import CheckpointEvery  # noqa: PLC0415
    import datetime  # noqa: PLC0415

    assert CheckpointEvery.parse("10min") == CheckpointEvery(seconds=600.0)
    assert CheckpointEvery.parse("90s").seconds == 90 and CheckpointEvery.parse("1.5h").seconds == 5400
    assert CheckpointEvery.parse("500steps") == CheckpointEvery(steps=500)
    assert CheckpointEvery.parse("1 step") == CheckpointEvery.parse(1) == CheckpointEvery(steps=1)
    assert CheckpointEvery.parse(datetime.timedelta(minutes=2)).seconds == 120
    for off in (None, "off", "0", 0, "0min"):
        assert not CheckpointEvery.parse(off).enabled
    for bad in ("10", "ten minutes", "5 parsecs", "1.5steps", -1, True, 2.5):
        with pytest.raises(ValueError, match="checkpoint_every"):
            CheckpointEvery.parse(bad)
    every = CheckpointEvery.parse("2min")
    assert not every.due(119.0, 10**6) and every.due(120.0, 0)
    assert CheckpointEvery(steps=3).due(0.0, 3) and not CheckpointEvery(steps=3).due(1e9, 2)
    assert str(CheckpointEvery.parse("10min")) == "10min" and str(CheckpointEvery()) == "off"


def test_version_1_checkpoints_still_load_and_resume(tmp_path, straight):
    """A version-1 file (no step/partial/status) reads as an end-of-epoch checkpoint; one
    written on an interrupt inside an epoch resumes by replaying that epoch, with a warning."""
    _, expected_ckpt = straight
    arrays = read_npz(expected_ckpt.path)
    meta = json.loads(arrays["checkpoint"].tobytes())
    for key in ("step", "partial", "status"):
        del meta[key]
    meta["version"] = 1
    meta["extra"]["interrupted"] = {"epoch": 3, "step": 2}
    arrays["checkpoint"] = numpy.frombuffer(json.dumps(meta).encode(), numpy.uint8)
    old = tmp_path / "v1.npz"
    numpy.savez(old, **arrays)
    loaded = load_checkpoint(old)
    assert (loaded.version, loaded.step, loaded.partial, loaded.status) == (1, 0, None,
                                                                          "interrupted")
    ns: dict = {}
    exec(SCRIPT, ns)  # noqa: S102
    parts = ns["build"](0)
    with pytest.warns(UserWarning, match="version-1 checkpoint"):
        history = ns["train"](parts, resume_from=old)
    assert len(history) == EPOCHS
    meta["version"] = 3
    arrays["checkpoint"] = numpy.frombuffer(json.dumps(meta).encode(), numpy.uint8)
    numpy.savez(tmp_path / "v3.npz", **arrays)
    with pytest.raises(ValueError, match="unsupported checkpoint version 3.*newer gpuconv"):
        load_checkpoint(tmp_path / "v3.npz")


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path, capsys):
    """The first SIGINT asks for a stop at the next boundary; a second one before it raises
    at once: TrainingInterrupted(reason 'hard'), no checkpoint written then (the last one,
    from the end of epoch 1, stays), and the SIGINT handler is restored afterwards."""
    import signal  # noqa: PLC0415

    from gpuconv.training.interrupts import TrainingInterrupted  # noqa: PLC0415

    ns: dict = {}
    exec(SCRIPT, ns)  # noqa: S102
    model, opt, sched, data, val, callbacks = ns["build"](0)

    class TwoSignals:
        def __init__(self, loader):
            self.loader, self.calls = loader, 0

        def __iter__(self):
            self.calls += 1
            for batch in self.loader:
                if self.calls == 2:  # epoch 2's validation
                    os.kill(os.getpid(), signal.SIGINT)
                    os.kill(os.getpid(), signal.SIGINT)
                yield batch

    ckpt = tmp_path / "ckpt.npz"
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as caught:
        model.fit(data, EPOCHS, opt, ns["SoftmaxCrossEntropy"](), val_data=TwoSignals(val),
                  scheduler=sched, callbacks=callbacks, verbose=2, checkpoint_path=ckpt)
    assert caught.value.reason == "hard" and not caught.value.saved
    assert (caught.value.epoch, caught.value.phase) == (2, "validate")
    saved = load_checkpoint(ckpt)
    assert (saved.epoch, saved.step, saved.status) == (1, 0, "running")
    assert signal.getsignal(signal.SIGINT) is handler
    assert "SIGINT: stopping after the current step" in capsys.readouterr().err
