"""The ``gpuconv`` command line on tiny synthetic CIFAR-10 folders (CPU, a few seconds each)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy
import pytest

from gpuconv import load_model
from gpuconv.cli import build_parser, main
from gpuconv.models.presets import INPUT_SHAPE, PRESETS, build_preset
from gpuconv.training import loop
from synthetic_cifar import make_images, write_cifar

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = ["--device", "cpu", "--model", "tiny-cnn", "--val-split", "40", "--batch-size", "32",
        "--quiet"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["GPUCONV_DEVICE"] = "cpu"
    return env


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"), n_train=200, n_test=50, layout="py")


@pytest.fixture(scope="module")
def trained(cifar_dir, tmp_path_factory) -> Path:
    """A 2-epoch tiny-cnn run folder (shared by the read-only tests)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data-dir", str(cifar_dir), "--epochs", "2", "--out", str(out),
                 *BASE]) == 0
    return out


def _history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


# ---- entry points ------------------------------------------------------------------------
def test_python_m_gpuconv_help():
    proc = subprocess.run([sys.executable, "-m", "gpuconv", "--help"], capture_output=True,
                          text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    for word in ("train", "evaluate", "predict"):
        assert word in proc.stdout


def test_subcommand_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--data-dir", "--resume", "--schedule", "--augment", "--val-split",
                 "--limit", "--dtype", "--patience", "--out"):
        assert flag in text


def test_no_command_prints_usage(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().err


def test_missing_data_is_one_clear_error_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "gpuconv", "train", "--data-dir", str(empty),
                           "--device", "cpu"], capture_output=True, text=True, env=_env(),
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(empty / "cifar-10-batches-py" / "data_batch_1") in proc.stderr
    assert "--download" in proc.stderr and "--data-dir" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing written


def test_missing_data_uses_gpuconv_data_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPUCONV_DATA", str(tmp_path / "env-root"))
    assert main(["train", "--device", "cpu", "--out", str(tmp_path / "r")]) == 2
    assert str(tmp_path / "env-root") in capsys.readouterr().err


def test_bench_subcommand_registered_when_available(monkeypatch):
    fake = types.ModuleType("gpuconv.bench")
    fake.add_parser = lambda sub: sub.add_parser("bench").set_defaults(func=lambda a: 7)
    monkeypatch.setitem(sys.modules, "gpuconv.bench", fake)
    assert main(["bench"]) == 7
    monkeypatch.setitem(sys.modules, "gpuconv.bench", types.ModuleType("gpuconv.bench"))
    assert "bench" not in build_parser().format_help()


# ---- presets -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_forward_and_save(name, tmp_path):
    model = build_preset(name)
    x = numpy.random.default_rng(0).standard_normal((2, *INPUT_SHAPE)).astype(numpy.float32)
    y = model.predict(x)
    assert y.shape == (2, 10)
    model.save(tmp_path / "m.npz")
    numpy.testing.assert_allclose(load_model(tmp_path / "m.npz").predict(x), y, rtol=1e-5,
                                  atol=1e-6)


def test_seed_cnn_layout():
    names = [type(layer).__name__ for layer in build_preset("seed-cnn")]
    block = ["Conv2D", "BatchNorm2d", "ReLU", "MaxPool2D", "Dropout2d"]
    head = ["Flatten", "Dense", "BatchNorm1d", "ReLU", "Dropout", "Dense", "BatchNorm1d", "ReLU",
            "Dropout", "Dense"]
    assert names == block * 3 + head


# ---- train -------------------------------------------------------------------------------
def test_run_folder_contents(trained):
    files = {p.name for p in trained.iterdir()}
    assert {"config.json", "history.json", "history.csv", "model.npz", "checkpoint.npz",
            "report.json", "report.txt", "curves.png", "confusion.png"} <= files
    config = json.loads((trained / "config.json").read_text())
    assert config["gpuconv_version"]
    assert config["device"] == "cpu"
    assert config["machine"]["cpu_count"] >= 1 and config["machine"]["numpy"]
    settings = config["settings"]
    assert settings["model"] == "tiny-cnn" and settings["epochs"] == 2
    assert settings["optimizer"] == "adam" and settings["lr"] == 1e-3
    assert settings["weight_decay"] == 1e-4 and settings["schedule"] == "plateau"
    assert settings["augment"] == "basic" and settings["patience"] == 10
    assert config["data"]["train"] == 160 and config["data"]["val"] == 40
    assert config["data"]["test"] == 50

    history = _history(trained)
    assert [r["epoch"] for r in history] == [1, 2]
    for row in history:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time",
                    "images_per_s"):
            assert isinstance(row[key], float), key
    with open(trained / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[1]["val_loss"]) == pytest.approx(history[1]["val_loss"])

    report = json.loads((trained / "report.json").read_text())
    assert report["samples"] == 50
    assert numpy.asarray(report["confusion_matrix"]).sum() == 50
    assert len(report["per_class"]) == 10
    assert {"precision", "recall", "f1", "support"} <= set(report["per_class"][0])
    assert report["accuracy"] > 0.3  # synthetic classes are easy
    text = (trained / "report.txt").read_text()
    assert f"{report['accuracy']:.4f}" in text and "confusion matrix" in text
    for png in ("curves.png", "confusion.png"):
        assert (trained / png).read_bytes()[:8] == PNG_MAGIC


