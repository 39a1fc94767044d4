"""Every line ``gpuconv train / evaluate / bench`` prints fits the terminal.

The commands run in a pseudo-terminal of 60, 80 and 200 columns (stdout and stderr
both on it, as in a shell), so the live progress line, the epoch lines, the report, the
confusion matrix and the messages are all measured as a person would see them. Paths in
the commands are kept short (relative, in the test's folder): a single path longer than
the terminal is the one thing allowed to overflow.
"""
from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy
import pytest

from gpuconv.models.presets import PRESET_HELP, PRESETS, build_preset
from gpuconv.training.console import fit_fields, terminal_width, wrap
from gpuconv.training.progress import EpochProgress, epoch_lines, format_duration
from gpuconv.training.stats import EpochStats
from gpuconv.training.summary import count_parameters
from synthetic_cifar import write_cifar

REPO = Path(__file__).resolve().parents[1]
WIDTHS = (60, 80, 200)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_pty(args: list[str], columns: int, cwd: Path, timeout: float = 120) -> tuple[int, str]:
    """Run ``python -m gpuconv ARGS`` on a pty ``columns`` wide; (exit code, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(PYTHONPATH=str(REPO), GPUCONV_DEVICE="cpu", TERM="xterm",
               GPUCONV_PROGRESS_INTERVAL="0")  # refresh the live line after every step
    proc = subprocess.Popen([sys.executable, "-m", "gpuconv", *args], stdin=slave,
                            stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the pty
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        proc.kill()
        os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def screen_lines(output: str) -> list[str]:
    """What the terminal shows: every line and every state of a line rewritten with \\r."""
    return [part for line in ANSI.sub("", output).split("\n") for part in line.split("\r")]


def assert_fits(output: str, columns: int) -> None:
    too_long = [line for line in screen_lines(output) if len(line) > columns]
    assert not too_long, f"{len(too_long)} line(s) wider than {columns}: {too_long[:3]}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("width")
    write_cifar(root / "data", n_train=120, n_test=40, layout="py")
    return root


@pytest.mark.parametrize("columns", WIDTHS)
def test_train_and_evaluate_fit_the_terminal(workdir, columns):
    # batch 2: 50 steps per epoch, each one refreshing the live line with the time left
    rc, out = run_in_pty(["train", "--data-dir", "data", "--model", "tiny-cnn", "--epochs",
                          "2", "--val-split", "20", "--batch-size", "2", "--device", "cpu",
                          "--out", f"r{columns}"], columns, workdir)
    assert rc == 0, out
    assert_fits(out, columns)
    text = " ".join(ANSI.sub("", out).split())
    for word in ("val_loss=", "val_accuracy=", "test accuracy", "confusion matrix", "truck"):
        assert word in text, word  # what used to be cut at 80 columns is there
    live = [line for line in screen_lines(out) if line.startswith("Epoch") and "ETA" in line]
    assert live, "no live progress line with the epoch's time left"
    assert any(" run " in line for line in live), "no live line with the run's time left"
    rc, out = run_in_pty(["evaluate", f"r{columns}", "--device", "cpu", "--data-dir", "data"],
                         columns, workdir)
    assert rc == 0, out
    assert_fits(out, columns)
    assert "precision" in out and "confusion matrix" in out


@pytest.mark.parametrize("columns", WIDTHS)
def test_train_help_fits_and_has_one_line_per_preset(workdir, columns):
    rc, out = run_in_pty(["train", "--help"], columns, workdir)
    assert rc == 0, out
    assert_fits(out, columns)
    lines = screen_lines(out)
    for name in PRESETS:
        (line,) = [x for x in lines if x.startswith(f"  {name} ")]
        if columns >= 80:  # one line per preset: size, accuracy and time per epoch
            assert PRESET_HELP[name] in line


@pytest.mark.parametrize("columns", (60, 80))
def test_bench_fits_the_terminal(workdir, columns):
    rc, out = run_in_pty(["bench", "--list"], columns, workdir)
    assert rc == 0, out
    assert_fits(out, columns)
    rc, out = run_in_pty(["bench", "--tiny", "--quick", "--no-torch", "--device", "cpu",
                          "--workloads", "seed-cnn", "--cooldown", "0", "--json", "b.json"],
                         columns, workdir)
    assert rc == 0, out
    assert_fits(out, columns)
    assert "seed-cnn:train" in out and "median ms" in out


# ---- the pieces, in this process ------------------------------------------------------
def test_every_preset_has_a_true_one_line_description():
    """Each preset provides its help line (PRESET_HELP, next to PRESETS) with its real
    parameter count, short enough for one line at 80 columns."""
    column = max(len(n) for n in PRESETS) + 4
    for name in PRESETS:
        line = PRESET_HELP.get(name)
        assert line, f"preset {name!r} has no PRESET_HELP line"
        assert column + len(line) <= 78, name  # argparse leaves 2 columns
        trainable, _ = count_parameters(build_preset(name))
        stated = re.match(r"([\d.]+)([kM]) params", line)
        assert stated, line
        value = float(stated.group(1)) * {"k": 1e3, "M": 1e6}[stated.group(2)]
        assert abs(value - trainable) / trainable < 0.01, (name, trainable)
        assert "s/epoch" in line or "min/epoch" in line or "not measured" in line


def test_epoch_lines_wrap_and_drop_the_least_useful_fields():
    logs = {"epoch": 12, "loss": 1.2345678, "accuracy": 0.51234, "val_loss": 1.11111,
            "val_accuracy": 0.60123, "lr": 0.001, "time": 35.25, "images_per_s": 850.3,
            "skipped": 0}
    wide = epoch_lines(12, 30, logs, 199)
    assert len(wide) == 1 and "skipped" not in wide[0] and "time=35.2s" in wide[0]
    for width in (59, 79):
        lines = epoch_lines(12, 30, logs, width)
        assert len(lines) == 2 and all(len(line) <= width for line in lines)
        assert "val_loss=" in lines[0] + lines[1] and "val_accuracy=" in lines[0] + lines[1]
    narrow = " ".join(epoch_lines(12, 30, logs, 39))
    assert "val_accuracy=" in narrow and "images_per_s" not in narrow


def test_live_line_shows_the_epoch_and_run_time_left():
    stats = EpochStats()
    stats.add(numpy.float32(1.25), numpy.int64(60), 128)
    stats.sync()
    progress = EpochProgress(2, 30, 350, stats, verbose=1, file=io.StringIO(),
                             lr=lambda: 0.001, epoch_times=[140.0])
    progress.n, progress.start = 117, progress.start - 40.0  # 117 steps in 40 s
    now = progress.start + 40.0
    epoch_left, run_left = progress.time_left(now)
    assert epoch_left == pytest.approx(233 * 40 / 117)
    assert run_left == pytest.approx(epoch_left + 28 * 140.0)
    for width in WIDTHS:
        line = progress.line(now, width)
        assert len(line) < width and line.startswith("Epoch 2/30")
        assert f"ETA {format_duration(epoch_left)}" in line
        assert f"run {format_duration(run_left)}" in line and "loss=1.25" in line
    assert "|" in progress.line(now, 200) and "|" not in progress.line(now, 60)
    assert [format_duration(s) for s in (7, 725, 3733, 400000)] == ["0:07", "12:05",
                                                                    "1:02:13", "111h"]


def test_console_helpers(monkeypatch):
    assert fit_fields(["aa", "bb", "cc"], 8, lead="X") == ["X aa bb", "  cc"]
    assert fit_fields(["aa", "bb", "cc"], 8, lead="X", max_lines=1, drop_order=[1]) == \
        ["X aa cc"]
    long = "/a/very/long/path/that/does/not/fit/in/twenty/columns"
    assert wrap(f"saved to {long}", 20) == ["saved to", long]  # never broken inside
    monkeypatch.setenv("COLUMNS", "132")
    assert terminal_width(io.StringIO()) == 132
    monkeypatch.delenv("COLUMNS")
    assert terminal_width(io.StringIO()) == 80
