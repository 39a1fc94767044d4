"""Every user error of the CLI is one message naming the culprit, exit 2, no traceback,
and nothing on disk changes; bugs keep their traceback (``--debug`` shows it always).

The table drives bad inputs through ``python -m gpuconv`` in a subprocess, one
shared workspace (tiny synthetic CIFAR-10, a trained run folder, damaged
copies) whose every file is hashed before and after each command.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import gpuconv
import gpuconv.layers
from gpuconv.backend import cuda_is_available
from gpuconv.cli import main
from gpuconv.cli import argtypes
from gpuconv.optim import SGD, Adam, AdamW, RMSprop
from synthetic_cifar import write_cifar

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
BASE = ["--device", "cpu", "--model", "tiny-cnn", "--val-split", "40", "--batch-size", "32",
        "--quiet"]


class MakesMarker:
    """A pickle payload that would create a folder if it were ever unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The workspace: data/ (good), bad_* data copies, run/ (trained), run_bad_ckpt/,
    run_bad_config/, images, a read-only folder and a random-bytes model."""
    ws = tmp_path_factory.mktemp("ws")
    data = write_cifar(ws / "data", n_train=200, n_test=50, layout="py")
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    raw = batch.read_bytes()
    for name, content in [("bad_truncated", raw[:len(raw) // 2]),
                          ("bad_random", numpy.random.default_rng(0).bytes(len(raw))),
                          ("bad_pickle", pickle.dumps(MakesMarker(str(ws / "pwned"))))]:
        shutil.copytree(data, ws / name)
        (ws / name / "cifar-10-batches-py" / "data_batch_1").write_bytes(content)
    assert main(["train", "--data-dir", str(data), "--epochs", "1", "--out", str(ws / "run"),
                 *BASE]) == 0
    shutil.copytree(ws / "run", ws / "run_bad_ckpt")
    ckpt = ws / "run_bad_ckpt" / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:ckpt.stat().st_size // 2])
    shutil.copytree(ws / "run", ws / "run_bad_config")
    config = json.loads((ws / "run_bad_config" / "config.json").read_text())
    config["settings"]["lr"] = -1
    (ws / "run_bad_config" / "config.json").write_text(json.dumps(config))
    (ws / "random_model.npz").write_bytes(numpy.random.default_rng(1).bytes(4096))
    pixels = numpy.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(numpy.float32)
    numpy.save(ws / "float255.npy", pixels)
    nan = pixels / 255
    nan[0, 0, 0] = numpy.nan
    numpy.save(ws / "nan.npy", nan)
    numpy.save(ws / "good.npy", pixels.astype(numpy.uint8))
    (ws / "random.npy").write_bytes(numpy.random.default_rng(3).bytes(4096))
    shutil.copyfile(ws / "run" / "model.npz", ws / "archive.npy")
    numpy.savez(ws / "objects_model.npz", a=numpy.array([{"x": 1}], dtype=object))
    (ws / "a_folder").mkdir()
    (ws / "empty").mkdir()
    (ws / "readonly").mkdir()
    return ws


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its content."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_cli(args: list[str], ws: Path, env: dict | None = None,
            readonly: str | None = None) -> subprocess.CompletedProcess:
    """``gpuconv ARGS`` in a subprocess ("{ws}" in ARGS: the workspace); ``readonly``:
    a folder of the workspace that behaves as a read-only file system
    (tests/readonly_fs.py)."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
                "GPUCONV_DEVICE": "cpu"}
    full_env.pop("GPUCONV_DEBUG", None)
    full_env.update(env or {})
    args = [a.replace("{ws}", str(ws)) for a in args]
    cmd = ([sys.executable, str(TESTS / "readonly_fs.py"), str(ws / readonly)] if readonly
           else [sys.executable, "-m", "gpuconv"]) + args
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ws,
                          timeout=300)


NO_CUDA = pytest.mark.skipif(cuda_is_available(), reason="CUDA is usable here")