def test_train_prints_progress_and_summary(cifar_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(cifar_dir), "--epochs", "1", "--out", str(out),
            "--limit", "64", *[a for a in BASE if a != "--quiet"]]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "Epoch 1/1" in captured.out + captured.err
    assert "lr=" in captured.out + captured.err
    assert "test accuracy" in captured.out and str(out) in captured.out
    assert json.loads((out / "config.json").read_text())["data"]["train"] == 64


def test_resume_continues_from_the_checkpoint(cifar_dir, trained, tmp_path, capsys):
    run = tmp_path / "resumed"
    shutil.copytree(trained, run)
    before = _history(trained)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    after = _history(run)
    assert [r["epoch"] for r in after] == [1, 2, 3]
    assert after[:2] == before
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["epochs"] == 3 and len(config["resumed"]) == 1

    # the same 3 epochs in one go give the same numbers (CPU runs are deterministic)
    straight = tmp_path / "straight"
    assert main(["train", "--data-dir", str(cifar_dir), "--epochs", "3", "--out",
                 str(straight), *BASE]) == 0
    assert _history(straight)[2]["loss"] == pytest.approx(after[2]["loss"], rel=1e-5)
    assert _history(straight)[2]["val_loss"] == pytest.approx(after[2]["val_loss"], rel=1e-5)


def test_resume_refuses_other_settings_and_missing_runs(trained, tmp_path, capsys):
    assert main(["train", "--resume", str(trained), "--lr", "0.5"]) == 2
    assert "--lr" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["train", "--out", str(trained), "--device", "cpu"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(cifar_dir, tmp_path, monkeypatch,
                                                          capsys):
    original = loop._Run.train_epoch

    def interrupted(self, epoch, stats, progress):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, stats, progress)

    monkeypatch.setattr(loop._Run, "train_epoch", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(cifar_dir), "--epochs", "3", "--out", str(out),
                 *BASE]) == 130
    err = capsys.readouterr().err
    assert f"gpuconv train --resume {out}" in err
    assert (out / "checkpoint.npz").is_file() and len(_history(out)) == 1
    assert not (out / "report.json").exists()
    monkeypatch.setattr(loop._Run, "train_epoch", original)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert [r["epoch"] for r in _history(out)] == [1, 2, 3]
    assert (out / "report.json").is_file()


def test_other_optimizers_schedules_and_options(cifar_dir, tmp_path):
    cases = [["--optimizer", "sgd", "--schedule", "onecycle", "--augment", "full",
              "--val-split", "0"],
             ["--optimizer", "adamw", "--schedule", "cosine", "--augment", "none",
              "--dtype", "float64", "--monitor", "val_loss"],
             ["--optimizer", "rmsprop", "--schedule", "step", "--step-size", "1", "--lr",
              "1e-4", "--patience", "0", "--val-split", "0.2"]]
    for i, extra in enumerate(cases):
        out = tmp_path / f"run{i}"
        args = ["train", "--data-dir", str(cifar_dir), "--epochs", "2", "--limit", "64",
                "--out", str(out), *BASE, *extra]
        assert main(args) == 0, extra
        history = _history(out)
        assert len(history) == 2
        if "step" in extra:
            assert history[1]["lr"] == pytest.approx(1e-5)
        if "--val-split" in extra and extra[extra.index("--val-split") + 1] == "0":
            assert history[0]["val_loss"] is None
    model = load_model(tmp_path / "run1" / "model.npz")
    assert model.dtype == numpy.float64


