"""DataLoader: batching, deterministic shuffling, device upload/conversion,
augment-then-normalise order, the prefetch thread (same batches, clean exit)."""
from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

import gpuconv
from gpuconv.backend import device_of, get_array_module, get_device, to_numpy
from gpuconv.data import loader as loader_module
from gpuconv.data.augment import Compose, RandomCrop, RandomHorizontalFlip
from gpuconv.data.datasets import ArrayDataset
from gpuconv.data.loader import CIFAR10_MEAN, CIFAR10_STD, DataLoader


def indexed_dataset(n=103, hw=4):
    """uint8 images whose first two pixels encode the sample index; labels = index % 10."""
    images = np.random.default_rng(1).integers(0, 256, size=(n, 3, hw, hw), dtype=np.uint8)
    idx = np.arange(n)
    images[:, 0, 0, 0] = idx % 256
    images[:, 0, 0, 1] = idx // 256
    return ArrayDataset(images, idx % 10)


def sample_ids(x):
    """Recover the sample indices from a float batch made from indexed_dataset (x / 255)."""
    host = np.rint(to_numpy(x)[:, 0, 0, :2] * 255).astype(np.int64)
    return host[:, 0] + 256 * host[:, 1]


def collect(loader):
    xs, ys = [], []
    for x, y in loader:
        xs.append(to_numpy(x))
        ys.append(to_numpy(y))
    return xs, ys


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "gpuconv-prefetch" and t.is_alive()]


def wait_no_prefetch_threads(timeout=5.0):
    deadline = time.monotonic() + timeout
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return prefetch_threads()


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(device, shuffle, drop_last):
    ds = indexed_dataset(103)
    loader = DataLoader(ds, 16, shuffle=shuffle, drop_last=drop_last, device=device, seed=3)
    assert len(loader) == (6 if drop_last else 7)
    seen, sizes = [], []
    for x, y in loader:
        assert get_array_module(x) is get_array_module(y)
        assert device_of(x) == get_device(device) == device_of(y)
        assert x.dtype == np.float32 and x.shape[1:] == (3, 4, 4)
        assert y.dtype == np.int64 and y.shape == (x.shape[0],)
        ids = sample_ids(x)
        np.testing.assert_array_equal(to_numpy(y), ids % 10)
        seen.extend(ids.tolist())
        sizes.append(x.shape[0])
    assert sizes == ([16] * 6 if drop_last else [16] * 6 + [7])
    if drop_last:
        assert len(set(seen)) == 96
    else:
        assert sorted(seen) == list(range(103))
    assert (seen == sorted(seen)) == (not shuffle)


def test_shuffle_is_deterministic_per_seed_and_epoch(device):
    ds = indexed_dataset(64)

    def order(loader):
        return np.concatenate([sample_ids(x) for x, _ in loader])

    a = DataLoader(ds, 10, shuffle=True, seed=7, device=device)
    b = DataLoader(ds, 10, shuffle=True, seed=7, device=device)
    a0, a1 = order(a), order(a)
    assert a.epoch == 2
    np.testing.assert_array_equal(a0, order(b))
    np.testing.assert_array_equal(a1, order(b))
    assert not np.array_equal(a0, a1)  # reshuffled each epoch
    np.testing.assert_array_equal(a0, a.order(0))
    a.set_epoch(1)
    np.testing.assert_array_equal(order(a), a1)
    c = DataLoader(ds, 10, shuffle=True, seed=8, device=device)
    assert not np.array_equal(order(c), a0)
    # state_dict round trip resumes the sequence
    state = a.state_dict()
    nxt = order(a)
    b.load_state_dict(state)
    np.testing.assert_array_equal(order(b), nxt)


def test_default_seed_follows_gpuconv_seed():
    ds = indexed_dataset(50)
    gpuconv.seed(11)
    a = DataLoader(ds, 50, shuffle=True, device="cpu")
    gpuconv.seed(11)
    b = DataLoader(ds, 50, shuffle=True, device="cpu")
    gpuconv.seed(12)
    c = DataLoader(ds, 50, shuffle=True, device="cpu")
    assert a.seed == b.seed == 11
    np.testing.assert_array_equal(a.order(0), b.order(0))
    assert not np.array_equal(a.order(0), c.order(0))


