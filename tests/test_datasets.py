"""Datasets: CIFAR-10 in both official layouts (synthetic files written here,
plus the real data when ../shared is present), restricted unpickling, download
(file://, a local HTTP server, bad checksum, offline, hostile archives), MNIST
IDX files, ArrayDataset."""
from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

import gpuconv
from gpuconv.data.datasets import (
    CIFAR10,
    CIFAR10_CLASSES,
    MNIST,
    ArrayDataset,
    CorruptDatasetError,
    DatasetNotFoundError,
    DownloadError,
    FashionMNIST,
    UnsafePickleError,
    default_root,
    load_pickle,
)

TRAIN = [f"data_batch_{k}" for k in range(1, 6)]


# ---------------------------------------------------------------------------
# synthetic CIFAR-10 files
# ---------------------------------------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as the official CIFAR pickles do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes


def _dump(obj, path, style):
    """style: 'py2' (official), 'p2' (Python 3 protocol 2: bytes via _codecs.encode),
    'p5' (protocol 5, bytes keys), 'str' (protocol 4, str keys)."""
    if style == "str":
        obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    buf = io.BytesIO()
    if style == "py2":
        _Py2Pickler(buf, protocol=2).dump(obj)
    else:
        pickle.dump(obj, buf, protocol={"p2": 2, "p5": 5, "str": 4}[style])
    Path(path).write_bytes(buf.getvalue())


def make_split(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    return images, labels


def write_cifar(root, n=6, layouts=("py", "bin"), style="py2", classes=CIFAR10_CLASSES):
    """Write a small CIFAR-10 (5 train batches of n, a test batch of n+1) in the
    given layouts; return {'train': (images, labels), 'test': (...)}."""
    root = Path(root)
    parts = {name: make_split(n if name != "test_batch" else n + 1, k)
             for k, name in enumerate(TRAIN + ["test_batch"])}
    if "py" in layouts:
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True, exist_ok=True)
        for name, (images, labels) in parts.items():
            _dump({b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                   b"data": images.reshape(len(images), -1),
                   b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))]},
                  d / name, style)
        # no num_cases_per_batch: the test batch holds n + 1 (a count there is checked)
        _dump({b"label_names": [c.encode() for c in classes], b"num_vis": 3072},
              d / "batches.meta", style)
    if "bin" in layouts:
        d = root / "cifar-10-batches-bin"
        d.mkdir(parents=True, exist_ok=True)
        for name, (images, labels) in parts.items():
            rec = np.concatenate([labels.astype(np.uint8)[:, None],
                                  images.reshape(len(images), -1)], axis=1)
            rec.tofile(d / (name + ".bin"))
        (d / "batches.meta.txt").write_text("\n".join(classes) + "\n\n")
    train = (np.concatenate([parts[k][0] for k in TRAIN]),
             np.concatenate([parts[k][1] for k in TRAIN]))
    return {"train": train, "test": parts["test_batch"]}


def _check_matches(ds, expected):
    images, labels = expected
    assert ds.images.dtype == np.uint8 and ds.images.shape == images.shape
    assert ds.labels.dtype == np.int64 and ds.labels.shape == labels.shape
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert len(ds) == len(labels)


@pytest.mark.parametrize("style", ["py2", "p2", "p5", "str"])
def test_cifar_python_layout(tmp_path, style):
    want = write_cifar(tmp_path, layouts=("py",), style=style)
    train = CIFAR10(tmp_path, train=True)
    test = CIFAR10(tmp_path, train=False)
    assert train.layout == "py"
    _check_matches(train, want["train"])
    _check_matches(test, want["test"])
    assert train.classes == CIFAR10_CLASSES
    img, lab = train[3]
    assert img.shape == (3, 32, 32) and lab == want["train"][1][3]


def test_cifar_binary_layout_matches_python(tmp_path):
    classes = [f"c{k}" for k in range(10)]
    want = write_cifar(tmp_path, classes=classes)
    for train in (True, False):
        auto = CIFAR10(tmp_path, train=train)
        binary = CIFAR10(tmp_path, train=train, layout="bin")
        assert auto.layout == "py" and binary.layout == "bin"
        _check_matches(binary, want["train" if train else "test"])
        np.testing.assert_array_equal(auto.images, binary.images)
        np.testing.assert_array_equal(auto.labels, binary.labels)
        assert auto.classes == binary.classes == classes