# (id, arguments, extra environment, read-only folder, words the message must contain)
CASES = [
    ("truncated-batch", ["train", "--data-dir", "{ws}/bad_truncated", "--out", "{ws}/new", *BASE],
     None, None, ["bad_truncated/cifar-10-batches-py/data_batch_1"]),
    ("random-batch", ["train", "--data-dir", "{ws}/bad_random", "--out", "{ws}/new", *BASE],
     None, None, ["bad_random/cifar-10-batches-py/data_batch_1"]),
    ("malicious-pickle", ["train", "--data-dir", "{ws}/bad_pickle", "--out", "{ws}/new", *BASE],
     None, None, ["bad_pickle/cifar-10-batches-py/data_batch_1"]),
    ("truncated-checkpoint", ["train", "--resume", "{ws}/run_bad_ckpt", "--data-dir",
                              "{ws}/data", "--quiet"],
     None, None, ["--resume", "run_bad_ckpt/checkpoint.npz", "truncated"]),
    ("resume-bad-config", ["train", "--resume", "{ws}/run_bad_config", "--data-dir",
                           "{ws}/data", "--quiet"],
     None, None, ["--resume", "config.json", "'lr'", "> 0"]),
    ("out-read-only", ["train", "--data-dir", "{ws}/data", "--out", "{ws}/readonly/run", *BASE],
     None, "readonly", ["--out", "readonly", "read-only file system"]),
    # a read-only mount point that does not exist yet: found only when creating it
    ("out-read-only-late", ["train", "--data-dir", "{ws}/data", "--out",
                            "{ws}/mnt/sub/run", "--epochs", "1", *BASE],
     None, "mnt", ["--out", "mnt", "read-only file system"]),
    ("out-through-a-file", ["train", "--data-dir", "{ws}/data", "--out",
                            "{ws}/random_model.npz/run", *BASE],
     None, None, ["--out", "random_model.npz is a file"]),
    ("out-existing-run", ["train", "--data-dir", "{ws}/data", "--out", "{ws}/run", *BASE],
     None, None, ["already holds a", "--resume"]),
    ("evaluate-out-read-only", ["evaluate", "{ws}/run", "--data-dir", "{ws}/data", "--out",
                                "{ws}/readonly/eval"],
     None, "readonly", ["--out", "readonly/eval", "read-only file system"]),
    ("lr-inf", ["train", "--lr", "inf", *BASE], None, None, ["--lr", "finite", "inf"]),
    ("lr-nan", ["train", "--lr", "nan", *BASE], None, None, ["--lr", "finite"]),
    ("label-smoothing-2", ["train", "--label-smoothing", "2", *BASE], None, None,
     ["--label-smoothing", "<= 1", "2"]),
    ("patience-negative", ["train", "--patience", "-3", *BASE], None, None,
     ["--patience", ">= 0", "-3"]),
    ("epochs-0", ["train", "--epochs", "0", *BASE], None, None, ["--epochs", "> 0"]),
    ("seed-negative", ["train", "--seed", "-1", *BASE], None, None, ["--seed", ">= 0"]),
    ("momentum-1", ["train", "--momentum", "1", *BASE], None, None, ["--momentum", "< 1"]),
    ("gamma-0", ["train", "--gamma", "0", *BASE], None, None, ["--gamma", "> 0"]),
    ("weight-decay-inf", ["train", "--weight-decay", "inf", *BASE], None, None,
     ["--weight-decay", "finite"]),
    ("val-split-inf", ["train", "--val-split", "inf", *BASE], None, None, ["--val-split"]),
    ("val-split-fraction", ["train", "--val-split", "2.5", *BASE], None, None,
     ["--val-split", "fraction"]),
    ("eval-batch-size-0", ["evaluate", "{ws}/run", "--batch-size", "0"], None, None,
     ["--batch-size", ">= 1"]),
    ("top-k-0", ["predict", "{ws}/run", "{ws}/good.npy", "--top-k", "0"], None, None,
     ["--top-k", ">= 1"]),
    # refused before the benchmark runs, not after it
    ("bench-json-read-only", ["bench", "--tiny", "--no-torch", "--device", "cpu", "--workloads",
                              "seed-cnn", "--json", "{ws}/readonly/bench.json"],
     None, "readonly", ["--json", "readonly", "read-only file system"]),
    ("bench-cooldown-inf", ["bench", "--cooldown", "inf"], None, None, ["--cooldown"]),
    ("amp-on-cpu", ["train", "--amp", "--data-dir", "{ws}/data", "--out", "{ws}/new", *BASE],
     None, None, ["--amp", "--device cuda"]),
    ("random-model-file", ["evaluate", "{ws}/random_model.npz", "--data-dir", "{ws}/data"],
     None, None, ["random_model.npz", "not a gpuconv model file"]),
    ("predict-a-folder", ["predict", "{ws}/run", "{ws}/a_folder"], None, None,
     ["a_folder", "is a folder"]),
    ("predict-float-0-255", ["predict", "{ws}/run", "{ws}/float255.npy"], None, None,
     ["float255.npy", "[0, 1]", "divide by 255"]),
    ("predict-nan", ["predict", "{ws}/run", "{ws}/nan.npy"], None, None,
     ["nan.npy", "NaN"]),
    # NumPy would advise allow_pickle=True for random bytes and return an .npz as a mapping
    ("predict-random-npy", ["predict", "{ws}/run", "{ws}/random.npy"], None, None,
     ["random.npy", "not a .npy array file"]),
    ("predict-npz-as-npy", ["predict", "{ws}/run", "{ws}/archive.npy"], None, None,
     ["archive.npy", "an .npz archive"]),
    ("object-array-model", ["evaluate", "{ws}/objects_model.npz", "--data-dir", "{ws}/data"],
     None, None, ["objects_model.npz", "not a gpuconv model file"]),
    ("width-without-multiplier", ["train", "--width", "2", "--data-dir", "{ws}/data", "--out",
                                  "{ws}/new", *BASE], None, None,
     ["--width 2", "tiny-cnn", "no width multiplier"]),
    ("seed-too-large", ["train", "--seed", "4294967296", *BASE], None, None,
     ["--seed", "<= 4294967295"]),
    ("evaluate-missing-data", ["evaluate", "{ws}/run", "--data-dir", "{ws}/empty"], None, None,
     ["CIFAR-10 not found", "empty", "--download"]),
    ("device-bogus", ["predict", "{ws}/run", "{ws}/good.npy", "--device", "tpu"], None, None,
     ["--device tpu", "unknown device"]),
    pytest.param("cuda-flag", ["train", "--device", "cuda", "--data-dir", "{ws}/data",
                               "--out", "{ws}/new", "--quiet"], None, None,
                 ["--device cuda", "CUDA is not usable", "--device cpu"], marks=NO_CUDA,
                 id="cuda-flag"),
    pytest.param("cuda-env", ["evaluate", "{ws}/run", "--data-dir", "{ws}/data"],
                 {"GPUCONV_DEVICE": "cuda"}, None,
                 ["GPUCONV_DEVICE=cuda", "CUDA is not usable", "--device cpu"], marks=NO_CUDA,
                 id="cuda-env"),
]


