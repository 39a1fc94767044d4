"""model.save / gpuconv.load_model: round trips, devices, dtypes, and hostile files."""
from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy
import pytest

import gpuconv
from gpuconv.backend import device_of, get_device, to_device, to_numpy
from gpuconv.layers import (AvgPool2D, BatchNorm1d, BatchNorm2d, Conv2D, Dense, Dropout, Flatten,
                            GlobalAvgPool2D, LeakyReLU, MaxPool2D, ReLU, Residual)
from gpuconv.io.npzfile import json_array, read_json


def residual_net(dtype="float32") -> gpuconv.Sequential:
    """Conv/BN/ReLU, a Residual with a projection shortcut, a nested Sequential, a head."""
    block = Residual([Conv2D(4, 8, 3, stride=2, padding=1, dtype=dtype),
                      BatchNorm2d(8, dtype=dtype), ReLU(),
                      Conv2D(8, 8, 3, padding="same", dtype=dtype)],
                     shortcut=[Conv2D(4, 8, 1, stride=2, bias=False, dtype=dtype),
                               BatchNorm2d(8, dtype=dtype)])
    inner = gpuconv.Sequential([LeakyReLU(0.1), AvgPool2D(2)])
    return gpuconv.Sequential([
        Conv2D(3, 4, 3, padding=1, dtype=dtype, weight_init="XavierUniform"),
        BatchNorm2d(4, momentum=0.2, dtype=dtype), ReLU(), MaxPool2D(2, stride=1, padding=1),
        block, inner, GlobalAvgPool2D(), Flatten(), Dropout(0.25),
        Dense(8, 6, dtype=dtype), BatchNorm1d(6, dtype=dtype), Dense(6, 3, dtype=dtype)])


def trained(model, dtype="float32"):
    """Randomise BN statistics (a few training-mode forwards) so buffers matter."""
    rng = numpy.random.default_rng(1)
    for _ in range(3):
        model.forward(to_device(rng.normal(size=(4, 3, 9, 9)).astype(dtype), model.device))
    model.clear_cache()
    return model


