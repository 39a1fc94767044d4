"""Wrong dataset files are refused with one CorruptDatasetError whose single-line
message names the file and says what was expected and what was found: CIFAR-10
python batches (truncated, random bytes, hostile pickles, wrong record counts),
binary batches (exact size), MNIST IDX files (magic, sizes, counts, labels), and
a download cut off mid-transfer (DownloadError)."""
from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import test_datasets as td

from gpuconv.data.datasets import (
    CIFAR10,
    MNIST,
    CorruptDatasetError,
    DownloadError,
    FashionMNIST,
    load_pickle,
)
from gpuconv.data.datasets.download import download_file

PY = "cifar-10-batches-py"
BIN = "cifar-10-batches-bin"


def _corrupt(call, *match):
    """Run ``call`` expecting CorruptDatasetError; check it is a one-line ValueError
    containing every ``match`` string; return the message."""
    with pytest.raises(CorruptDatasetError) as err:
        call()
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "\n" not in msg and "\r" not in msg, msg
    for m in match:
        assert str(m) in msg, (m, msg)
    return msg


# ---------------------------------------------------------------------------
# python layout
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["data_batch_1", "data_batch_5", "test_batch"])
def test_py_truncated_to_half(tmp_path, name):
    td.write_cifar(tmp_path, layouts=("py",))
    path = tmp_path / PY / name
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _corrupt(lambda: CIFAR10(tmp_path, train=name != "test_batch"),
             f"{path}: truncated or not a CIFAR-10 pickle (")


@pytest.mark.parametrize("seed", range(6))
def test_py_random_bytes(tmp_path, seed):
    td.write_cifar(tmp_path, layouts=("py",))
    path = tmp_path / PY / "data_batch_2"
    size = path.stat().st_size
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes())
    msg = _corrupt(lambda: CIFAR10(tmp_path), f"{path}: ")
    assert "truncated or not a CIFAR-10 pickle" in msg or "refused an unsafe pickle" in msg \
        or "expected a pickled dict" in msg, msg


@pytest.mark.parametrize("where", ["top", "data", "meta"])
def test_py_malicious_pickle_is_corrupt(tmp_path, where):
    td.write_cifar(tmp_path, layouts=("py",))
    marker = tmp_path / "pwned"
    evil = td._Evil(os.system, f"touch {marker}")
    target = tmp_path / PY / ("batches.meta" if where == "meta" else "data_batch_1")
    if where == "top":
        payload = evil
    else:
        payload = load_pickle(target, encoding="bytes")
        payload[b"label_names" if where == "meta" else b"data"] = evil
    target.write_bytes(pickle.dumps(payload, protocol=2))
    _corrupt(lambda: CIFAR10(tmp_path), f"{target}: refused an unsafe pickle", ".system")
    assert not marker.exists()


def test_py_unsafe_codec_is_refused(tmp_path):
    import codecs
    td.write_cifar(tmp_path, layouts=("py",))
    path = tmp_path / PY / "test_batch"
    path.write_bytes(pickle.dumps(td._Evil(codecs.encode, "abc", "rot13"), protocol=2))
    _corrupt(lambda: CIFAR10(tmp_path, train=False), f"{path}: refused an unsafe pickle",
             "codecs.encode(str, 'rot13', 'strict')")


def _rewrite_batch(path, n):
    """Keep the first ``n`` records of a python batch (a consistent, complete pickle)."""
    batch = load_pickle(path, encoding="bytes")
    batch[b"data"] = batch[b"data"][:n]
    batch[b"labels"] = batch[b"labels"][:n]
    td._dump(batch, path, "p2")


def _set_meta_count(folder, count):
    meta = load_pickle(folder / "batches.meta", encoding="bytes")
    meta[b"num_cases_per_batch"] = count
    td._dump(meta, folder / "batches.meta", "p2")


def test_py_record_count_from_meta(tmp_path):
    """batches.meta's num_cases_per_batch (10000 in the official files) is the exact count
    of every batch, the test batch included."""
    td.write_cifar(tmp_path, layouts=("py",), n=6)
    folder = tmp_path / PY
    _rewrite_batch(folder / "test_batch", 6)
    _set_meta_count(folder, 6)
    assert len(CIFAR10(tmp_path)) == 30 and len(CIFAR10(tmp_path, train=False)) == 6
    _rewrite_batch(folder / "data_batch_3", 3)
    _corrupt(lambda: CIFAR10(tmp_path), f"{folder / 'data_batch_3'}: 3 records, expected 6",
             "num_cases_per_batch")
    _rewrite_batch(folder / "test_batch", 5)
    _corrupt(lambda: CIFAR10(tmp_path, train=False), f"{folder / 'test_batch'}: 5 records, "
             "expected 6")