@pytest.mark.parametrize("case, args, env, readonly, words", CASES,
                         ids=[c[0] if isinstance(c, tuple) else c.id for c in CASES])
def test_user_error_is_one_line_exit_2_and_writes_nothing(ws, case, args, env, readonly, words):
    before = snapshot(ws)
    proc = run_cli(args, ws, env, readonly)
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    # one line; the "where to put CIFAR-10" advice is a short block of three, and a
    # message that gives whole commands to run puts each on a line of its own
    blocks = {"evaluate-missing-data": 3, "out-existing-run": 5}
    assert len(lines) == blocks.get(case, 1), err
    assert lines[0].startswith(f"gpuconv {args[0]}: error: "), err
    for word in words:
        assert word in err, (word, err)
    # no Python-only advice from the library leaks into the CLI's words
    for python_hint in ("device='cpu'", "nan_policy=", "allow_pickle", "download=True",
                        "root="):
        assert python_hint not in err, err
    assert snapshot(ws) == before, "the command changed files on disk"
    assert not (ws / "pwned").exists()


def test_a_new_run_into_a_folder_with_a_damaged_checkpoint_says_so(ws):
    """Not "saved no checkpoint": the message names the damaged file, says the run cannot
    be resumed and offers --overwrite; nothing changes on disk."""
    before = snapshot(ws)
    proc = run_cli(["train", "--data-dir", "{ws}/data", "--out", "{ws}/run_bad_ckpt", *BASE],
                   ws)
    err = " ".join(proc.stderr.split())  # the message is wrapped to 80 columns
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in err and err.startswith("gpuconv train: error: "), proc.stderr
    assert "saved no checkpoint" not in err, proc.stderr
    for word in (f"{ws / 'run_bad_ckpt' / 'checkpoint.npz'} is damaged", "truncated",
                 "cannot be resumed", "--overwrite", "another --out"):
        assert word in err, (word, proc.stderr)
    assert snapshot(ws) == before, "the command changed files on disk"