def sample(dtype="float32"):
    return numpy.random.default_rng(2).normal(size=(5, 3, 9, 9)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_identical_predictions_and_dtype(tmp_path, dtype):
    model = trained(residual_net(dtype), dtype)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = gpuconv.load_model(path)
    assert isinstance(loaded, gpuconv.Sequential)
    assert loaded.dtype == numpy.dtype(dtype) and loaded[1].running_mean.dtype == dtype
    assert loaded.config() == model.config()
    x = sample(dtype)
    numpy.testing.assert_array_equal(to_numpy(loaded.predict(x)), to_numpy(model.predict(x)))
    for key, value in model.state_dict().items():
        numpy.testing.assert_array_equal(to_numpy(loaded.state_dict()[key]), to_numpy(value))
    assert loaded[0].weight_init.__class__.__name__ == "XavierUniform"
    assert loaded[3].stride == (1, 1) and loaded[4].shortcut[0].use_bias is False


def test_file_layout_is_plain_arrays_and_json(tmp_path):
    model = residual_net()
    model.save(tmp_path / "m.npz")
    with numpy.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    assert all(a.dtype != object for a in arrays.values())
    assert "param/0.weight" in arrays and "buffer/1.running_mean" in arrays
    assert "param/4.shortcut.0.weight" in arrays and "buffer/4.body.1.running_var" in arrays
    arch = json.loads(arrays["architecture"].tobytes().decode())
    assert arch["format"] == "gpuconv-model" and arch["version"] == 1
    assert arch["dtype"] == "float32"
    assert arch["layers"][4]["type"] == "Residual"
    assert [s["type"] for s in arch["layers"][4]["config"]["shortcut"]] == ["Conv2D",
                                                                           "BatchNorm2d"]
    assert arch["layers"][5] == {"type": "Sequential", "config": {"layers": [
        {"type": "LeakyReLU", "config": {"negative_slope": 0.1}},
        {"type": "AvgPool2D", "config": {"kernel_size": [2, 2], "stride": [2, 2],
                                         "padding": [0, 0]}}]}}
    assert os.listdir(tmp_path) == ["m.npz"]  # the temporary file was renamed away


def test_save_on_fakecupy_load_on_cpu_and_back(tmp_path):
    model = trained(residual_net().to("fakecupy"))
    model.save(tmp_path / "gpu.npz")
    x = sample()
    expected = to_numpy(model.predict(to_device(x, "fakecupy")))
    on_cpu = gpuconv.load_model(tmp_path / "gpu.npz")
    assert on_cpu.device == get_device("cpu")
    numpy.testing.assert_allclose(to_numpy(on_cpu.predict(x)), expected, rtol=1e-6, atol=1e-6)
    on_cpu.save(tmp_path / "cpu.npz")
    back = gpuconv.load_model(tmp_path / "cpu.npz", device="fakecupy")
    out = back.predict(to_device(x, "fakecupy"))
    assert device_of(out) == get_device("fakecupy")
    numpy.testing.assert_allclose(to_numpy(out), expected, rtol=1e-6, atol=1e-6)


def test_overwrite_existing_file(tmp_path):
    path = tmp_path / "m.npz"
    first = gpuconv.Sequential([Dense(2, 2)])
    first.save(path)
    second = gpuconv.Sequential([Dense(2, 3)])
    second.save(path)
    assert gpuconv.load_model(path)[0].out_features == 3


def test_custom_layer_cannot_be_saved(tmp_path):
    class Custom(ReLU):
        pass

    with pytest.raises(TypeError, match="not a registered layer type"):
        gpuconv.Sequential([Dense(2, 2), Custom()]).save(tmp_path / "m.npz")
    assert not os.path.exists(tmp_path / "m.npz")


# ---- hostile and damaged files --------------------------------------------------------

class CreatesFile:
    """Unpickling this object creates ``path`` (what a malicious payload would do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def good_arrays(tmp_path) -> dict[str, numpy.ndarray]:
    gpuconv.Sequential([Dense(3, 2), ReLU()]).save(tmp_path / "good.npz")
    with numpy.load(tmp_path / "good.npz") as archive:
        return {k: archive[k] for k in archive.files}


def test_object_array_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    arrays = good_arrays(tmp_path)
    arrays["param/0.weight"] = numpy.array([CreatesFile(str(marker))], dtype=object)
    numpy.savez(tmp_path / "evil.npz", **arrays)  # numpy pickles the object array
    with pytest.raises(ValueError, match=r"evil\.npz.*param/0\.weight.*refused"):
        gpuconv.load_model(tmp_path / "evil.npz")
    assert not marker.exists()


def test_pickle_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(CreatesFile(str(marker))))
    with pytest.raises(ValueError, match=r"evil\.npz.*refused"):
        gpuconv.load_model(path)
    assert not marker.exists()


def test_non_npy_member_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    arrays = good_arrays(tmp_path)
    numpy.savez(tmp_path / "evil.npz", **arrays)
    with zipfile.ZipFile(tmp_path / "evil.npz", "a") as z:
        z.writestr("payload.pkl", pickle.dumps(CreatesFile(str(marker))))
    with pytest.raises(ValueError, match=r"payload\.pkl.*not a \.npy array"):
        gpuconv.load_model(tmp_path / "evil.npz")
    assert not marker.exists()


def test_bare_npy_and_missing_file(tmp_path):
    numpy.save(tmp_path / "a.npy", numpy.zeros(3))
    with pytest.raises(ValueError, match="not an .npz"):
        gpuconv.load_model(tmp_path / "a.npy")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        gpuconv.load_model(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        gpuconv.load_model(tmp_path / "junk.npz")


def rewrite(tmp_path, arrays, arch=None) -> str:
    if arch is not None:
        arrays = dict(arrays, architecture=json_array(arch))
    path = str(tmp_path / "tampered.npz")
    numpy.savez(path, **arrays)
    return path


@pytest.mark.parametrize("kind", ["EvilLayer", "os.system", "__import__", "Layer", 3])
def test_unknown_layer_type_is_refused(tmp_path, kind):
    arrays = good_arrays(tmp_path)
    arch = read_json(arrays["architecture"], "arch")
    arch["layers"][1]["type"] = kind
    path = rewrite(tmp_path, arrays, arch)
    with pytest.raises(ValueError, match=r"tampered\.npz.*layers\[1\]: unknown layer type"):
        gpuconv.load_model(path)


def test_nested_unknown_type_and_bad_config(tmp_path):
    model = gpuconv.Sequential([Residual([Dense(2, 2)])])
    model.save(tmp_path / "r.npz")
    with numpy.load(tmp_path / "r.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    arch = read_json(arrays["architecture"], "arch")
    arch["layers"][0]["config"]["body"][0]["type"] = "Evil"
    with pytest.raises(ValueError, match=r"layers\[0\] \(Residual\)\.body\[0\]: unknown"):
        gpuconv.load_model(rewrite(tmp_path, arrays, arch))
    arch["layers"][0]["config"]["body"][0] = {"type": "Dense",
                                               "config": {"in_features": 2, "evil": 1}}
    with pytest.raises(ValueError, match=r"body\[0\] \(Dense\): invalid config"):
        gpuconv.load_model(rewrite(tmp_path, arrays, arch))
    for bad in ({"format": "other", "version": 1, "layers": []},
                {"format": "gpuconv-model", "version": 99, "layers": []},
                {"format": "gpuconv-model", "version": 1, "dtype": "int8", "layers": []}):
        with pytest.raises(ValueError, match="tampered.npz"):
            gpuconv.load_model(rewrite(tmp_path, arrays, bad))
    arrays["architecture"] = numpy.frombuffer(b"{not json", dtype=numpy.uint8)
    with pytest.raises(ValueError, match="invalid JSON"):
        gpuconv.load_model(rewrite(tmp_path, arrays))


def test_tampered_shapes_dtypes_and_entries(tmp_path):
    arrays = good_arrays(tmp_path)
    bad = dict(arrays, **{"param/0.weight": numpy.zeros((4, 2), numpy.float32)})
    with pytest.raises(ValueError, match=r"'param/0\.weight' has shape \(4, 2\).*needs \(3, 2\)"):
        gpuconv.load_model(rewrite(tmp_path, bad))
    bad = dict(arrays, **{"param/0.bias": numpy.zeros(2, numpy.float64)})
    with pytest.raises(ValueError, match=r"'param/0\.bias' has dtype float64"):
        gpuconv.load_model(rewrite(tmp_path, bad))
    bad = {k: v for k, v in arrays.items() if k != "param/0.bias"}
    with pytest.raises(ValueError, match=r"missing \['param/0\.bias'\]"):
        gpuconv.load_model(rewrite(tmp_path, bad))
    bad = dict(arrays, **{"param/7.weight": numpy.zeros(2, numpy.float32)})
    with pytest.raises(ValueError, match=r"unexpected \['param/7\.weight'\]"):
        gpuconv.load_model(rewrite(tmp_path, bad))
    bad = dict(arrays, something=numpy.zeros(1))
    with pytest.raises(ValueError, match=r"unexpected entries \['something'\]"):
        gpuconv.load_model(rewrite(tmp_path, bad))
    bad = {k: v for k, v in arrays.items() if k != "architecture"}
    with pytest.raises(ValueError, match="no 'architecture' entry"):
        gpuconv.load_model(rewrite(tmp_path, bad))