@pytest.mark.parametrize("count", [0, -3, "x", 2.5])
def test_py_bad_meta_count(tmp_path, count):
    td.write_cifar(tmp_path, layouts=("py",))
    folder = tmp_path / PY
    _set_meta_count(folder, count)
    _corrupt(lambda: CIFAR10(tmp_path), f"{folder / 'batches.meta'}: ", "num_cases_per_batch")


def test_py_official_size_seen_makes_every_batch_official(tmp_path, monkeypatch):
    """Without a count in batches.meta: once one batch has the official size, a batch with
    another size is refused (a small synthetic folder is still accepted)."""
    monkeypatch.setattr(CIFAR10, "records_per_batch", 6)  # stands in for 10000
    td.write_cifar(tmp_path, layouts=("py",), n=6)
    folder = tmp_path / PY
    assert len(CIFAR10(tmp_path)) == 30
    _rewrite_batch(folder / "data_batch_4", 3)
    _corrupt(lambda: CIFAR10(tmp_path), f"{folder / 'data_batch_4'}: 3 records, expected 6")
    monkeypatch.setattr(CIFAR10, "records_per_batch", 10000)
    assert len(CIFAR10(tmp_path)) == 27  # no batch is official-sized: a subset, accepted


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.__setitem__(b"labels", [0, 1, 2, 3, 4, -1]), "labels must lie in 0..9, found -1..4"),
    (lambda d: d.__setitem__(b"labels", [0, 1, 2, 3, 4, 10]), "labels must lie in 0..9, found 0..10"),
    (lambda d: d.__setitem__(b"labels", [0, 1, 2, 3, 4, 2 ** 70]), "'labels'"),
    (lambda d: d.__setitem__(b"labels", "abcdef"), "'labels'"),
    (lambda d: d.pop(b"data"), "required key 'data' is missing"),
    (lambda d: d.__setitem__(b"data", d[b"data"].reshape(6, 3, 32, 32)), "found uint8 (6, 3, 32, 32)"),
    (lambda d: d.__setitem__(b"data", b"abc"), "found bytes"),
])
def test_py_content_checks(tmp_path, mutate, match):
    td.write_cifar(tmp_path, layouts=("py",))
    path = tmp_path / PY / "data_batch_1"
    batch = load_pickle(path, encoding="bytes")
    mutate(batch)
    td._dump(batch, path, "p2")
    _corrupt(lambda: CIFAR10(tmp_path), f"{path}: ", match)


@pytest.mark.parametrize("names,match", [
    ([b"a"] * 9, "expected 10 label names, found 9"),
    (7, "'label_names' must be a list of 10 names, found int"),
    ([b"\xff\xfe"] + [b"a"] * 9, "not UTF-8"),
])
def test_py_bad_meta(tmp_path, names, match):
    td.write_cifar(tmp_path, layouts=("py",))
    path = tmp_path / PY / "batches.meta"
    td._dump({b"label_names": names}, path, "p2")
    _corrupt(lambda: CIFAR10(tmp_path), f"{path}: ", match)


def test_py_meta_truncated(tmp_path):
    td.write_cifar(tmp_path, layouts=("py",))
    path = tmp_path / PY / "batches.meta"
    path.write_bytes(path.read_bytes()[:20])
    _corrupt(lambda: CIFAR10(tmp_path, train=False), f"{path}: truncated or not a CIFAR-10 pickle")


def test_corrupt_error_carries_path_and_is_one_line(tmp_path):
    err = CorruptDatasetError("a\nb\r\nc", path=tmp_path / "f")
    assert str(err) == "a b c" and err.path == tmp_path / "f"
    assert CorruptDatasetError("x").path is None


# ---------------------------------------------------------------------------
# binary layout
# ---------------------------------------------------------------------------

def _records(path):
    return path.stat().st_size // 3073


@pytest.mark.parametrize("name", ["data_batch_1.bin", "data_batch_5.bin", "test_batch.bin"])
def test_bin_truncated_to_half_of_the_official_size(tmp_path, monkeypatch, name):
    """A batch cut at a record boundary (a multiple of 3073 bytes) used to load as a
    smaller dataset; with official-sized batches beside it, it is refused."""
    monkeypatch.setattr(CIFAR10, "records_per_batch", 6)  # stands in for 10000
    td.write_cifar(tmp_path, layouts=("bin",), n=6)
    folder = tmp_path / BIN
    test = folder / "test_batch.bin"
    test.write_bytes(test.read_bytes()[: 6 * 3073])  # all six batches official-sized
    assert len(CIFAR10(tmp_path)) == 30 and len(CIFAR10(tmp_path, train=False)) == 6
    path = folder / name
    path.write_bytes(path.read_bytes()[: 3 * 3073])
    train = name != "test_batch.bin"
    _corrupt(lambda: CIFAR10(tmp_path, train=train),
             f"{path}: 9219 bytes = 3 records, expected 18438 bytes = 6 records of 3073 bytes",
             "truncated")


