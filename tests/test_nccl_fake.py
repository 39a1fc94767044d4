"""The NCCL path of data-parallel training, proven without GPUs.

Ranks are threads (tests/fake_comm.py stands in for MPI: rank, size, object
broadcast of NCCL's unique id); each rank's model and data live on its own
fake GPU (``fakecupy:RANK``) of the strict fake CuPy, and gradients and
weights travel through :class:`gpuconv.distributed.nccl.NCCLCommunicator`
over the fake NCCL (tests/fakenccl.py), which reads and writes the raw
device pointers it is given and refuses a communicator used from another GPU.
"""
from __future__ import annotations

import numpy
import pytest

import fakecupy
import fakenccl
from fake_comm import run_ranks
from gpuconv.backend import Device, device_of, to_numpy
from gpuconv.containers import Sequential
from gpuconv.data import DataLoader
from gpuconv.distributed import GradientReducer
from gpuconv.distributed.nccl import NCCLCommunicator
from gpuconv.layers import Conv2D, Dense, Flatten, ReLU, SyncBatchNorm2d
from gpuconv.losses import SoftmaxCrossEntropy
from gpuconv.models import Sequential as Model
from gpuconv.optim import Adam

START = [numpy.random.default_rng(7).normal(0.0, 0.5, size=s)
         for s in [(3, 1, 3, 3), (3,), (3,), (3,), (12, 3), (3,)]]


def _model(device: str) -> Model:
    # SyncBatchNorm: its statistics over the global batch go through NCCL too
    model = Model(Sequential([Conv2D(1, 3, 3, dtype="float64"),
                              SyncBatchNorm2d(3, dtype="float64"), ReLU(), Flatten(),
                              Dense(12, 3, dtype="float64")]).layers)
    for p, start in zip(model.parameters(), START):
        p.data[...] = start
    return model.to(device)


def _nccl(comm) -> NCCLCommunicator:
    return NCCLCommunicator(comm, Device(fakecupy.DEVICE, comm.rank), nccl=fakenccl)


def test_collectives_use_the_ranks_gpu_and_raw_pointers():
    def rank(comm):
        nccl = _nccl(comm)
        xp = fakecupy.xp
        with nccl.device.context():
            a = xp.asarray(numpy.arange(6, dtype=numpy.float32).reshape(2, 3) * (comm.rank + 1))
            b = xp.asarray(numpy.full(4, comm.rank, dtype=numpy.int64))
            strided = xp.asarray(numpy.arange(8.0) + comm.rank)[::2]  # through a copy
        nccl.allreduce_mean([a])
        nccl.allreduce_sum([b, strided])
        w = fakecupy.from_host(numpy.full(3, 10.0 + comm.rank), comm.rank)
        nccl.broadcast([w], root=1)
        assert a.device.id == b.device.id == w.device.id == comm.rank
        return to_numpy(a), to_numpy(b), to_numpy(strided), to_numpy(w)

    for a, b, strided, w in run_ranks(2, rank):
        numpy.testing.assert_array_equal(a, numpy.arange(6).reshape(2, 3) * 1.5)
        numpy.testing.assert_array_equal(b, numpy.ones(4))
        numpy.testing.assert_array_equal(strided, 2 * numpy.arange(0, 8.0, 2) + 1)
        numpy.testing.assert_array_equal(w, numpy.full(3, 11.0))


def test_an_array_of_another_gpu_is_refused():
    def rank(comm):
        nccl = _nccl(comm)
        other = fakecupy.from_host(numpy.ones(3), 1 - comm.rank)
        with pytest.raises(TypeError, match="NCCL: array on GPU"):
            nccl.allreduce_sum([other])
        return True

    assert run_ranks(2, rank) == [True, True]


def test_fit_on_two_fake_gpus_over_nccl_equals_one_process():
    """The distributed training step (broadcast of rank 0's weights, one flat-buffer
    allreduce of the gradients per step, identical optimizer steps) on fake GPUs 0 and 1."""
    rng = numpy.random.default_rng(0)
    x = rng.normal(size=(20, 1, 4, 4))
    y = rng.integers(0, 3, size=20)

    def train(comm):
        nccl = _nccl(comm)
        device = str(nccl.device)
        model = _model(device)
        if comm.rank:  # other starting weights: fit must broadcast rank 0's
            with nccl.device.context():
                for p in model.parameters():
                    p.data += 1.0
        loader = DataLoader((x, y), 10, shuffle=True, seed=1, device=device, dtype="float64",
                            comm=nccl, prefetch=False)
        model.fit(loader, 2, Adam(model, lr=0.01), SoftmaxCrossEntropy(), verbose=0, comm=nccl)
        assert all(device_of(p.data) == nccl.device for p in model.parameters())
        return ([to_numpy(p.data) for p in model.parameters()],
                [h["loss"] for h in model.history.records], nccl.comm.allreduce_calls)

    ((ref, ref_loss, _),) = run_ranks(1, train)
    results = run_ranks(2, train)
    for params, loss, calls in results:
        for p, q in zip(params, ref):
            numpy.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-11)  # BN-fed biases: ~0
        assert loss == pytest.approx(ref_loss, rel=1e-10)
    numpy.testing.assert_array_equal(results[0][0][0], results[1][0][0])
    # 2 epochs x 2 steps: one gradient allreduce per step (one flat float64 buffer),
    # plus the per-epoch statistics; never one call per parameter (6 here)
    assert results[0][2] < 4 * 6


def test_gradient_reducer_makes_one_nccl_call_per_dtype():
    def rank(comm):
        nccl = _nccl(comm)
        model = _model(str(nccl.device))
        with nccl.device.context():
            for p in model.parameters():
                p.grad += float(comm.rank + 1)
        before = nccl.comm.allreduce_calls
        GradientReducer(nccl, model.parameters(), average=False).reduce(4)
        return nccl.comm.allreduce_calls - before, [to_numpy(p.grad) for p in model.parameters()]

    for calls, grads in run_ranks(2, rank):
        assert calls == 1
        for g in grads:
            numpy.testing.assert_array_equal(g, numpy.full(g.shape, 3.0))