def test_binary_layout_and_default_run_folder(tmp_path, monkeypatch):
    data = write_cifar(tmp_path / "bin", n_train=100, n_test=20, layout="bin")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUCONV_DATA", str(data))
    assert main(["train", "--epochs", "1", "--model", "tiny-cnn", "--device", "cpu",
                 "--val-split", "20", "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-tiny-cnn")
    assert json.loads((run / "config.json").read_text())["data"]["layout"] == "bin"


# ---- evaluate and predict ----------------------------------------------------------------
@pytest.mark.parametrize("target", ["run folder", "model.npz", "checkpoint.npz"])
def test_evaluate(trained, cifar_dir, target, capsys):
    path = trained if target == "run folder" else trained / target
    assert main(["evaluate", str(path), "--data-dir", str(cifar_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "confusion matrix" in out and "truck" in out
    if target != "checkpoint.npz":  # the run's best model: same numbers as the run report
        report = json.loads((trained / "report.json").read_text())
        assert f"accuracy: {report['accuracy']:.4f}" in out


def test_evaluate_json_and_out(trained, cifar_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", str(trained / "model.npz"), "--data-dir", str(cifar_dir),
                 "--device", "cpu", "--json", "--limit", "20", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 20
    assert (out / "report.json").is_file() and (out / "report.txt").is_file()


def test_evaluate_with_tta_scores_the_averaged_logits(trained, cifar_dir, capsys):
    import numpy
    from gpuconv.backend import to_device, to_numpy
    from gpuconv.data import CIFAR10
    from gpuconv.data.datasets.cifar import CIFAR10_MEAN, CIFAR10_STD
    assert main(["evaluate", str(trained / "model.npz"), "--data-dir", str(cifar_dir),
                 "--device", "cpu", "--json", "--limit", "30", "--tta"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tta"] == 2 and report["samples"] == 30
    test = CIFAR10(cifar_dir, train=False)
    x = (test.images[:30].astype(numpy.float32) / 255
         - numpy.array(CIFAR10_MEAN, numpy.float32)[:, None, None]) \
        / numpy.array(CIFAR10_STD, numpy.float32)[:, None, None]
    model = load_model(trained / "model.npz")
    logits = to_numpy(model.predict(to_device(x.astype(numpy.float32), "cpu"), tta=True))
    assert report["accuracy"] == pytest.approx(numpy.mean(logits.argmax(1) == test.labels[:30]))


def test_evaluate_bad_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["evaluate", str(bad), "--device", "cpu"]) == 2
    assert "cannot load" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.npz")]) == 2


def test_predict_npy_and_png(trained, tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    x, y = make_images(4, seed=7)
    numpy.save(tmp_path / "chw.npy", x[0])
    numpy.save(tmp_path / "hwc_float.npy", x[1].transpose(1, 2, 0).astype(numpy.float32) / 255)
    numpy.save(tmp_path / "batch.npy", x[2:4])
    pil.fromarray(x[0].transpose(1, 2, 0)).save(tmp_path / "img.png")
    pil.fromarray(x[0].transpose(1, 2, 0)).resize((64, 48)).save(tmp_path / "big.jpg")
    files = [str(tmp_path / n) for n in ("chw.npy", "hwc_float.npy", "batch.npy", "img.png",
                                          "big.jpg")]
    assert main(["predict", str(trained / "model.npz"), *files, "--device", "cpu",
                 "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and lines[0].startswith(files[0]) and "%" in lines[0]

    assert main(["predict", str(trained), *files, "--device", "cpu", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [len(r["top"]) for r in results] == [3] * 6
    probs = [t["probability"] for t in results[0]["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
    # the PNG of the same pixels gives the same prediction as the .npy
    assert results[4]["top"] == results[0]["top"]


def test_predict_errors(trained, tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hi")
    assert main(["predict", str(trained), str(tmp_path / "x.txt"), "--device", "cpu"]) == 2
    assert "unsupported file type" in capsys.readouterr().err
    numpy.save(tmp_path / "bad.npy", numpy.zeros((5, 5), numpy.uint8))
    assert main(["predict", str(trained), str(tmp_path / "bad.npy"), "--device", "cpu"]) == 2
    assert "(3, H, W)" in capsys.readouterr().err


def test_train_evaluate_predict_on_the_strict_fake_gpu(cifar_dir, tmp_path, capsys):
    """The whole CLI path on the strict fake CuPy: no hidden host/device mixing
    (resnet-small exercises Residual, --augment full every augmentation)."""
    import fakecupy  # noqa: PLC0415 - registered by conftest; re-register to be safe

    fakecupy.register()
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(cifar_dir), "--device", fakecupy.DEVICE,
                 "--model", "resnet-small", "--val-split", "40", "--epochs", "1", "--limit",
                 "64", "--batch-size", "32", "--augment", "full", "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["device"].startswith(fakecupy.DEVICE)
    assert main(["evaluate", str(out), "--device", fakecupy.DEVICE, "--limit", "20"]) == 0
    numpy.save(tmp_path / "x.npy", make_images(1, seed=3)[0][0])
    assert main(["predict", str(out), str(tmp_path / "x.npy"), "--device",
                 fakecupy.DEVICE]) == 0
    assert "x.npy" in capsys.readouterr().out


def test_validation_split_is_deterministic_and_disjoint():
    from gpuconv.cli.common import split_indices  # noqa: PLC0415

    train, val = split_indices(100, 10, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert not set(train) & set(val)
    again_train, again_val = split_indices(100, 10, seed=3, limit=20)
    assert list(again_val) == list(val) and len(again_train) == 20
    assert set(again_train) <= set(train)
    assert list(split_indices(100, 10, seed=4)[1]) != list(val)


def test_sigterm_saves_a_checkpoint_like_ctrl_c(cifar_dir, tmp_path):
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gpuconv", "train", "--data-dir",
                             str(cifar_dir), "--epochs", "500", "--out", str(out), *BASE],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"gpuconv train --resume {out}" in err and "Traceback" not in err
    assert len(_history(out)) < 500