def test_cifar_binary_only_and_root_forms(tmp_path, monkeypatch):
    want = write_cifar(tmp_path, layouts=("bin",))
    assert CIFAR10(tmp_path).layout == "bin"
    # the batches folder itself is accepted as root
    _check_matches(CIFAR10(tmp_path / "cifar-10-batches-bin", train=False), want["test"])
    # root from GPUCONV_DATA
    monkeypatch.setenv("GPUCONV_DATA", str(tmp_path))
    _check_matches(CIFAR10(), want["train"])
    with pytest.raises(DatasetNotFoundError, match="not found"):
        CIFAR10(tmp_path, layout="py")


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUCONV_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_root() == tmp_path / ".cache" / "gpuconv"
    monkeypatch.setenv("GPUCONV_DATA", str(tmp_path / "d"))
    assert default_root() == tmp_path / "d"


def test_cifar_missing_meta_uses_official_names(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    (tmp_path / "cifar-10-batches-bin" / "batches.meta.txt").unlink()
    assert CIFAR10(tmp_path).classes == CIFAR10_CLASSES
    assert CIFAR10(tmp_path, layout="bin").classes == CIFAR10_CLASSES


def test_cifar_not_found_says_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        CIFAR10(tmp_path / "nothing")
    msg = str(err.value)
    assert str(tmp_path / "nothing" / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "download=True" in msg and "GPUCONV_DATA" in msg


@pytest.mark.parametrize("layout,name", [("py", "data_batch_3"), ("bin", "data_batch_3.bin")])
def test_cifar_missing_batch_file_is_an_error(tmp_path, layout, name):
    write_cifar(tmp_path, layouts=(layout,))
    folder = tmp_path / f"cifar-10-batches-{layout}"
    (folder / name).unlink()
    with pytest.raises(DatasetNotFoundError, match=name):
        CIFAR10(tmp_path)
    # the test split does not need that file
    assert len(CIFAR10(tmp_path, train=False)) == 7


def test_cifar_truncated_binary_file(tmp_path):
    write_cifar(tmp_path, layouts=("bin",))
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptDatasetError, match="data_batch_2.bin.*whole number"):
        CIFAR10(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(CorruptDatasetError, match="data_batch_2.bin"):
        CIFAR10(tmp_path)


def test_cifar_bad_label_in_binary_file(tmp_path):
    write_cifar(tmp_path, layouts=("bin",))
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[3073] = 200  # label byte of record 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptDatasetError, match="test_batch.bin.*0..9"):
        CIFAR10(tmp_path, train=False)


def test_cifar_truncated_pickle(tmp_path):
    write_cifar(tmp_path, layouts=("py",))
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CorruptDatasetError, match="data_batch_4: truncated or not a CIFAR-10 "
                       "pickle"):
        CIFAR10(tmp_path)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.__setitem__(b"labels", d[b"labels"][:-1]), "6 images but 5 labels"),
    (lambda d: d.__setitem__(b"data", d[b"data"][:, :100]), "uint8"),
    (lambda d: d.__setitem__(b"data", d[b"data"].astype(np.int16)), "uint8"),
    (lambda d: d.pop(b"labels"), "labels"),
    (lambda d: d.__setitem__(b"labels", [0, 1, 2, 3, 4, 11]), "0..9"),
    (lambda d: d.__setitem__(b"data", d[b"data"][:0]) or d.__setitem__(b"labels", []),
     "no images"),
])
def test_cifar_inconsistent_pickle(tmp_path, mutate, match):
    write_cifar(tmp_path, layouts=("py",))
    path = tmp_path / "cifar-10-batches-py" / "data_batch_5"
    batch = load_pickle(path, encoding="bytes")
    mutate(batch)
    _dump(batch, path, "p2")
    with pytest.raises(CorruptDatasetError, match=match) as err:
        CIFAR10(tmp_path)
    assert "data_batch_5" in str(err.value)


def test_cifar_pickle_not_a_dict(tmp_path):
    write_cifar(tmp_path, layouts=("py",))
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    _dump([1, 2, 3], path, "p2")
    with pytest.raises(CorruptDatasetError, match="test_batch.*dict"):
        CIFAR10(tmp_path, train=False)


# ---------------------------------------------------------------------------
# hostile pickles
# ---------------------------------------------------------------------------

