"""Identical weights on every rank: broadcast from rank 0, and a checksum to prove it.

Data parallelism keeps the replicas identical by construction (same start,
same averaged gradients, same update); :func:`broadcast_model` makes the
start the same (rank 0's freshly initialised or resumed weights), and
:func:`check_identical` (used by ``fit`` when ``GPUCONV_DIST_CHECK=1``, and by
the tests) verifies the claim afterwards.
"""
from __future__ import annotations

import hashlib

from ..backend import to_numpy
from ..layers.base import Layer
from .comm import Communicator

__all__ = ["broadcast_model", "model_checksum", "check_identical", "ReplicaMismatch"]


class ReplicaMismatch(RuntimeError):
    """The ranks' weights differ (a bug, or a non-deterministic BLAS across hosts)."""


def broadcast_model(model: Layer, comm: Communicator, root: int = 0) -> None:
    """Overwrite every rank's parameters and buffers (BatchNorm running statistics)
    with rank ``root``'s, in place (one Bcast per array: done once per ``fit``)."""
    if comm.size == 1:
        return
    arrays = [p.data for p in model.parameters()] + [b for _, b in model.named_buffers()]
    comm.broadcast(arrays, root=root)


def model_checksum(model: Layer) -> str:
    """SHA-256 of the bytes of every parameter and buffer, in order (reads the device)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(to_numpy(p.data).tobytes())
    for name, b in model.named_buffers():
        h.update(name.encode())
        h.update(to_numpy(b).tobytes())
    return h.hexdigest()


def check_identical(model: Layer, comm: Communicator, where: str = "") -> str:
    """The model's checksum, after checking it is the same on every rank
    (ReplicaMismatch naming the ranks that differ from rank 0 otherwise)."""
    mine = model_checksum(model)
    sums = comm.allgather_object(mine)
    differ = [r for r, s in enumerate(sums) if s != sums[0]]
    if differ:
        raise ReplicaMismatch(f"weights differ between ranks{' ' + where if where else ''}: "
                              f"ranks {differ} hold other weights than rank 0")
    return mine
