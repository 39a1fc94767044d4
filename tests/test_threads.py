"""gpuconv.backend.threads: worker threads for the CPU path and the BLAS thread hold."""
from __future__ import annotations

import threading

import numpy
import pytest

from gpuconv.backend import threads
from gpuconv.ops import conv as conv_ops
from gpuconv.ops import special


def test_num_threads_from_the_environment(monkeypatch):
    monkeypatch.setenv("GPUCONV_NUM_THREADS", "3")
    assert threads.num_threads() == 3
    monkeypatch.setenv("GPUCONV_NUM_THREADS", "0")
    assert threads.num_threads() == 1
    monkeypatch.setenv("GPUCONV_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="GPUCONV_NUM_THREADS"):
        threads.num_threads()
    monkeypatch.delenv("GPUCONV_NUM_THREADS")
    assert threads.num_threads() >= 1


def test_ranks_on_one_host_share_its_cpus(monkeypatch):
    """N ranks of a CPU job on one host run cpus/N workers each (not N per core), unless
    GPUCONV_NUM_THREADS says otherwise; distributed.init calls share_cpus(local_size)."""
    monkeypatch.delenv("GPUCONV_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setattr(threads, "_processes_per_host", 1)
    assert threads.num_threads() == 8
    threads.share_cpus(2)
    assert threads.num_threads() == 4
    threads.share_cpus(16)
    assert threads.num_threads() == 1
    monkeypatch.setenv("GPUCONV_NUM_THREADS", "3")
    assert threads.num_threads() == 3
    with pytest.raises(ValueError, match="share_cpus"):
        threads.share_cpus(0)


def test_parallel_runs_every_worker_in_order_and_reraises(monkeypatch):
    monkeypatch.setenv("GPUCONV_NUM_THREADS", "3")
    seen = []

    def work(k, workers):
        seen.append((k, workers, threading.current_thread() is threading.main_thread()))
        # no nesting: inside a worker, parallel() runs inline
        assert threads.parallel(lambda j, n: (j, n)) == [(0, 1)]
        return k * 10

    assert threads.parallel(work) == [0, 10, 20]
    assert sorted(seen) == [(0, 3, True), (1, 3, False), (2, 3, False)]

    def fails(k, workers):
        if k == 1:
            raise KeyError("worker 1")
        return k

    with pytest.raises(KeyError, match="worker 1"):
        threads.parallel(fails)
    monkeypatch.setenv("GPUCONV_NUM_THREADS", "1")
    assert threads.parallel(lambda k, n: (k, n)) == [(0, 1)]


def test_single_threaded_blas_holds_and_restores():
    blas = threads._openblas()
    if not blas:
        pytest.skip("NumPy's BLAS is not an OpenBLAS this module can hold")
    setter, getter = blas
    before = getter()
    with threads.single_threaded_blas():
        assert getter() == 1
        with threads.single_threaded_blas():  # nests
            assert getter() == 1
        assert getter() == 1
    assert getter() == before


def test_results_do_not_depend_on_scheduling_and_match_one_thread(monkeypatch):
    """Chunk i always goes to worker i % workers: repeated runs are bitwise identical, and
    equal one thread's up to the order of the partial weight-gradient sums."""
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((9, 5, 6, 7))
    w = rng.standard_normal((4, 5, 3, 3))
    dy = rng.standard_normal((9, 4, 6, 7))

    def step():
        y, saved = conv_ops.conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), chunk=2)
        return [y] + list(conv_ops.conv2d_backward(dy, saved, w, x.shape, (1, 1), (1, 1, 1, 1),
                                                   (1, 1), True))

    monkeypatch.setenv("GPUCONV_NUM_THREADS", "3")
    first, again = step(), step()
    for a, b in zip(first, again):
        numpy.testing.assert_array_equal(a, b)
    monkeypatch.setenv("GPUCONV_NUM_THREADS", "1")
    for a, b in zip(step(), first):
        numpy.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    big = rng.standard_normal(3 * special.PARALLEL_CHUNK + 5).astype(numpy.float32)
    one = special.gelu_with_derivative(big)
    monkeypatch.setenv("GPUCONV_NUM_THREADS", "3")
    for a, b in zip(special.gelu_with_derivative(big), one):  # elementwise: bitwise equal
        numpy.testing.assert_array_equal(a, b)