class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("where", ["top", "data", "meta"])
def test_hostile_pickle_executes_nothing(tmp_path, where):
    write_cifar(tmp_path, layouts=("py",))
    marker = tmp_path / "pwned"
    evil = _Evil(os.system, f"touch {marker}")
    folder = tmp_path / "cifar-10-batches-py"
    target = folder / ("batches.meta" if where == "meta" else "data_batch_1")
    if where == "top":
        payload = evil
    else:
        payload = load_pickle(target, encoding="bytes")
        payload[b"label_names" if where == "meta" else b"data"] = evil
    target.write_bytes(pickle.dumps(payload, protocol=2))
    # the payload is live: plain pickle would run it
    assert b"system" in target.read_bytes()
    with pytest.raises(CorruptDatasetError) as err:  # the refusal, as a dataset error
        CIFAR10(tmp_path)
    assert str(target) in str(err.value)
    assert "refused an unsafe pickle" in str(err.value) and "system" in str(err.value)
    assert isinstance(err.value.__cause__, UnsafePickleError)
    assert not marker.exists()


@pytest.mark.parametrize("func,args", [
    (eval, ("1+1",)),
    (getattr, (str, "upper")),
    (__import__, ("os",)),
    (open, ("/etc/hostname",)),
])
def test_restricted_unpickler_refuses_builtins(tmp_path, func, args):
    path = tmp_path / "f"
    path.write_bytes(pickle.dumps({"x": _Evil(func, *args)}, protocol=4))
    with pytest.raises(UnsafePickleError, match=str(path)):
        load_pickle(path)


def test_restricted_codecs_encode_only_latin1(tmp_path):
    import codecs
    path = tmp_path / "f"
    path.write_bytes(pickle.dumps(_Evil(codecs.encode, "abc", "rot13"), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="latin1"):
        load_pickle(path)
    path.write_bytes(pickle.dumps(b"\x00\xff", protocol=2))  # uses _codecs.encode(.., latin1)
    assert load_pickle(path) == b"\x00\xff"


# ---------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------

def _make_archive(tmp_path, layout="py", extra=None):
    """A small tar.gz shaped like the official archive; returns (path, md5, expected)."""
    src = tmp_path / "src"
    want = write_cifar(src, layouts=(layout,))
    archive = tmp_path / "serve" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / f"cifar-10-batches-{layout}", arcname=f"cifar-10-batches-{layout}")
        if extra is not None:
            extra(tar)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    return archive, md5, want


def _no_leftovers(root):
    names = [p.name for p in Path(root).iterdir()]
    assert not [n for n in names if n.startswith(".extract-") or n.endswith(".part")], names