def test_debug_flag_and_variable_show_the_traceback(ws):
    args = ["predict", "{ws}/run", "{ws}/a_folder"]
    plain = run_cli(args, ws)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    for proc in (run_cli([*args, "--debug"], ws), run_cli(["--debug", *args], ws),
                 run_cli(args, ws, {"GPUCONV_DEBUG": "1"})):
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" in proc.stderr and "is a folder" in proc.stderr.splitlines()[-1]


def test_the_traceback_of_the_cause_is_shown_under_debug(ws, capsys):
    """A CLIError raised ``from None`` still shows the library error under --debug."""
    assert main(["--debug", "evaluate", str(ws / "random_model.npz")]) == 2
    err = capsys.readouterr().err
    assert "ValueError" in err and "CLIError" in err


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("boom"),
                                 FileNotFoundError(2, "No such file", "/x")])
def test_internal_errors_keep_their_traceback(monkeypatch, exc):
    """Only known user errors are turned into messages; a bug propagates."""
    from gpuconv.cli import predict  # noqa: PLC0415

    def broken(args):
        raise exc

    monkeypatch.setattr(predict, "run", broken)
    with pytest.raises(type(exc)):
        main(["predict", "model.npz", "image.png"])


def test_evaluate_offers_the_download_it_advises(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--download" in capsys.readouterr().out


def test_gpuconv_device_is_honoured_and_the_flag_wins(ws, monkeypatch, capsys):
    """$GPUCONV_DEVICE picks the device of every command; --device overrides it."""
    monkeypatch.setenv("GPUCONV_DEVICE", "tpu")
    assert main(["predict", str(ws / "run"), str(ws / "good.npy")]) == 2
    assert "GPUCONV_DEVICE=tpu" in capsys.readouterr().err
    assert main(["evaluate", str(ws / "run"), "--data-dir", str(ws / "data")]) == 2
    assert "GPUCONV_DEVICE=tpu" in capsys.readouterr().err
    assert main(["train", "--data-dir", str(ws / "data"), "--out", str(ws / "x"), "--quiet"]) == 2
    assert "GPUCONV_DEVICE=tpu" in capsys.readouterr().err
    assert main(["predict", str(ws / "run"), str(ws / "good.npy"), "--device", "cpu"]) == 0


@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")
def test_a_diverging_run_names_the_flag(ws, tmp_path, capsys):
    """A non-finite loss stops the run with the flag to change, not fit's Python hint."""
    code = main(["train", "--data-dir", str(ws / "data"), "--out", str(tmp_path / "r"),
                 "--optimizer", "sgd", "--lr", "1e30", "--epochs", "2", *BASE])
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite training loss" in err and "--lr" in err and "nan_policy" not in err


def test_a_diverging_run_prints_no_numpy_warnings(ws, tmp_path):
    """The overflows before the loss turns NaN do not bury gpuconv's message under
    NumPy's RuntimeWarnings (two ops threads: the filter holds in the workers too)."""
    proc = run_cli(["train", "--data-dir", "{ws}/data", "--out", str(tmp_path / "r"),
                    "--optimizer", "sgd", "--lr", "1e30", "--epochs", "2", *BASE], ws,
                   {"GPUCONV_NUM_THREADS": "2"})
    err = proc.stderr
    assert proc.returncode == 2, err
    assert "RuntimeWarning" not in err and "encountered" not in err, err
    assert err.startswith("gpuconv train: error: training failed: non-finite training loss")


def _disk_full(monkeypatch) -> None:
    """Every file write fails as on a full disk: ENOSPC at fsync, naming no file (a
    full disk's write() and close() name none either)."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_full_disk_is_one_message_naming_the_file(ws, tmp_path, monkeypatch, capsys,
                                                    command):
    out = tmp_path / "out"
    args = (["train", "--data-dir", str(ws / "data"), "--epochs", "1", *BASE]
            if command == "train" else ["evaluate", str(ws / "run"), "--data-dir",
                                        str(ws / "data")])
    _disk_full(monkeypatch)
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(f"gpuconv {command}: error: --out {out}: cannot write there ("
                                f"{out}{os.sep}"), err
    assert "no space left on device" in lines[-1] and "free some space" in lines[-1]
    assert "Traceback" not in err and ".tmp" not in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_plots_are_written_atomically_and_name_their_file(tmp_path, monkeypatch):
    from gpuconv.cli.report import matplotlib_available, plot_confusion  # noqa: PLC0415

    if not matplotlib_available():
        pytest.skip("matplotlib is not installed")
    path = tmp_path / "confusion.png"
    path.write_bytes(b"old")
    _disk_full(monkeypatch)
    with pytest.raises(OSError) as info:
        plot_confusion([[1, 0], [0, 1]], ["a", "b"], path)
    assert info.value.filename == str(path)
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through chmod; the read-only cases cover this")
def test_out_in_a_folder_without_write_permission(ws, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = run_cli(["train", "--data-dir", "{ws}/data", "--out", str(locked / "run"),
                        *BASE], ws)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--out" in proc.stderr and "not writable" in proc.stderr


# ---- the validators and the library checks the CLI inherits -------------------------------
@pytest.mark.parametrize("parse, good, bad", [
    (argtypes.integer(1), ["1", "30"], ["0", "-3", "1.5", "inf", "x"]),
    (argtypes.integer(0), ["0", "7"], ["-1"]),
    (argtypes.real(0, low_open=True), ["1e-3", "2"], ["0", "-1", "inf", "-inf", "nan", "x"]),
    (argtypes.real(0, 1), ["0", "0.5", "1"], ["1.0001", "-0.1", "nan"]),
    (argtypes.count_or_fraction, ["0", "0.1", "5000"], ["1.5", "-1", "inf", "nan"]),
])
def test_flag_validators(parse, good, bad):
    import argparse  # noqa: PLC0415

    for text in good:
        parse(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


@pytest.mark.parametrize("make", [
    lambda p: Adam(p, lr=math.nan), lambda p: Adam(p, lr=math.inf), lambda p: SGD(p, lr=-1),
    lambda p: AdamW(p, lr=1e-3, eps=math.nan), lambda p: Adam(p, weight_decay=math.inf),
    lambda p: RMSprop(p, momentum=math.nan), lambda p: SGD(p, lr=0.1, momentum=math.nan),
])
def test_optimizers_refuse_non_finite_hyper_parameters(make):
    model = gpuconv.Sequential([gpuconv.layers.Dense(2, 2)])
    with pytest.raises(ValueError, match="finite"):
        make(model)
