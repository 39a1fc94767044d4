"""``gpuconv train`` interrupted, killed, failed, finished: exact resume and no dead ends.

On tiny synthetic CIFAR-10 folders (CPU). "Exact" compares history.json (every field but
the wall-clock ``time`` and ``images_per_s``) and the weights of the final checkpoint bit
for bit with an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from gpuconv import losses
from gpuconv.cli import main
from gpuconv.io.checkpoint import load_checkpoint
from gpuconv.training import loop
from synthetic_cifar import write_cifar

REPO = Path(__file__).resolve().parents[1]
BASE = ["--device", "cpu", "--model", "tiny-cnn", "--val-split", "40", "--batch-size", "32",
        "--quiet"]
EXACT = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["GPUCONV_DEVICE"] = "cpu"
    return env


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"), n_train=200, n_test=50, layout="py")


@pytest.fixture(scope="module")
def straight(cifar_dir, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run (5 steps per epoch)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["train", "--data-dir", str(cifar_dir), "--epochs", "3", "--out", str(out),
                 *BASE]) == 0
    return out


def _history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


def assert_same_run(run: Path, straight: Path) -> None:
    ours, theirs = _history(run), _history(straight)
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs]
    for a, b in zip(ours, theirs):
        for key in EXACT:
            assert a[key] == b[key], (a["epoch"], key)
    mine, expected = (load_checkpoint(r / "checkpoint.npz") for r in (run, straight))
    for key in expected.arrays:
        if key.startswith(("param/", "buffer/")):
            numpy.testing.assert_array_equal(mine.arrays[key], expected.arrays[key],
                                             err_msg=key)
    for key, value in expected.optimizer_state["state"].items():
        numpy.testing.assert_array_equal(mine.optimizer_state["state"][key], value)
    ra, rb = (json.loads((r / "report.json").read_text()) for r in (run, straight))
    assert ra["accuracy"] == rb["accuracy"] and ra["confusion_matrix"] == rb["confusion_matrix"]


def stop_at(monkeypatch, epoch: int, step: int, reason: str = "SIGINT") -> None:
    """Make the loop see a stop request at (epoch, step), as a Ctrl-C there would."""
    original = loop._Run.boundary

    def boundary(self):
        if self.current is not None and (self.current.epoch, self.current.step) == (epoch, step):
            self.stops.request(reason)
        original(self)

    monkeypatch.setattr(loop._Run, "boundary", boundary)


def test_ctrl_c_mid_epoch_then_resume_equals_the_uninterrupted_run(cifar_dir, straight,
                                                                   tmp_path, monkeypatch,
                                                                   capsys):
    out = tmp_path / "run"
    stop_at(monkeypatch, 2, 3)
    assert main(["train", "--data-dir", str(cifar_dir), "--epochs", "3", "--out", str(out),
                 *BASE]) == 130
    err = capsys.readouterr().err
    assert "Interrupted (SIGINT) at epoch 2, step 3/5" in " ".join(err.split())
    assert f"    gpuconv train --resume {out}" in err.splitlines()  # whole, on its own line
    saved = load_checkpoint(out / "checkpoint.npz")
    assert (saved.epoch, saved.step, saved.status) == (1, 3, "interrupted")
    assert not (out / "report.json").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert_same_run(out, straight)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_at_any_moment_then_resume_is_exact(cifar_dir, straight, tmp_path, sigint):
    """A real SIGTERM to a real process, whenever it lands in training: the checkpoint is
    that of a step boundary, and the resumed run equals the uninterrupted one. Also where
    SIGINT is ignored (started with ``&`` from a script, or under ``nohup``): SIGTERM is
    then the only graceful stop and must not turn into a stop without a checkpoint."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "gpuconv", "train", "--data-dir", str(cifar_dir),
               "--epochs", "3", "--out", str(out), *BASE]
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint == "ignored" \
        else None
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ignore)
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    saved = load_checkpoint(out / "checkpoint.npz")
    if proc.returncode == 0:  # the run ended before the signal came: nothing to compare
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 130, err
    assert "Interrupted (SIGTERM)" in " ".join(err.split()) and "Traceback" not in err
    assert saved.status == "interrupted"
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert_same_run(out, straight)