def test_bin_extra_records(tmp_path, monkeypatch):
    monkeypatch.setattr(CIFAR10, "records_per_batch", 6)
    td.write_cifar(tmp_path, layouts=("bin",), n=6)
    path = tmp_path / BIN / "data_batch_2.bin"
    path.write_bytes(path.read_bytes() * 2)
    _corrupt(lambda: CIFAR10(tmp_path), f"{path}: 36876 bytes = 12 records, expected 18438 "
             "bytes = 6 records", "extra data")


def test_bin_not_whole_records_says_what_is_expected(tmp_path, monkeypatch):
    monkeypatch.setattr(CIFAR10, "records_per_batch", 6)
    td.write_cifar(tmp_path, layouts=("bin",), n=6)
    path = tmp_path / BIN / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    _corrupt(lambda: CIFAR10(tmp_path), f"{path}: 18338 bytes is not a whole number of "
             "3073-byte records", "expected 18438 bytes = 6 records")


def test_bin_small_synthetic_folder_still_loads(tmp_path):
    """No batch has the official 10000 records: a small dataset, every size accepted."""
    td.write_cifar(tmp_path, layouts=("bin",), n=6)
    path = tmp_path / BIN / "data_batch_1.bin"
    path.write_bytes(path.read_bytes()[: 2 * 3073])
    assert len(CIFAR10(tmp_path)) == 26


def test_bin_random_bytes(tmp_path):
    td.write_cifar(tmp_path, layouts=("bin",))
    path = tmp_path / BIN / "data_batch_1.bin"
    raw = np.random.default_rng(0).integers(0, 256, path.stat().st_size, np.uint8)
    raw[::3073] = 200  # make sure some label byte is out of range
    path.write_bytes(raw.tobytes())
    _corrupt(lambda: CIFAR10(tmp_path), f"{path}: labels must lie in 0..9, found ")


def test_bin_meta_not_utf8(tmp_path):
    td.write_cifar(tmp_path, layouts=("bin",))
    path = tmp_path / BIN / "batches.meta.txt"
    path.write_bytes(b"\xff\xfe\n" * 10)
    _corrupt(lambda: CIFAR10(tmp_path), f"{path}: ", "not UTF-8")


@pytest.fixture(scope="module")
def real_cifar_root():
    from cifar_cache import cifar10_root
    return Path(cifar10_root())


