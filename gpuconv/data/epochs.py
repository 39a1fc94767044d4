"""What both loaders share: the epoch counter, the seeded epoch order, batch counts,
skipping into an epoch (mid-epoch resume), the global-batch rule across ranks and
the state ``fit`` checkpoints."""
from __future__ import annotations

import math
from typing import Any

import numpy

from ..backend import epoch_order

__all__ = ["EpochBatches"]


class EpochBatches:
    """Base of :class:`~gpuconv.data.DataLoader` and :class:`~gpuconv.data.DeviceDataLoader`.

    A subclass sets ``num_samples``, ``batch_size``, ``shuffle``, ``drop_last`` and
    ``seed``, calls :meth:`_init_epochs` and starts each ``__iter__`` with
    :meth:`_next_epoch`.
    """

    num_samples: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int

    def _init_epochs(self, comm: Any) -> None:
        self.epoch = 0
        self._skip = 0  # batches the next iteration leaves out (skip_batches)
        self.comm = comm
        self.rank, self.world = (0, 1) if comm is None else (int(comm.rank), int(comm.size))
        if self.batch_size % self.world:
            raise ValueError(f"{type(self).__name__}: the global batch_size {self.batch_size} "
                             f"does not divide by the {self.world} ranks; use a multiple of "
                             f"{self.world} (each rank gets batch_size / {self.world})")

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` use epoch ``epoch``'s order."""
        if epoch < 0:
            raise ValueError(f"{type(self).__name__}: epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def skip_batches(self, n: int) -> None:
        """Make the next ``iter(loader)`` start at batch ``n + 1`` of its epoch: the
        first ``n`` batches are neither gathered nor augmented (``fit`` resuming in
        the middle of an epoch). Applies to one iteration only."""
        if isinstance(n, bool) or not isinstance(n, (int, numpy.integer)) or n < 0:
            raise ValueError(f"{type(self).__name__}: skip_batches needs an int >= 0, "
                             f"got {n!r}")
        self._skip = int(n)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))

    def order(self, epoch: int) -> numpy.ndarray:
        """Sample indices (int64, host) in the order epoch ``epoch`` visits them."""
        return epoch_order(self.num_samples, self.seed, epoch, self.shuffle)

    def _next_epoch(self) -> tuple[int, int]:
        """``(epoch, batches to skip)`` of the iteration starting now; advances the counter."""
        epoch, skip = self.epoch, self._skip
        self.epoch, self._skip = epoch + 1, 0
        return epoch, skip
