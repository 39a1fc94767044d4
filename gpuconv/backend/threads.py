"""Worker threads for the CPU path, and the BLAS library's own threads.

NumPy runs every elementwise pass on one core; only its BLAS (OpenBLAS) uses
more. gpuconv's CPU kernels already cut the batch into cache-sized chunks
(:mod:`gpuconv.ops.chunks`), and a chunk's work -- im2col, a GEMM, the
crop -- is long enough (a millisecond) for NumPy to run it with the GIL
released almost throughout, so :func:`parallel` hands the chunks to one
Python thread per core. During such a section BLAS must not start its own
threads as well (two callers times two BLAS threads on two cores: measured
5-10x slower under OpenBLAS); :func:`single_threaded_blas` holds it at one
thread and restores it afterwards. Where the BLAS library cannot be found or
controlled (not OpenBLAS), :func:`parallel_ok` is False for BLAS work and the
chunks run on the calling thread, BLAS threading them as before.

Airbench width 0.5, batch 1024, 2 cores: a conv forward at 32->128 @ 15x15 took
213 ms on one thread, 166 ms with OpenBLAS's two threads, 116-135 ms as two
chunk workers with one BLAS thread each.

``GPUCONV_NUM_THREADS`` sets the number of workers (default: the CPUs this
process may run on); 1 turns all of this off. Results are deterministic for a
given number: chunk ``i`` always goes to worker ``i % workers``, and partial
sums are added in worker order.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_blas_lock = threading.Lock()
_blas: tuple | None = None  # (set_num_threads, get_num_threads) or () when unavailable
_local = threading.local()  # in_parallel: a worker of parallel() (no nesting)
_processes_per_host = 1  # data-parallel ranks sharing this host's CPUs (share_cpus)


def available_cpus() -> int:
    """The CPUs this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def num_threads() -> int:
    """Worker threads for chunked CPU work: ``GPUCONV_NUM_THREADS``, else this process's
    share of the CPUs it may run on (all of them, or 1/N of them for N ranks on one host:
    :func:`share_cpus`), at least 1."""
    value = os.environ.get("GPUCONV_NUM_THREADS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ValueError(f"GPUCONV_NUM_THREADS must be an integer, got {value!r}") from None
    return max(1, available_cpus() // _processes_per_host)


def share_cpus(processes: int) -> None:
    """Say that ``processes`` gpuconv processes (data-parallel ranks) share this host's
    CPUs, so that each runs ``1/processes`` of the default worker threads: N ranks with a
    worker per core each would run N threads per core and thrash."""
    global _processes_per_host
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"share_cpus: processes must be a positive int, got {processes!r}")
    _processes_per_host = processes


def loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS shared libraries mapped into this process (Linux; else [])."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {fields[-1] for fields in map(str.split, maps)
                     if len(fields) >= 6 and "openblas" in fields[-1].lower()}
    except OSError:  # not Linux: no way to find it without a dependency
        return []
    return sorted(p for p in paths if os.path.isabs(p) and ".so" in p)


def _thread_functions(path: str) -> tuple:
    """``(set, get)`` thread-count functions of one OpenBLAS library, or ().

    OpenBLAS exports them under its symbol prefix: NumPy's wheels bundle
    scipy-openblas with a ``scipy_`` prefix and a ``64_`` suffix for 64-bit ints.
    """
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return ()
    for prefix in ("scipy_openblas", "openblas"):
        for suffix in ("64_", ""):
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return ()


def _openblas() -> tuple:
    """``(set, get)`` thread-count functions of the (first) OpenBLAS this process loaded,
    or ()."""
    global _blas
    if _blas is None:
        _blas = next((found for found in map(_thread_functions, loaded_openblas()) if found), ())
    return _blas


def limit_blas_threads(threads: int = 1) -> int:
    """Set every loaded OpenBLAS to ``threads`` threads (its own setter: the thread
    variables are read only when NumPy loads its BLAS); returns how many libraries took
    the setting (0 where none was found: MKL/Accelerate builds, non-Linux)."""
    done = 0
    for found in map(_thread_functions, loaded_openblas()):
        if found:
            found[0](int(threads))
            done += 1
    return done


def parallel_ok(uses_blas: bool = False) -> bool:
    """Whether :func:`parallel` will use more than one thread here (not inside a worker;
    for BLAS work only where BLAS's own threads can be held at one)."""
    if num_threads() < 2 or getattr(_local, "in_parallel", False):
        return False
    return not uses_blas or bool(_openblas())


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS at one thread inside the block (restored after); a no-op without OpenBLAS."""
    blas = _openblas()
    if not blas:
        yield
        return
    setter, getter = blas
    with _blas_lock:
        before = getter()
        setter(1)
    try:
        yield
    finally:
        with _blas_lock:
            setter(before)


@contextmanager
def own_cpu_threads() -> Iterator[None]:
    """For a whole training run or benchmark: while gpuconv's workers are on (two or more
    threads, an OpenBLAS it can hold), BLAS stays at one thread for the entire block, not
    only inside :func:`parallel`'s sections -- OpenBLAS's threads, woken by the small
    GEMVs and GEMMs between those sections (channel sums, Dense layers), keep spinning
    afterwards on the cores the workers need (airbench width 0.5 step, 2 cores: 3.14-3.31
    s with BLAS released between sections, 2.75-2.86 s held). Restored at the end."""
    if parallel_ok(uses_blas=True):
        with single_threaded_blas():
            yield
    else:
        yield


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpuconv")
            _pool_size = workers
        return _pool


def parallel(work: Callable[[int, int], T], workers: int | None = None,
             uses_blas: bool = False) -> list[T]:
    """``[work(k, workers) for k in range(workers)]``, the k > 0 on pool threads and k = 0
    on the calling one; results in k order; the first exception is re-raised after all
    finished. ``workers`` defaults to :func:`num_threads`; one worker (or
    :func:`parallel_ok` False) runs ``work(0, 1)`` here. ``uses_blas``: hold BLAS at one
    thread meanwhile."""
    workers = num_threads() if workers is None else workers
    if workers < 2 or not parallel_ok(uses_blas):
        return [work(0, 1)]

    def run(k: int) -> T:
        _local.in_parallel = True
        try:
            return work(k, workers)
        finally:
            _local.in_parallel = False

    with (single_threaded_blas() if uses_blas else _null()):
        futures = [_executor(workers - 1).submit(run, k) for k in range(1, workers)]
        first_error: BaseException | None = None
        try:
            results = [run(0)]
        except BaseException as exc:  # noqa: BLE001 -- re-raised below, after the workers
            first_error, results = exc, [None]
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001
                first_error = first_error or exc
                results.append(None)
        if first_error is not None:
            raise first_error
    return results  # type: ignore[return-value]


@contextmanager
def _null() -> Iterator[None]:
    yield