def test_real_bin_batch_truncated_to_half(real_cifar_root, tmp_path):
    """The reported case: data_batch_1.bin cut to exactly half (5000 whole records)."""
    folder = tmp_path / BIN
    folder.mkdir()
    for src in (real_cifar_root / BIN).iterdir():
        if src.name != "data_batch_1.bin":
            os.symlink(src, folder / src.name)
    half = (real_cifar_root / BIN / "data_batch_1.bin").read_bytes()
    (folder / "data_batch_1.bin").write_bytes(half[: len(half) // 2])
    _corrupt(lambda: CIFAR10(tmp_path), f"{folder / 'data_batch_1.bin'}: 15365000 bytes = "
             "5000 records, expected 30730000 bytes = 10000 records of 3073 bytes")
    assert len(CIFAR10(tmp_path, train=False)) == 10000


def test_real_py_batch_truncated_to_half(real_cifar_root, tmp_path):
    folder = tmp_path / PY
    folder.mkdir()
    for src in (real_cifar_root / PY).iterdir():
        if src.name != "test_batch":
            os.symlink(src, folder / src.name)
    raw = (real_cifar_root / PY / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    _corrupt(lambda: CIFAR10(tmp_path, train=False),
             f"{folder / 'test_batch'}: truncated or not a CIFAR-10 pickle (")


# ---------------------------------------------------------------------------
# MNIST IDX
# ---------------------------------------------------------------------------

def _header(path, magic, *dims):
    raw = path.read_bytes()
    ndim = raw[3]
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
                     + raw[4 + 4 * ndim:])


@pytest.mark.parametrize("magic,match", [
    (0x0803_0000, "not an IDX file"),
    (0x0000_0D03, "element type 0x0d (float32), expected 0x08 (unsigned byte)"),
    (0x0000_0802, "2 dimensions, expected 3"),
    (0x0000_0801, "1 dimension, expected 3"),
])
def test_mnist_magic(tmp_path, magic, match):
    td.write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(struct.pack(">I", magic) + raw[4:])
    _corrupt(lambda: MNIST(tmp_path), f"{path}: ", match)


def test_mnist_gzip_without_suffix(tmp_path):
    td.write_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))
    _corrupt(lambda: MNIST(tmp_path, train=False), f"{path}: not an IDX file", "gzip")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_exact_length(tmp_path, gz):
    td.write_mnist(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    path = tmp_path / ("train-images-idx3-ubyte" + suffix)
    good = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    write = (lambda b: path.write_bytes(gzip.compress(b))) if gz else path.write_bytes
    write(good[:-5])
    _corrupt(lambda: MNIST(tmp_path), f"{path}: 7067 bytes", "expected 7072 bytes "
             "(16-byte header + 9 x 28 x 28)", "5 bytes short, the file is truncated")
    write(good + b"\0\0")
    _corrupt(lambda: MNIST(tmp_path), f"{path}: 7074 bytes", "expected 7072 bytes",
             "2 trailing bytes")


def test_mnist_image_size(tmp_path):
    td.write_mnist(tmp_path, hw=(20, 24))
    path = tmp_path / "train-images-idx3-ubyte"
    _corrupt(lambda: MNIST(tmp_path), f"{path}: images are 20x24, expected 28x28")
    _corrupt(lambda: FashionMNIST(tmp_path), f"{path}: images are 20x24, expected 28x28")
    assert MNIST(tmp_path, image_size=None).images.shape == (9, 1, 20, 24)
    assert MNIST(tmp_path, image_size=(20, 24)).images.shape == (9, 1, 20, 24)


def test_mnist_count_mismatch_names_both_files(tmp_path):
    td.write_mnist(tmp_path)
    img, lab = tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte"
    lab.write_bytes(td._idx(np.zeros(3, np.uint8), 2049))
    _corrupt(lambda: MNIST(tmp_path, train=False), f"{img}: 4 images but {lab} holds 3 labels")


def test_mnist_official_sizes(tmp_path, monkeypatch):
    """Once a file in the folder has its official count (60000 train / 10000 t10k),
    every file must; a small folder is still accepted."""
    monkeypatch.setattr(MNIST, "official_sizes", {"train": 9, "t10k": 4})  # 60000 / 10000
    td.write_mnist(tmp_path)
    assert len(MNIST(tmp_path)) == 9 and len(MNIST(tmp_path, train=False)) == 4
    img, lab = tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte"
    img.write_bytes(td._idx(np.zeros((3, 28, 28), np.uint8), 2051))
    lab.write_bytes(td._idx(np.zeros(3, np.uint8), 2049))
    _corrupt(lambda: MNIST(tmp_path, train=False), f"{img}: 3 images, expected 4",
             "official t10k split")
    assert len(MNIST(tmp_path)) == 9  # the train split is intact
    monkeypatch.setattr(MNIST, "official_sizes", {"train": 60000, "t10k": 10000})
    assert len(MNIST(tmp_path, train=False)) == 3  # nothing official-sized: accepted


def test_mnist_label_range(tmp_path):
    td.write_mnist(tmp_path)
    lab = tmp_path / "train-labels-idx1-ubyte"
    lab.write_bytes(td._idx(np.array([0, 1, 2, 3, 4, 5, 6, 7, 12], np.uint8), 2049))
    _corrupt(lambda: MNIST(tmp_path), f"{lab}: labels must lie in 0..9 (10 classes), found 0..12")


def test_mnist_truncated_header(tmp_path):
    td.write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:10])
    _corrupt(lambda: MNIST(tmp_path), f"{path}: 10 bytes, the IDX header needs 16")


# ---------------------------------------------------------------------------
# download cut off mid-transfer
# ---------------------------------------------------------------------------

def test_download_cut_off_chunked_transfer(tmp_path):
    """A chunked response that stops mid-chunk raised http.client.IncompleteRead (not a
    DownloadError) and left dest.part behind."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def serve():
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"ffff\r\n" + b"x" * 10)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        dest = tmp_path / "dl" / "cifar.tar.gz"
        with pytest.raises(DownloadError, match=f"could not download http://127.0.0.1:{port}/"):
            download_file(f"http://127.0.0.1:{port}/cifar.tar.gz", dest, None, timeout=10)
        thread.join(5)
    assert list(dest.parent.iterdir()) == []