def test_uint8_conversion_and_normalisation(device):
    images = np.random.default_rng(0).integers(0, 256, (20, 3, 5, 5), dtype=np.uint8)
    labels = np.arange(20) % 3
    plain = DataLoader((images, labels), 8, device=device)
    xs, ys = collect(plain)
    np.testing.assert_array_equal(np.concatenate(xs), images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(np.concatenate(ys), labels)
    norm = DataLoader((images, labels), 8, device=device, normalize=(CIFAR10_MEAN, CIFAR10_STD))
    xs, _ = collect(norm)
    mean = np.array(CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(CIFAR10_STD).reshape(1, 3, 1, 1)
    want = (images / 255.0 - mean) / std
    np.testing.assert_allclose(np.concatenate(xs), want, rtol=1e-5, atol=1e-5)
    assert xs[0].dtype == np.float32


def test_float_images_pass_through_and_dataset_is_untouched(device):
    images = np.random.default_rng(0).normal(size=(9, 2, 3, 3))  # float64, not in [0, 1]
    before = images.copy()
    xs, _ = collect(DataLoader((images, np.zeros(9, np.int64)), 4, device=device))
    np.testing.assert_array_equal(np.concatenate(xs), images.astype(np.float32))  # no / 255
    assert xs[0].dtype == np.float32
    xs, _ = collect(DataLoader((images, np.zeros(9, np.int64)), 4, device=device,
                               normalize=([1.0, 2.0], [2.0, 4.0])))
    want = (images - np.array([1.0, 2.0]).reshape(1, 2, 1, 1)) / \
        np.array([2.0, 4.0]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(np.concatenate(xs), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(images, before)  # in-place steps never reach the dataset
    xs, _ = collect(DataLoader((images, np.zeros(9, np.int64)), 9, device=device,
                               dtype=np.float64))
    np.testing.assert_array_equal(xs[0], images)


def test_augment_runs_on_device_in_unit_range_before_normalise(device):
    images = np.full((6, 3, 4, 4), 255, np.uint8)
    images[:3] = 0
    seen = []

    def augment(x):
        seen.append((get_array_module(x), str(device_of(x)), x.dtype,
                     float(x.min()), float(x.max())))
        return x * 0 + 0.5

    loader = DataLoader((images, np.zeros(6, np.int64)), 6, device=device, augment=augment,
                        normalize=(CIFAR10_MEAN, CIFAR10_STD))
    (x, _), = list(loader)
    xp, dev, dtype, lo, hi = seen[0]
    assert dev == str(get_device(device)) and xp is get_array_module(x)
    assert dtype == np.float32 and (lo, hi) == (0.0, 1.0)  # pixels / 255, not yet normalised
    want = (0.5 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    np.testing.assert_allclose(to_numpy(x)[0, :, 0, 0], want, rtol=1e-6)


def test_augmented_loader_is_reproducible(device):
    ds = indexed_dataset(40, hw=8)
    aug = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()])

    def run():
        gpuconv.seed(5)
        loader = DataLoader(ds, 16, shuffle=True, device=device, augment=aug,
                            normalize=((0.5,), (0.25,)))
        return collect(loader)[0] + collect(loader)[0]

    first, second = run(), run()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0][:, :, 2:6, 2:6], first[0][:, :, 2:6, 2:6][::-1])


@pytest.mark.parametrize("shuffle", [False, True])
def test_prefetch_gives_identical_batches(device, shuffle):
    ds = indexed_dataset(77)
    kwargs = dict(batch_size=8, shuffle=shuffle, seed=2, device=device)
    with_thread = collect(DataLoader(ds, prefetch=True, **kwargs))
    deep = collect(DataLoader(ds, prefetch=5, **kwargs))
    inline = collect(DataLoader(ds, prefetch=False, **kwargs))
    for run in (with_thread, deep):
        for a, b in zip(run[0] + run[1], inline[0] + inline[1]):
            np.testing.assert_array_equal(a, b)
    assert not wait_no_prefetch_threads()


def test_prefetch_gathers_on_a_background_thread(monkeypatch):
    threads = set()
    original = loader_module._Gather.__call__

    def spy(self, job):
        threads.add(threading.current_thread().name)
        return original(self, job)

    monkeypatch.setattr(loader_module._Gather, "__call__", spy)
    ds = indexed_dataset(30)
    collect(DataLoader(ds, 8, device="cpu", prefetch=True))
    assert threads == {"gpuconv-prefetch"}
    threads.clear()
    collect(DataLoader(ds, 8, device="cpu", prefetch=False))
    assert threads == {threading.main_thread().name}


def test_prefetch_thread_exits_when_iteration_stops_early(device):
    ds = indexed_dataset(200)
    loader = DataLoader(ds, 4, device=device, prefetch=2)
    it = iter(loader)
    next(it)
    assert prefetch_threads()
    for _ in it:  # `break` after one more batch
        break
    del it
    gc.collect()
    assert not wait_no_prefetch_threads()
    it = iter(loader)
    next(it)
    it.close()  # explicit close
    assert not wait_no_prefetch_threads()
    # an iterator that is never advanced starts no thread
    it = iter(loader)
    assert not prefetch_threads()
    del it


def test_gather_errors_reach_the_consumer(monkeypatch):
    original = loader_module._Gather.__call__
    calls = []

    def failing(self, job):
        calls.append(job)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return original(self, job)

    monkeypatch.setattr(loader_module._Gather, "__call__", failing)
    loader = DataLoader(indexed_dataset(40), 4, device="cpu", prefetch=True)
    got = 0
    with pytest.raises(RuntimeError, match="disk on fire"):
        for _ in loader:
            got += 1
    assert got == 2
    assert not wait_no_prefetch_threads()


def test_accepts_dataset_like_objects_and_validates():
    class Bag:
        images = np.zeros((5, 1, 2, 2), np.uint8)
        labels = np.array([0, 1, 2, 1, 0])
        classes = ["a", "b", "c"]

    loader = DataLoader(Bag(), 2, device="cpu")
    assert len(loader) == 3 and loader.classes == ["a", "b", "c"] and loader.num_samples == 5
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(Bag(), 0, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(Bag(), True, device="cpu")
    with pytest.raises(TypeError, match="images and .labels"):
        DataLoader(object(), 2, device="cpu")
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        DataLoader(([[0]], [0]), 2, device="cpu")
    with pytest.raises(ValueError, match="labels must lie"):
        DataLoader((Bag.images, np.array([0, 1, -1, 1, 0])), 2, device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        DataLoader(Bag(), 2, device="cpu", dtype=np.int32)
    with pytest.raises(TypeError, match="augment"):
        DataLoader(Bag(), 2, device="cpu", augment=3)
    small = DataLoader(Bag(), 8, drop_last=True, device="cpu")
    assert len(small) == 0 and collect(small) == ([], [])


def test_device_arrays_are_refused(device):
    if device == "cpu":
        pytest.skip("host arrays are the accepted input")
    from gpuconv.backend import to_device
    x = to_device(np.zeros((2, 1, 2, 2), np.uint8), device)
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        DataLoader((x, np.zeros(2, np.int64)), 2, device=device)


def test_real_cifar10_normalised_statistics():
    """On the real training set the exported constants normalise each channel to
    mean ~0 and std ~1 (a quarter of the set, sampled by a shuffled loader)."""
    from cifar_cache import cifar10_root

    from gpuconv.data.datasets import CIFAR10
    ds = CIFAR10(cifar10_root(), train=True)
    loader = DataLoader(ds, 1250, shuffle=True, seed=0, device="cpu",
                        normalize=(CIFAR10_MEAN, CIFAR10_STD))
    total = np.zeros(3)
    sq = np.zeros(3)
    count = 0
    for i, (x, y) in enumerate(loader):
        if i == 10:
            break
        total += x.sum(axis=(0, 2, 3), dtype=np.float64)
        sq += (x.astype(np.float64) ** 2).sum(axis=(0, 2, 3))
        count += x.shape[0] * 32 * 32
    mean = total / count
    std = np.sqrt(sq / count - mean ** 2)
    np.testing.assert_allclose(mean, 0.0, atol=0.03)
    np.testing.assert_allclose(std, 1.0, atol=0.03)