def test_download_from_file_url(tmp_path):
    archive, md5, want = _make_archive(tmp_path)
    root = tmp_path / "data"
    ds = CIFAR10(root, train=True, download=True, url=archive.as_uri(), md5=md5)
    _check_matches(ds, want["train"])
    assert (root / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert (root / "cifar-10-python.tar.gz").is_file()
    _no_leftovers(root)
    # present now: no second download (this URL would fail)
    again = CIFAR10(root, train=False, download=True, url="http://127.0.0.1:9/none", md5=md5)
    _check_matches(again, want["test"])


def test_download_binary_archive(tmp_path):
    archive, md5, want = _make_archive(tmp_path, layout="bin")
    root = tmp_path / "data"
    ds = CIFAR10(root, download=True, url=archive.as_uri(), md5=md5)
    assert ds.layout == "bin"
    _check_matches(ds, want["train"])


def test_download_url_md5_class_attributes(tmp_path, monkeypatch):
    archive, md5, want = _make_archive(tmp_path)
    monkeypatch.setattr(CIFAR10, "url", archive.as_uri())
    monkeypatch.setattr(CIFAR10, "md5", md5)
    _check_matches(CIFAR10(tmp_path / "data", train=False, download=True), want["test"])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """(serve_dir, base_url) of an HTTP server on 127.0.0.1 in a thread."""
    serve = tmp_path / "serve"
    serve.mkdir(exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(serve))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield serve, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_download_over_http(tmp_path, http_root):
    serve, base = http_root
    archive, md5, want = _make_archive(tmp_path)
    assert archive.parent == serve
    root = tmp_path / "data"
    ds = CIFAR10(root, train=False, download=True, url=f"{base}/{archive.name}", md5=md5)
    _check_matches(ds, want["test"])
    _no_leftovers(root)


def test_download_bad_checksum(tmp_path, http_root):
    serve, base = http_root
    archive, md5, _ = _make_archive(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as err:
        CIFAR10(root, download=True, url=f"{base}/{archive.name}", md5="0" * 32)
    msg = str(err.value)
    assert "checksum mismatch" in msg and md5 in msg
    assert str(root / "cifar-10-batches-py" / "data_batch_1") in msg  # where to put files
    assert not (root / "cifar-10-batches-py").exists()
    assert not (root / "cifar-10-python.tar.gz").exists()
    _no_leftovers(root)


def test_download_http_404(tmp_path, http_root):
    _, base = http_root
    with pytest.raises(DownloadError, match="could not download.*404|404.*"):
        CIFAR10(tmp_path / "data", download=True, url=f"{base}/missing.tar.gz", md5=None)


def test_download_offline(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as err:
        CIFAR10(root, download=True, url=f"http://127.0.0.1:{port}/cifar.tar.gz")
    msg = str(err.value)
    assert "could not download" in msg
    assert "cifar-10-python.tar.gz" in msg and str(root) in msg
    assert isinstance(err.value, DatasetNotFoundError)
    _no_leftovers(root)


def _add_bytes(tar, name, data=b"x", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in fields.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_download_refuses_hostile_archive(tmp_path, kind):
    outside = tmp_path / "escaped"

    def extra(tar):
        if kind == "dotdot":
            _add_bytes(tar, "cifar-10-batches-py/../../escaped")
        elif kind == "absolute":
            _add_bytes(tar, str(outside))
        elif kind == "symlink":
            _add_bytes(tar, "cifar-10-batches-py/link", b"", type=tarfile.SYMTYPE,
                       linkname=str(outside))
        else:
            _add_bytes(tar, "cifar-10-batches-py/link", b"", type=tarfile.LNKTYPE,
                       linkname="/etc/passwd")

    archive, md5, _ = _make_archive(tmp_path, extra=extra)
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="refusing to extract"):
        CIFAR10(root, download=True, url=archive.as_uri(), md5=md5)
    assert not outside.exists()
    assert not (root / "cifar-10-batches-py").exists()
    _no_leftovers(root)


def test_download_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar archive at all" * 10)
    md5 = hashlib.md5(bad.read_bytes()).hexdigest()
    with pytest.raises(DownloadError, match="not a readable tar"):
        CIFAR10(tmp_path / "data", download=True, url=bad.as_uri(), md5=md5)


# ---------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------

def _idx(array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder, n_train=9, n_test=4, hw=(28, 28), gz=False, num_classes=10):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, *hw), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=n).astype(np.uint8)
        for name, data in ((f"{prefix}-images-idx3-ubyte", _idx(images, 2051)),
                           (f"{prefix}-labels-idx1-ubyte", _idx(labels, 2049))):
            if gz:
                with gzip.open(folder / (name + ".gz"), "wb") as f:
                    f.write(data)
            else:
                (folder / name).write_bytes(data)
        out[prefix] = (images[:, None], labels.astype(np.int64))
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_mnist(tmp_path, gz):
    want = write_mnist(tmp_path, gz=gz)
    train, test = MNIST(tmp_path), MNIST(tmp_path, train=False)
    _check_matches(train, want["train"])
    _check_matches(test, want["t10k"])
    assert train.images.shape == (9, 1, 28, 28)
    assert train.classes == [str(k) for k in range(10)]


def test_mnist_default_root_and_fashion(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCONV_DATA", str(tmp_path))
    want = write_mnist(tmp_path / "fashion-mnist", hw=(20, 24), gz=True)
    ds = FashionMNIST(train=False, image_size=(20, 24))
    _check_matches(ds, want["t10k"])
    assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
    write_mnist(tmp_path / "mnist")
    assert len(MNIST()) == 9


def test_mnist_class_override(tmp_path):
    write_mnist(tmp_path, num_classes=3)
    assert MNIST(tmp_path, classes=["a", "b", "c"]).classes == ["a", "b", "c"]
    with pytest.raises(CorruptDatasetError, match="classes"):
        MNIST(tmp_path, classes=["a", "b"])


def test_mnist_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        MNIST(tmp_path)
    write_mnist(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte"
    lab = tmp_path / "train-labels-idx1-ubyte"
    good = img.read_bytes()
    img.write_bytes(good[:-5])
    with pytest.raises(CorruptDatasetError, match="train-images-idx3-ubyte.*truncated"):
        MNIST(tmp_path)
    img.write_bytes(good + b"\0")
    with pytest.raises(CorruptDatasetError, match="train-images-idx3-ubyte"):
        MNIST(tmp_path)
    img.write_bytes(lab.read_bytes())  # labels where images belong: wrong magic
    with pytest.raises(CorruptDatasetError, match="magic number 2049, expected 2051"):
        MNIST(tmp_path)
    img.write_bytes(good)
    lab.write_bytes(_idx(np.zeros(8, np.uint8), 2049))  # 9 images, 8 labels
    with pytest.raises(CorruptDatasetError, match="9 images.*8 labels"):
        MNIST(tmp_path)


def test_mnist_truncated_gzip(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptDatasetError, match="t10k-images-idx3-ubyte.gz"):
        MNIST(tmp_path, train=False)


# ---------------------------------------------------------------------------
# ArrayDataset
# ---------------------------------------------------------------------------

def test_array_dataset():
    images = np.zeros((5, 1, 4, 4), np.uint8)
    ds = ArrayDataset(images, [0, 2, 1, 2, 0])
    assert ds.labels.dtype == np.int64 and ds.classes == ["0", "1", "2"] and len(ds) == 5
    x, y = ds[np.array([1, 3])]
    assert x.shape == (2, 1, 4, 4) and list(y) == [2, 2]
    ArrayDataset(images.astype(np.float32), [0] * 5, ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        ArrayDataset(images, [0, 2, 1, 2, 0], ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie"):
        ArrayDataset(images, [0, -1, 1, 1, 0])
    with pytest.raises(ValueError, match="shape"):
        ArrayDataset(images[:, 0], [0] * 5)
    with pytest.raises(ValueError, match="labels must have shape"):
        ArrayDataset(images, [0] * 4)
    with pytest.raises(TypeError, match="uint8 or floating"):
        ArrayDataset(images.astype(np.int32), [0] * 5)
    with pytest.raises(TypeError, match="integers"):
        ArrayDataset(images, [0.5] * 5)


def test_public_alias():
    # gpuconv.datasets is a real module (gpuconv/datasets.py) re-exporting every public
    # name of gpuconv.data.datasets: the same objects under both names
    import gpuconv.datasets as alias
    assert alias is gpuconv.datasets
    assert alias.__file__.endswith("datasets.py")
    assert alias.__all__ == gpuconv.data.datasets.__all__
    assert all(getattr(alias, name) is getattr(gpuconv.data.datasets, name)
               for name in alias.__all__)
    assert alias.CIFAR10 is CIFAR10


def test_data_package_imports_only_backend():
    """gpuconv/data may import gpuconv.backend, numpy and the standard library only, and
    ``shard_bounds`` from gpuconv.distributed (the one rule that splits a global batch
    across ranks, shared with the training loop; imported by name, nothing else)."""
    import sys
    data_dir = Path(gpuconv.__file__).parent / "data"
    allowed_top = {"numpy"} | set(sys.stdlib_module_names)
    for path in data_dir.rglob("*.py"):
        rel_pkg = path.relative_to(data_dir.parent).with_suffix("").parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed_top, (path, alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    assert node.module.split(".")[0] in allowed_top, (path, node.module)
                else:
                    base = list(rel_pkg[: len(rel_pkg) - node.level + 1])
                    target = base + (node.module.split(".") if node.module else [])
                    if target[:1] == ["distributed"]:
                        assert [a.name for a in node.names] == ["shard_bounds"], (path, target)
                        continue
                    assert target[:1] == ["data"] or target[:1] == ["backend"], \
                        (path, node.module, target)


# ---------------------------------------------------------------------------
# the real CIFAR-10 (built once from ../shared/data; skipped if absent)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_cifar_root():
    from cifar_cache import cifar10_root
    return cifar10_root()


@pytest.mark.parametrize("train,count", [(True, 50000), (False, 10000)])
def test_real_cifar10(real_cifar_root, train, count):
    py = CIFAR10(real_cifar_root, train=train, layout="py")
    binary = CIFAR10(real_cifar_root, train=train, layout="bin")
    for ds in (py, binary):
        assert len(ds) == count
        assert ds.images.shape == (count, 3, 32, 32) and ds.images.dtype == np.uint8
        assert ds.labels.shape == (count,) and ds.labels.dtype == np.int64
        assert ds.classes == CIFAR10_CLASSES
        np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10),
                                      np.full(10, count // 10))
    np.testing.assert_array_equal(py.images, binary.images)
    np.testing.assert_array_equal(py.labels, binary.labels)
    sample = py.images[::97].astype(np.float32)
    assert 100 < sample.mean() < 140  # real photos, not noise or zeros
    assert sample.std() > 40
