"""gpuconv.distributed without MPI: the split rule, the size-1 communicator, gradient
averaging, SyncBatchNorm, the settings check, the loader's shards and fit's data
parallel step -- N ranks simulated as N threads (tests/fake_comm.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy
import pytest

import gpuconv
from gpuconv import distributed as dist
from gpuconv.backend import to_device, to_numpy
from gpuconv.cli import parallel
from gpuconv.cli.common import CLIError
from gpuconv.data.device_loader import DeviceDataLoader
from gpuconv.data.loader import DataLoader
from gpuconv.io.checkpoint import load_checkpoint
from gpuconv.layers import BatchNorm1d, BatchNorm2d, Conv2D, Dense, Flatten, ReLU
from gpuconv.layers import SyncBatchNorm1d, SyncBatchNorm2d
from gpuconv.layers.base import Parameter
from gpuconv.losses import SoftmaxCrossEntropy
from gpuconv.models import Sequential
from gpuconv.optim import SGD, Adam
from gpuconv.training.callbacks import Callback
from gpuconv.training.interrupts import TrainingInterrupted

from fake_comm import run_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("n, size", [(16, 2), (7, 2), (1, 2), (10, 3), (2, 4)])
def test_shards_cover_the_batch_in_order_and_differ_by_at_most_one(n, size):
    bounds = [dist.shard_bounds(n, size, r) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(size - 1))
    lengths = [b - a for a, b in bounds]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_without_a_launcher_init_is_a_size_one_noop(monkeypatch):
    for name in dist.env.SIZE_VARS + ("PMIX_RANK",):
        monkeypatch.delenv(name, raising=False)
    dist.world._reset_for_tests()
    try:
        comm = dist.init(device="cpu")
        assert (comm.rank, comm.size, comm.local_rank, comm.backend) == (0, 1, 0, "single")
        a = numpy.arange(3.0)
        assert comm.allreduce_mean([a])[0] is a and a.tolist() == [0, 1, 2]
        comm.broadcast([a])
        comm.barrier()
        assert dist.init() is comm
    finally:
        dist.world._reset_for_tests()
    with pytest.raises(ValueError, match="backend"):
        dist.init(backend="gloo")


def test_plain_train_and_nproc_1_never_import_mpi4py(tmp_path):
    code = ("import sys; from gpuconv.cli import parallel; import argparse; "
            "a = argparse.Namespace(nproc=1, argv=['gpuconv']); "
            "assert parallel.relaunch_if_asked(a) is None; "
            "from gpuconv import distributed as d; c = d.init(device='cpu'); assert c.size == 1; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    env = {k: v for k, v in os.environ.items() if k not in dist.env.SIZE_VARS}
    env["PYTHONPATH"] = ROOT
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_nproc_without_mpi4py_names_the_extra(monkeypatch):
    import argparse
    monkeypatch.setattr(dist, "mpi4py_installed", lambda: False)
    monkeypatch.setattr(dist, "launched_by_mpi", lambda: False)
    with pytest.raises(CLIError, match=r"gpuconv\[mpi\]"):
        parallel.relaunch_if_asked(argparse.Namespace(nproc=2, argv=["gpuconv", "train"]))


def test_nproc_user_errors_stop_before_mpiexec_starts(monkeypatch, tmp_path, capsys):
    from gpuconv.cli import main
    monkeypatch.setattr(dist, "launched_by_mpi", lambda: False)
    monkeypatch.setattr(dist, "relaunch", lambda *a, **k: pytest.fail("relaunched"))
    assert main(["train", "--nproc", "2", "--batch-size", "127", "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 127 is the global batch of the 2 ranks" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    assert main(["train", "--nproc", "2", "--val-split", "10", "--eval-batch-size", "5",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--eval-batch-size 5 is the global batch" in capsys.readouterr().err


def test_relaunch_command_and_one_blas_thread_per_rank():
    cmd = dist.launch.relaunch_command("/x/mpiexec", 2, ["train", "--nproc", "2"])
    assert cmd[:3] == ["/x/mpiexec", "-n", "2"] and cmd[3:6] == [sys.executable, "-m", "gpuconv"]
    assert dist.launch.child_environment({})["OMP_NUM_THREADS"] == "1"
    assert dist.launch.child_environment({"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"
    assert "OPENBLAS_NUM_THREADS" not in dist.launch.child_environment({"OMP_NUM_THREADS": "4"})


def _param(values):
    p = Parameter(numpy.zeros(len(values)))
    p.grad[...] = values
    return p


def test_gradients_are_averaged_by_sample_count_in_one_call_per_dtype():
    def rank(comm):
        params = [_param([1.0, 2.0] if comm.rank == 0 else [4.0, 8.0]),
                  _param([3.0] if comm.rank == 0 else [6.0])]
        reducer = dist.GradientReducer(comm, params)
        reducer.reduce(3 if comm.rank == 0 else 1)   # uneven shards: weights 3/4 and 1/4
        return [p.grad.tolist() for p in params], comm.allreduce_calls, reducer.calls_per_step

    results = run_ranks(2, rank)
    for grads, calls, per_step in results:
        assert grads == [[1.75, 3.5], [3.75]]
        assert calls == 1 and per_step == 1
    assert results[0][0] == results[1][0]


def test_settings_mismatch_names_the_differing_key():
    def rank(comm):
        dist.check_same(comm, {"seed": comm.rank, "batch_size": 64})

    with pytest.raises(dist.SettingsMismatch, match=r"seed \(rank 0: 0; rank 1: 1\)") as info:
        run_ranks(2, rank)
    assert "batch_size" not in str(info.value)
    run_ranks(2, lambda comm: dist.check_same(comm, {"seed": 1}))


@pytest.mark.parametrize("bn, sync, shape", [(BatchNorm2d, SyncBatchNorm2d, (10, 3, 4, 5)),
                                              (BatchNorm1d, SyncBatchNorm1d, (9, 4))])
def test_sync_batchnorm_on_shards_equals_batchnorm_on_the_global_batch(bn, sync, shape, device):
    rng = numpy.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=shape)
    dy = rng.normal(size=shape)
    channels = shape[1]
    ref = bn(channels, dtype="float64")
    ref.weight.data[...] = rng.normal(size=channels)
    y_ref = ref.forward(x)
    # dy is the gradient of the *global* mean loss; each rank's local loss is its own
    # shard mean, so its local dy is dy * n / n_r (fit weights it back by n_r / n)
    dx_ref = ref.backward(dy)

    def rank(comm):
        a, b = dist.shard_bounds(shape[0], comm.size, comm.rank)
        layer = sync(channels, dtype="float64", comm=comm)
        layer.weight.data[...] = ref.weight.data
        layer.to(device)
        y = to_numpy(layer.forward(to_device(x[a:b], device)))
        dx = to_numpy(layer.backward(to_device(dy[a:b] * shape[0] / (b - a), device)))
        layer.to("cpu")
        return a, b, y, dx * (b - a) / shape[0], layer

    results = run_ranks(2, rank)
    y = numpy.concatenate([r[2] for r in results])
    dx = numpy.concatenate([r[3] for r in results])
    numpy.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    for *_, layer in results:
        numpy.testing.assert_allclose(layer.running_mean, ref.running_mean, rtol=1e-12)
        numpy.testing.assert_allclose(layer.running_var, ref.running_var, rtol=1e-12)
    # local weight gradients, weighted by shard share, sum to the global ones
    wsum = sum(r[4].weight.grad * (r[1] - r[0]) / shape[0] for r in results)
    numpy.testing.assert_allclose(wsum, ref.weight.grad, rtol=1e-10)


def test_sync_batchnorm_alone_or_in_eval_is_batchnorm():
    rng = numpy.random.default_rng(0)
    x = rng.normal(size=(6, 3, 2, 2))
    a, b = BatchNorm2d(3, dtype="float64"), SyncBatchNorm2d(3, dtype="float64")
    numpy.testing.assert_array_equal(a.forward(x), b.forward(x))
    numpy.testing.assert_array_equal(a.backward(x), b.backward(x))
    a.eval(), b.eval()
    numpy.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_sync_batchnorm_converter_keeps_parameters_and_saves_as_sync(tmp_path):
    model = Sequential([Conv2D(3, 4, 3, bias=False), BatchNorm2d(4), ReLU(), Flatten(),
                        Dense(4, 2), BatchNorm1d(2)])
    weight = model.layers[1].weight
    comm = dist.SingleProcess()
    dist.sync_batchnorm(model, comm)
    assert type(model.layers[1]) is SyncBatchNorm2d and type(model.layers[5]) is SyncBatchNorm1d
    assert model.layers[1].weight is weight and model.layers[1].comm is comm
    model.save(tmp_path / "m.npz")
    loaded = gpuconv.load_model(tmp_path / "m.npz", device="cpu")
    assert type(loaded.layers[1]) is SyncBatchNorm2d and loaded.layers[1].comm is None


def _shards(size, **kw):
    images = numpy.arange(11 * 2, dtype=numpy.float32).reshape(11, 2, 1, 1)
    labels = numpy.arange(11)

    def rank(comm):
        loader = DataLoader((images, labels), 4, shuffle=True, seed=3, device="cpu",
                            comm=comm, prefetch=False, **kw)
        return [to_numpy(y).tolist() for _, y in loader]

    return run_ranks(size, rank)


def test_loader_shards_are_the_one_process_batches():
    whole = _shards(1)[0]
    for kw in ({}, {"drop_last": True}):
        one = _shards(1, **kw)[0]
        parts = _shards(2, **kw)
        assert len(parts[0]) == len(parts[1]) == len(one)
        assert [a + b for a, b in zip(*parts)] == one
    assert [len(b) for b in whole] == [4, 4, 3]
    assert [len(b) for b in _shards(2)[1]] == [2, 2, 1]  # the last batch: 2 + 1


def test_loader_refuses_a_global_batch_that_does_not_divide():
    comm = dist.SingleProcess()
    comm.size = 3
    with pytest.raises(ValueError, match="does not divide by the 3 ranks"):
        DataLoader((numpy.zeros((4, 1, 1, 1)), numpy.zeros(4, int)), 4, comm=comm)


def _tiny(dtype="float64", bn=False):
    layers = [Conv2D(1, 3, 3, padding="same", bias=not bn, dtype=dtype)]
    if bn:
        layers.append(SyncBatchNorm2d(3, dtype=dtype))
    return Sequential(layers + [ReLU(), Flatten(), Dense(3 * 4 * 4, 3, dtype=dtype)])


def _start_weights(bn):
    rng = numpy.random.default_rng(7)
    return [rng.normal(0.0, 0.5, size=p.data.shape) for p in _tiny(bn=bn).parameters()]


# drawn here, in the main thread: thread ranks share the process's generator, so
# weights drawn on several threads at once would interleave
_START = {bn: _start_weights(bn) for bn in (False, True)}


def _same_tiny(device="cpu", bn=False):
    """A _tiny model with the same (fixed) weights on every thread rank."""
    model = _tiny(bn=bn)
    for p, start in zip(model.parameters(), _START[bn]):
        p.data[...] = start
    model.to(device)
    return model


@pytest.mark.parametrize("bn", [False, True])
def test_fit_on_thread_ranks_equals_one_process(bn):
    rng = numpy.random.default_rng(0)
    x = rng.normal(size=(21, 1, 4, 4))
    y = rng.integers(0, 3, size=21)

    def train(comm):
        model = _same_tiny(bn=bn)
        if comm.rank:  # the other ranks start from other weights: fit broadcasts rank 0's
            for p in model.parameters():
                p.data += 1.0
        loader = DataLoader((x, y), 6, shuffle=True, seed=1, device="cpu", dtype="float64",
                            comm=comm, prefetch=False)
        model.fit(loader, 2, Adam(model, lr=0.01), SoftmaxCrossEntropy(), verbose=0, comm=comm,
                  val_data=loader)
        return model, model.evaluate(loader, comm=comm), model.history.records

    (ref, ref_eval, ref_hist), = run_ranks(1, train)
    results = run_ranks(2, train)
    for model, ev, hist in results:
        for p, q in zip(model.parameters(), ref.parameters()):
            numpy.testing.assert_allclose(p.data, q.data, rtol=1e-10, atol=1e-13)
        assert ev == pytest.approx(ref_eval, rel=1e-10)
        assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in ref_hist], 1e-10)
    assert results[0][1] == results[1][1]


class _CountSteps(Callback):
    def __init__(self):
        self.steps = []

    def on_batch_end(self, step, logs=None):
        self.steps.append((step, logs["size"]))


@pytest.mark.parametrize("nan_policy", ["raise", "skip"])
def test_fit_on_an_empty_shard_takes_the_same_step(nan_policy):
    x = numpy.random.default_rng(0).normal(size=(5, 1, 4, 4))
    y = numpy.array([0, 1, 2, 0, 1])

    def train(comm):
        model = _same_tiny()
        # 5 samples, batch 4 over 4 ranks: the last global batch (1 sample) leaves 3 empty
        loader = DataLoader((x, y), 4, device="cpu", dtype="float64", comm=comm,
                            prefetch=False)
        count = _CountSteps()  # callbacks see every step on every rank (lookahead counts)
        model.fit(loader, 1, SGD(model, lr=0.1), SoftmaxCrossEntropy(), verbose=0, comm=comm,
                  nan_policy=nan_policy, callbacks=[count])  # 'skip': a collective per step
        return [p.data.copy() for p in model.parameters()], [s for s, _ in count.steps]

    ((ref, ref_steps),) = run_ranks(1, train)
    for params, steps in run_ranks(4, train):
        assert steps == ref_steps == [1, 2]
        for p, q in zip(params, ref):
            numpy.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-13)


def _device_batches(comm, skip=0, n=22, batch=8, **kw):
    rng = numpy.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 3, 6, 6), dtype=numpy.uint8)
    loader = DeviceDataLoader((x, numpy.arange(n)), batch, shuffle=True, seed=2, device="cpu",
                              translate=1, flip="alternating", comm=comm, **kw)
    loader.set_epoch(1)
    if skip:
        loader.skip_batches(skip)
    return [(to_numpy(a), to_numpy(b)) for a, b in loader]


def test_device_loader_shards_are_the_one_process_batches_and_skip_batches():
    one = run_ranks(1, _device_batches)[0]
    parts = run_ranks(2, _device_batches)
    assert [len(b) for _, b in one] == [8, 8, 6]
    assert [len(b) for _, b in parts[1]] == [4, 4, 3]
    for (xa, ya), (xb, yb), (x1, y1) in zip(*parts, one):  # same samples, shifts and flips
        numpy.testing.assert_array_equal(numpy.concatenate([ya, yb]), y1)
        numpy.testing.assert_array_equal(numpy.concatenate([xa, xb]), x1)
    later = run_ranks(2, lambda comm: _device_batches(comm, skip=2))
    for rank in (0, 1):
        assert len(later[rank]) == 1
        numpy.testing.assert_array_equal(later[rank][0][0], parts[rank][2][0])
    # the whole epoch again after a skip (it applies to one iteration)
    comm = dist.SingleProcess()
    comm.size = 3
    with pytest.raises(ValueError, match="does not divide by the 3 ranks"):
        _device_batches(comm)


def test_a_summed_loss_sums_the_gradients_and_logs_the_one_process_loss(device):
    rng = numpy.random.default_rng(1)
    x = rng.normal(size=(20, 1, 4, 4))
    y = rng.integers(0, 3, size=20)

    def train(comm):
        model = _same_tiny(device)
        # 20 samples, global batch 8: 8, 8, 4 -- every batch splits evenly over 2 ranks
        loader = DeviceDataLoader((x, y), 8, shuffle=True, seed=1, device=device,
                                  dtype="float64", translate=1, flip="random", comm=comm)
        model.fit(loader, 2, SGD(model, lr=0.01, momentum=0.9),
                  SoftmaxCrossEntropy(reduction="sum"), verbose=0, comm=comm, val_data=loader)
        return [to_numpy(p.data) for p in model.parameters()], model.history.records

    ((ref, ref_hist),) = run_ranks(1, train)
    for params, hist in run_ranks(2, train):
        for p, q in zip(params, ref):
            numpy.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-13)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert [h[key] for h in hist] == pytest.approx([h[key] for h in ref_hist], 1e-10)


class _StopOn(Callback):
    """Asks for a stop (as Ctrl-C would) on one rank only, at one step of one epoch."""

    def __init__(self, rank, at_rank, epoch, step):
        self.rank, self.at_rank, self.at_epoch, self.at_step = rank, at_rank, epoch, step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, step, logs=None):
        if (self.rank, self.epoch, step) == (self.at_rank, self.at_epoch, self.at_step):
            raise KeyboardInterrupt


def test_a_stop_on_one_rank_stops_every_rank_at_that_step_and_resumes_exactly(tmp_path,
                                                                             device):
    rng = numpy.random.default_rng(2)
    x = rng.normal(size=(30, 1, 4, 4))
    y = rng.integers(0, 3, size=30)

    def train(comm, out, epochs=2, stop=None, resume=False):
        model = _same_tiny(device)
        loader = DataLoader((x, y), 6, shuffle=True, seed=1, device=device, dtype="float64",
                            comm=comm, prefetch=False)
        callbacks = [] if stop is None else [_StopOn(comm.rank, *stop)]
        ckpt = out / "checkpoint.npz"
        try:
            model.fit(loader, epochs, Adam(model, lr=0.01), SoftmaxCrossEntropy(), verbose=0,
                      comm=comm, val_data=loader, callbacks=callbacks, checkpoint_path=ckpt,
                      resume_from=ckpt if resume else None)
        except TrainingInterrupted as exc:
            return exc.epoch, exc.step, exc.phase, exc.reason
        return [to_numpy(p.data) for p in model.parameters()], model.history.records

    for name in ("ref", "a", "b"):
        (tmp_path / name).mkdir()
    ((ref, ref_hist),) = run_ranks(1, lambda c: train(c, tmp_path / "ref"))
    # rank 1 alone asks at epoch 2, step 3: both ranks stop there, rank 0 saves
    stops = run_ranks(2, lambda c: train(c, tmp_path / "a", stop=(1, 2, 3)))
    assert stops == [(2, 3, "train", "callback")] * 2
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoint.npz")
    assert ckpt.status == "interrupted" and ckpt.epoch == 1
    assert ckpt.partial["step"] == 3 and ckpt.partial["stats"]["samples"] == 18  # both ranks'
    # one process asks at epoch 1, step 2; the rest runs on 2 ranks
    assert run_ranks(1, lambda c: train(c, tmp_path / "b", stop=(0, 1, 2))) == \
        [(1, 2, "train", "callback")]
    resumed = {"a": run_ranks(1, lambda c: train(c, tmp_path / "a", resume=True)),
               "b": run_ranks(2, lambda c: train(c, tmp_path / "b", resume=True))}
    for results in resumed.values():
        for params, hist in results:
            for p, q in zip(params, ref):
                numpy.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-13)
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert [h[key] for h in hist] == \
                    pytest.approx([h[key] for h in ref_hist], 1e-10)