def test_resuming_a_finished_run_says_so_and_does_nothing(straight, tmp_path, capsys):
    report = (straight / "report.json").read_bytes()
    config = (straight / "config.json").read_bytes()
    assert main(["train", "--resume", str(straight)]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert f"The run in {straight} is finished: 3 epoch(s)" in flat and "Nothing to do" in flat
    assert f"gpuconv train --resume {straight} --epochs 13" in out
    assert (straight / "report.json").read_bytes() == report  # no second test evaluation
    assert (straight / "config.json").read_bytes() == config


def test_new_run_into_an_occupied_folder_says_how_to_go_on(straight, capsys):
    assert main(["train", "--out", str(straight), "--device", "cpu"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "already holds a finished run" in err and "--overwrite" in err
    assert f"gpuconv train --resume {straight}" in err


class _NaNAfter(losses.SoftmaxCrossEntropy):
    """A loss that turns NaN from its ``limit``-th training call on."""

    calls = 0
    limit = 10**9

    def forward(self, pred, y):
        value = super().forward(pred, y)
        if self.training_call():
            return value * float("nan")
        return value

    @classmethod
    def training_call(cls) -> bool:
        cls.calls += 1
        return cls.calls >= cls.limit


def test_a_failed_run_is_no_dead_end(cifar_dir, tmp_path, monkeypatch, capsys):
    """NaN loss at epoch 2 step 3 with a checkpoint every step: the error names the last
    good checkpoint and both ways on, and both work."""
    out = tmp_path / "run"
    monkeypatch.setattr(losses, "SoftmaxCrossEntropy", _NaNAfter)
    _NaNAfter.calls, _NaNAfter.limit = 0, 5 + 1 + 3  # epoch 1: 5 steps + 1 validation batch
    args = ["train", "--data-dir", str(cifar_dir), "--epochs", "3", "--out", str(out), *BASE,
            "--checkpoint-every", "1step"]
    assert main(args) == 2
    err = capsys.readouterr().err
    flat = " ".join(err.split())
    assert "training failed: non-finite training loss" in flat and "nan_policy" not in flat
    assert "last good checkpoint (epoch 2, step 2 (1 epoch completed))" in flat
    assert f"    gpuconv train --resume {out}" in err.splitlines()
    restart = next(line.strip() for line in err.splitlines() if "--overwrite" in line
                   and line.startswith("    "))
    saved = load_checkpoint(out / "checkpoint.npz")
    assert (saved.epoch, saved.step) == (1, 2)
    monkeypatch.undo()
    # way on 1: resume from the last good checkpoint (the cause is gone: the loss is sane)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert [r["epoch"] for r in _history(out)] == [1, 2, 3]
    # way on 2: the printed command starts the run over in the same folder
    (out / "notes.txt").write_text("mine")
    restart_args = shlex.split(restart)[1:]  # drop "gpuconv"
    assert main(restart_args) == 0
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are deleted
    assert load_checkpoint(out / "checkpoint.npz").status == "finished"


def test_a_run_without_a_checkpoint_is_no_dead_end(cifar_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(losses, "SoftmaxCrossEntropy", _NaNAfter)
    _NaNAfter.calls, _NaNAfter.limit = 0, 1
    assert main(["train", "--data-dir", str(cifar_dir), "--epochs", "2", "--out", str(out),
                 *BASE, "--checkpoint-every", "off"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "No checkpoint was written before the failure" in err and "--overwrite" in err
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "before its first checkpoint" in " ".join(err.split())
    command = next(line.strip() for line in err.splitlines() if line.startswith("    "))
    assert command.endswith("--overwrite") and f"--out {out}" in command
    assert main(shlex.split(command)[1:]) == 0
    assert [r["epoch"] for r in _history(out)] == [1, 2]
    assert main(["train", "--resume", str(out), "--overwrite"]) == 2


def test_checkpoint_every_flag(cifar_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--checkpoint-every", "5parsecs"])
    assert exc.value.code == 2 and "unknown unit" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(cifar_dir), "--epochs", "1", "--out", str(out),
                 *BASE, "--checkpoint-every", "2 steps"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["checkpoint_every"] == "2steps"
    # a resume may change it (it does not change the results)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--checkpoint-every", "off",
                 "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["settings"]["checkpoint_every"] == "off"
