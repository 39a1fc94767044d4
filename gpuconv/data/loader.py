"""Mini-batches on the device: host gather, one upload, conversion there.

For each batch the :class:`DataLoader`

1. gathers the batch's samples on the host (NumPy fancy indexing of the uint8
   images) -- in a background thread when ``prefetch`` is on, so the next
   batch is ready while the current one is being computed on;
2. uploads the compact uint8 batch to the device
   (:func:`gpuconv.backend.to_device`; 4x fewer bytes than float32);
3. on the device: converts to float (``/ 255`` for uint8, giving [0, 1]),
   applies ``augment`` (see :mod:`gpuconv.data.augment`), then normalises
   per channel with ``normalize = (mean, std)``.

Labels arrive as int64 ``(B,)`` on the same device.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy

from ..backend import Device, get_device, get_seed, to_device
from ..distributed import shard_bounds
from .augment import Normalize
from .datasets import ArrayDataset
from .epochs import EpochBatches
from .datasets.cifar import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["DataLoader", "CIFAR10_MEAN", "CIFAR10_STD"]

Array = Any


class _End:
    pass


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: "queue.Queue", item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; True when it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _worker(fetch: Callable[[Any], Any], jobs: Sequence[Any], q: "queue.Queue",
            stop: threading.Event) -> None:
    # Holds no reference to the consuming iterator, so that one can be
    # collected (and close this thread) when the consumer stops early.
    try:
        for job in jobs:
            if stop.is_set() or not _put(q, fetch(job), stop):
                return
    except BaseException as exc:  # handed to the consumer, re-raised there
        _put(q, _Failure(exc), stop)
        return
    _put(q, _End(), stop)


class _Prefetcher:
    """Runs ``fetch(job)`` for ``jobs`` in order on a daemon thread, at most
    ``depth`` results ahead of the consumer. Results come back in job order."""

    def __init__(self, fetch: Callable[[Any], Any], jobs: Sequence[Any], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self.thread = threading.Thread(target=_worker, name="gpuconv-prefetch", daemon=True,
                                       args=(fetch, jobs, self._queue, self._stop))
        self.thread.start()

    def __iter__(self) -> "_Prefetcher":
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, _End):
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the thread and wait for it (it finishes its current fetch)."""
        self._done = True
        self._stop.set()
        while True:  # unblock a worker waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=10.0)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class DataLoader(EpochBatches):
    """Iterate a dataset in mini-batches ``(x, y)`` on a device.

    Args:
        dataset: an object with host arrays ``.images`` ``(N, C, H, W)`` (uint8 or
            float) and ``.labels`` ``(N,)`` ints (a :class:`~gpuconv.datasets.CIFAR10`,
            :class:`~gpuconv.datasets.ArrayDataset`, ...), or a pair
            ``(images, labels)`` of NumPy arrays.
        batch_size: samples per batch.
        shuffle: visit the samples in a new random order every epoch. The order
            of epoch ``e`` is ``numpy.random.default_rng([seed, e]).permutation(N)``
            (host NumPy), so it depends only on ``seed`` and ``e``.
        drop_last: drop the final batch when it has fewer than ``batch_size``.
        seed: shuffling seed; default ``gpuconv.backend.get_seed()`` at construction
            (i.e. the value given to ``gpuconv.seed``).
        device: where batches are delivered (``"cpu"``, ``"cuda"``, a Device; None:
            ``gpuconv.get_device()``, i.e. ``$GPUCONV_DEVICE`` or auto).
        normalize: ``(mean, std)`` per channel in [0, 1] pixel units (e.g.
            ``(CIFAR10_MEAN, CIFAR10_STD)``), a :class:`~gpuconv.data.augment.Normalize`,
            or None.
        augment: callable run on the device batch (float, pixels in [0, 1] for
            uint8 data) *before* normalisation, e.g. ``Compose([RandomCrop(32, 4),
            RandomHorizontalFlip()])``. Its random draws use the device generator
            (``gpuconv.backend.generator``), so they follow ``gpuconv.seed``.
        prefetch: gather the next batch on a background thread (True: 2 batches
            ahead; an int: that many; False/0: gather inline). The batches are the
            same either way.
        dtype: float dtype of the delivered images (default float32).
        comm: a :mod:`gpuconv.distributed` communicator for data-parallel
            training. ``batch_size`` is then the *global* batch, which must divide
            by ``comm.size``: every rank walks the same (seeded) order and yields
            its contiguous shard of each global batch (rank r: samples
            ``[r*B/N, (r+1)*B/N)``), so the ranks together see exactly the
            batches one process sees. An epoch's last, shorter batch is split as
            evenly as possible (:func:`gpuconv.distributed.shard_bounds`; a shard
            may be empty when it has fewer samples than ranks; ``fit`` weights
            the gradients by shard size, so the step is still one process's).
            With ``augment`` every rank augments the whole global batch and keeps
            its rows, so the random draws (crops, flips) are also one process's;
            the price is the augmentation (not the model) running on every rank.

    Yields:
        ``x``: ``(B, C, H, W)`` ``dtype`` array on ``device``. uint8 images become
        ``x / 255`` (then augmented, then normalised); float images are cast to
        ``dtype`` without rescaling (then augmented, then normalised if asked).
        ``y``: int64 ``(B,)`` labels on ``device``.

    ``len(loader)`` is the number of batches per epoch. Each ``iter(loader)``
    starts the next epoch (``loader.epoch`` counts them; ``set_epoch(e)`` picks the
    epoch, e.g. when resuming). Stopping early is fine: the background thread
    ends when the iterator is closed or garbage-collected.
    """

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: "int | None" = None,
                 device: "str | Device | None" = None,
                 normalize: "tuple[Sequence[float], Sequence[float]] | Normalize | None" = None,
                 augment: "Callable[[Array], Array] | None" = None,
                 prefetch: "bool | int" = True, dtype: Any = numpy.float32,
                 comm: Any = None) -> None:
        if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
            images, labels = dataset
            classes = None
        elif hasattr(dataset, "images") and hasattr(dataset, "labels"):
            images, labels = dataset.images, dataset.labels
            classes = getattr(dataset, "classes", None)
        else:
            raise TypeError("DataLoader: dataset must have .images and .labels arrays or be "
                            f"a pair (images, labels), got {type(dataset).__name__}")
        for what, arr in (("images", images), ("labels", labels)):
            if not isinstance(arr, numpy.ndarray):
                raise TypeError(f"DataLoader: {what} must be a host numpy.ndarray (batches are "
                                f"uploaded per batch), got {type(arr).__module__}."
                                f"{type(arr).__name__}")
        data = dataset if isinstance(dataset, ArrayDataset) else \
            ArrayDataset(images, labels, classes)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, numpy.integer)) \
                or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        self.dtype = numpy.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"DataLoader: dtype must be floating point, got {self.dtype}")
        if normalize is not None and not isinstance(normalize, Normalize):
            mean, std = normalize
            normalize = Normalize(mean, std)
        if augment is not None and not callable(augment):
            raise TypeError(f"DataLoader: augment must be callable, got {augment!r}")
        self.dataset = dataset
        self.images: numpy.ndarray = data.images
        self.labels: numpy.ndarray = data.labels
        self.classes: list[str] = data.classes
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(get_seed() if seed is None else seed)
        self.device: Device = get_device(device)
        self.normalize: "Normalize | None" = normalize
        self.augment = augment
        self.prefetch = 2 if prefetch is True else int(prefetch or 0)
        self._init_epochs(comm)

    # -- bookkeeping -------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    # -- iteration ----------------------------------------------------------------
    def _jobs(self, order: numpy.ndarray) -> list:
        n, b = self.num_samples, self.batch_size
        jobs = []
        for start in range(0, len(self) * b, b):
            stop = min(start + b, n)
            job = slice(start, stop) if not self.shuffle else order[start:stop]
            jobs.append(job if self.world == 1 else self._shard_job(job, stop - start))
        return jobs

    def _shard_job(self, job: Any, n: int) -> "_ShardJob":
        """This rank's part of a global batch job of ``n`` samples: gather only the
        shard, or (with augment) the whole batch and keep the shard's rows."""
        lo, hi = shard_bounds(n, self.world, self.rank)
        if self.augment is not None:
            return _ShardJob(job, slice(lo, hi))
        if isinstance(job, slice):
            return _ShardJob(slice(job.start + lo, job.start + hi), None)
        return _ShardJob(job[lo:hi], None)

    def __iter__(self) -> Iterator[tuple[Array, Array]]:
        epoch, skip = self._next_epoch()
        return self._iterate(self._jobs(self.order(epoch))[skip:])

    def _iterate(self, jobs: list) -> Iterator[tuple[Array, Array]]:
        fetch = _Gather(self.images, self.labels)
        source = _Prefetcher(fetch, jobs, self.prefetch) if self.prefetch else map(fetch, jobs)
        try:
            for host_x, host_y, *keep in source:
                yield self.to_device(host_x, host_y, *keep)
        finally:
            if isinstance(source, _Prefetcher):
                source.close()

    def to_device(self, host_x: numpy.ndarray, host_y: numpy.ndarray,
                  keep: "slice | None" = None) -> tuple[Array, Array]:
        """Upload one host batch and convert it as the iterator does: uint8 or float
        ``(B, C, H, W)`` and int ``(B,)`` -> ``(x, y)`` on :attr:`device`. ``keep``:
        the rows to keep after augmentation (a rank's shard of a global batch)."""
        dev = self.device
        if keep is not None:
            host_y = host_y[keep]
        with dev.context():
            x = to_device(host_x, dev)
            y = to_device(numpy.ascontiguousarray(host_y, dtype=numpy.int64), dev)
            scale_uint8 = host_x.dtype == numpy.uint8
            # copy=True: on the CPU to_device may return a view of the dataset,
            # and the steps below work in place.
            x = x.astype(self.dtype, copy=True)
            if self.augment is not None:
                if scale_uint8:
                    x /= 255.0
                    scale_uint8 = False
                x = self.augment(x)
            if keep is not None:
                x = x[keep]
            if self.normalize is not None:
                scale, shift = self.normalize.scale_shift(
                    x, pre_scale=1.0 / 255.0 if scale_uint8 else 1.0)
                x *= scale
                x -= shift
            elif scale_uint8:
                x /= 255.0
        return x, y

    def __repr__(self) -> str:
        return (f"DataLoader(n={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, device={self.device}, "
                f"batches={len(self)})")


class _Gather:
    """Host gather of one batch: ``(images[job], labels[job])`` (job: slice or indices)."""

    def __init__(self, images: numpy.ndarray, labels: numpy.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __call__(self, job: Any) -> tuple:
        if isinstance(job, _ShardJob):
            return self.images[job.gather], self.labels[job.gather], job.keep
        return self.images[job], self.labels[job]


class _ShardJob:
    """A rank's batch job: the samples to gather, and the rows of them to keep
    after augmentation (None: keep all)."""

    __slots__ = ("gather", "keep")

    def __init__(self, gather: Any, keep: "slice | None") -> None:
        self.gather, self.keep = gather, keep
