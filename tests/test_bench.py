"""The benchmark suite (gpuconv.bench, benchmarks/): FLOP counts, statistics, timers,
memory probes, the interleaving harness, the PyTorch reference and an end-to-end smoke run.

No timing is asserted anywhere: the figures depend on the machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tracemalloc
import types
import warnings
from pathlib import Path

import numpy
import pytest

from gpuconv.bench import SCHEMA, BenchConfig, add_parser, run
from gpuconv.bench.cases import Backend, Case, build_gpuconv_case
from gpuconv.bench.harness import add_ratios, measure_group, resolve_devices
from gpuconv.bench.peak import measure_sgemm_peak
from gpuconv.bench.reference import load_reference
from gpuconv.bench.report import COLUMNS, format_table, table_rows, write_png
from gpuconv.bench.stats import Stats, conv2d_flops, conv2d_output_size, gflops_per_s, summarize
from gpuconv.bench.timing import (CpuTimer, CupyUsedBytesProbe, EventTimer, NullProbe,
                                  TracemallocProbe, UsedBytes, cupy_event_timer,
                                  used_bytes_hook)
from gpuconv.bench.workloads import (Workload, all_workloads, conv_workloads, make_inputs,
                                     select)
from gpuconv.backend import cuda_is_available, to_numpy

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "benchmarks" / "torch_reference.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

ROW_KEYS = {"workload", "group", "mode", "batch", "device", "backend", "framework", "timer",
            "reps", "times_ms", "median_ms", "min_ms", "max_ms", "mean_ms", "images_per_s",
            "images_per_s_min", "images_per_s_max", "flops", "gflops", "gflops_min",
            "gflops_max", "peak_fraction", "peak_memory_bytes", "memory_method",
            "ratio_vs_torch", "world_size", "allreduce_ms", "allreduce_fraction",
            "round_medians_ms", "error"}
REPORT_KEYS = {"schema", "created", "command", "argv", "settings", "machine", "torch",
               "reference", "peaks", "workloads", "results", "notes", "elapsed_s"}


# ---- FLOP counting and statistics ------------------------------------------------------

def test_conv_flops_formula():
    # 2 * N * OH * OW * O * C * KH * KW, forward+backward three times that
    assert conv2d_flops(1, 1, 1, (1, 1), (1, 1)) == 2
    assert conv2d_flops(64, 32, 64, (3, 3), (16, 16)) == 2 * 64 * 16 * 16 * 64 * 32 * 9
    assert conv2d_flops(8, 3, 5, (3, 2), (7, 4), backward=True) == 3 * 2 * 8 * 7 * 4 * 5 * 3 * 6
    assert gflops_per_s(3e9, 1.5) == pytest.approx(2.0)


def test_conv_output_sizes_of_the_workloads():
    assert conv2d_output_size(32, 3, 1, 1) == 32
    assert conv2d_output_size(32, 3, 2, 1) == 16  # the ResNet stride-2 conv
    assert conv2d_output_size(32, 1, 2, 0) == 16  # its 1x1 stride-2 shortcut
    rows = {w.name: w for w in conv_workloads()}
    fwd = rows["conv3x3s1_32-64_16px:fwd"]
    assert fwd.output_shape == (64, 16, 16)
    assert fwd.flops(128) == 2 * 128 * 16 * 16 * 64 * 32 * 9
    assert rows["conv3x3s1_32-64_16px:fwdbwd"].flops(128) == 3 * fwd.flops(128)
    assert rows["conv3x3s2_32-64_32px:fwd"].output_shape == (64, 16, 16)
    assert rows["conv1x1s2_32-64_32px:fwd"].flops(1) == 2 * 16 * 16 * 64 * 32


def test_workload_set_covers_the_issue():
    names = [w.name for w in all_workloads()]
    for expected in ("conv3x3s1_3-32_32px:fwd", "conv3x3s1_3-32_32px:fwdbwd",
                     "conv3x3s1_32-64_16px:fwdbwd", "conv3x3s1_64-128_8px:fwdbwd",
                     "conv3x3s2_32-64_32px:fwdbwd", "conv1x1s2_32-64_32px:fwdbwd",
                     "maxpool2_32c_32px:fwdbwd", "bn2d_32c_32px:fwdbwd", "dense_2048-512:fwdbwd",
                     "seed-cnn:train", "seed-cnn:eval"):
        assert expected in names
    assert len(names) == len(set(names))
    # the end-to-end model is the CLI's seed-cnn preset
    from gpuconv.models.presets import build_preset
    from gpuconv.io.spec import layer_spec
    model = [w for w in all_workloads() if w.name == "seed-cnn:train"][0]
    assert model.layers == [layer_spec(layer) for layer in build_preset("seed-cnn")]


def test_seed_cnn_specs_come_from_the_cli_preset():
    from gpuconv.bench.presets import SEED_CNN_INPUT, seed_cnn_specs
    from gpuconv.models.presets import INPUT_SHAPE, build_preset
    from gpuconv.io.spec import layer_spec
    specs, source = seed_cnn_specs(7)
    assert source == "gpuconv.models.presets"
    assert specs == [layer_spec(x) for x in build_preset("seed-cnn", 7)]
    assert SEED_CNN_INPUT == INPUT_SHAPE


def test_summarize_median_and_range():
    s = summarize([3.0, 1.0, 2.0])
    assert (s.median, s.min, s.max, s.mean, s.n) == (2.0, 1.0, 3.0, 2.0, 3)
    assert summarize([4.0, 1.0, 2.0, 3.0]).median == 2.5  # even count: mean of the middle two
    assert summarize([5.0]).median == 5.0
    with pytest.raises(ValueError):
        summarize([])


def test_stats_rate_and_scale():
    seconds = Stats(median=0.5, min=0.25, max=1.0, mean=0.5, n=3)
    rate = seconds.rate(100)  # images per second: fastest time -> highest rate
    assert (rate.median, rate.min, rate.max) == (200.0, 100.0, 400.0)
    ms = seconds.scaled(1e3)
    assert (ms.median, ms.min, ms.max) == (500.0, 250.0, 1000.0)


# ---- timers and probes -------------------------------------------------------------------

def test_cpu_timer_uses_its_clock():
    ticks = iter([10.0, 10.25])
    calls = []
    assert CpuTimer(lambda: next(ticks)).measure(lambda: calls.append(1)) == 0.25
    assert calls == [1]


class _FakeCuda:
    """A fake of the CUDA event API: a device clock advanced by queued 'kernels'."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.clock_ms = 0.0

    def make_event(self):
        cuda = self

        class Event:
            def __init__(self) -> None:
                self.time = None
                self.synced = False

            def record(self) -> None:
                cuda.log.append("record")
                self.time = cuda.clock_ms

            def synchronize(self) -> None:
                cuda.log.append("event.synchronize")
                self.synced = True
        return Event()

    def elapsed(self, start, end) -> float:
        assert end.synced, "elapsed time read before the end event was synchronised"
        self.log.append("elapsed")
        return end.time - start.time

    def device_synchronize(self) -> None:
        self.log.append("device.synchronize")


def test_event_timer_records_around_the_call_and_syncs():
    cuda = _FakeCuda()
    timer = EventTimer(cuda.make_event, cuda.elapsed, cuda.device_synchronize)

    def kernel() -> None:
        cuda.log.append("kernel")
        cuda.clock_ms += 12.5

    assert timer.measure(kernel) == pytest.approx(0.0125)
    assert cuda.log == ["device.synchronize", "record", "kernel", "record",
                        "event.synchronize", "elapsed"]
    assert timer.kind == "cuda_events"


def _fake_cupy(cuda: _FakeCuda) -> types.SimpleNamespace:
    """The parts of CuPy the timers and probes use: events, the device, memory hooks (entering
    one registers it in ``hooks``, where a test plays the memory pool's calls)."""
    hooks: list = []

    class MemoryHook:
        def __enter__(self):
            hooks.append(self)
            return self

        def __exit__(self, *exc):
            hooks.remove(self)

    device = types.SimpleNamespace(synchronize=cuda.device_synchronize, id=0)
    return types.SimpleNamespace(
        cuda=types.SimpleNamespace(Event=cuda.make_event, get_elapsed_time=cuda.elapsed,
                                   Device=lambda: device, MemoryHook=MemoryHook),
        hooks=hooks)


def test_cupy_event_timer_with_a_fake_cupy():
    cuda = _FakeCuda()
    timer = cupy_event_timer(_fake_cupy(cuda))

    def kernel() -> None:
        cuda.clock_ms += 3.0

    assert timer.measure(kernel) == pytest.approx(0.003)
    assert cuda.log[0] == "device.synchronize" and "event.synchronize" in cuda.log


def _malloc(hook, mem_size, device_id=0, mem_ptr=1):
    hook.malloc_postprocess(device_id=device_id, size=mem_size - 7, mem_size=mem_size,
                            mem_ptr=mem_ptr, pmem_id=mem_ptr)


def _free(hook, mem_size, device_id=0):
    hook.free_postprocess(device_id=device_id, mem_size=mem_size, mem_ptr=1, pmem_id=1)


def test_used_bytes_tracks_current_and_peak_bytes_in_use():
    used = UsedBytes(device_id=0)
    _malloc(used, 1024)
    _malloc(used, 4096)
    _free(used, 1024)
    assert (used.current, used.peak) == (4096, 5120)
    _malloc(used, 512)                      # a block the pool had cached: in use again
    assert (used.current, used.peak) == (4608, 5120)
    _malloc(used, 1 << 20, mem_ptr=0)       # a failed allocation holds nothing
    _malloc(used, 1 << 20, device_id=1)     # another device's blocks are not counted
    _free(used, 1 << 20, device_id=1)
    assert (used.current, used.peak) == (4608, 5120)
    _free(used, 4608)
    _free(used, 2048)  # allocated before the count began: below zero, like torch's counter
    _malloc(used, 4096)
    assert (used.current, used.peak) == (2048, 5120)
    every_device = UsedBytes()
    _malloc(every_device, 512, device_id=3)
    assert every_device.peak == 512


def test_used_bytes_hook_is_a_cupy_memory_hook():
    import cupy
    from cupy.cuda import memory_hook

    hook = used_bytes_hook(cupy, 0)
    assert isinstance(hook, cupy.cuda.MemoryHook) and isinstance(hook, UsedBytes)
    with hook:  # registration is host-side bookkeeping: no GPU needed
        assert memory_hook.get_memory_hooks()[UsedBytes.name] is hook
        hook.alloc_preprocess(device_id=0, mem_size=512)  # CuPy's no-op for the rest
        _malloc(hook, 2048)
    assert UsedBytes.name not in memory_hook.get_memory_hooks()
    assert hook.peak == 2048


def test_cupy_used_bytes_probe_reports_peak_bytes_in_use():
    cupy = _fake_cupy(_FakeCuda())
    probe = CupyUsedBytesProbe(cupy)
    probe.start()
    (hook,) = cupy.hooks
    _malloc(hook, 1000)
    _malloc(hook, 3000)
    _free(hook, 1000)
    _malloc(hook, 500)  # at most 4000 in use at once; total_bytes would count cached blocks too
    assert probe.stop() == 4000 and cupy.hooks == []
    assert probe.stop() is None  # not started


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_is_available(), reason="needs CUDA")
def test_cupy_used_bytes_probe_on_the_gpu_leaves_cached_blocks_out():
    import cupy

    cached = cupy.empty(8 << 20, dtype=cupy.uint8)
    del cached  # the pool keeps the 8 MiB block
    probe = CupyUsedBytesProbe(cupy)
    probe.start()
    a = cupy.empty(1 << 20, dtype=cupy.uint8)
    b = cupy.empty(1 << 19, dtype=cupy.uint8)
    del a, b
    assert probe.stop() == (1 << 20) + (1 << 19)


def test_tracemalloc_probe_sees_numpy_arrays():
    was_tracing = tracemalloc.is_tracing()
    probe = TracemallocProbe()
    probe.start()
    block = numpy.ones(1 << 18, dtype=numpy.float32)  # 1 MiB
    del block
    peak = probe.stop()
    assert peak >= 1 << 20
    assert tracemalloc.is_tracing() == was_tracing
    assert NullProbe().stop() is None


# ---- the harness with fake backends ------------------------------------------------------

def _fake_backend(name: str, framework: str, order: list[str], seconds: float,
                  fail_at: int | None = None) -> Backend:
    def build(workload, inputs) -> Case:
        calls = {"n": 0}

        def step() -> None:
            calls["n"] += 1
            if fail_at is not None and calls["n"] >= fail_at:
                raise MemoryError("out of memory (fake)")
            order.append(name)

        clock = iter(range(10_000))
        return Case(step, CpuTimer(lambda: next(clock) * seconds))
    return Backend(name, framework, "cpu", build, NullProbe)


def _layer_workload() -> Workload:
    return [w for w in all_workloads(tiny=True) if w.name.startswith("dense")][0]


def test_repetitions_are_interleaved_with_cooldowns():
    order: list[str] = []
    pauses: list[float] = []
    backends = [_fake_backend("A", "gpuconv", order, 0.002),
                _fake_backend("B", "torch", order, 0.004)]
    rows = measure_group(_layer_workload(), 4, backends, reps=3, warmup=2, cooldown=0.5,
                         sleep=pauses.append)
    # warm-ups per backend first (under the memory probe), then A B A B A B
    assert order == ["A", "A", "B", "B", "A", "B", "A", "B", "A", "B"]
    assert pauses == [0.5] * 6  # before every switch of backend, B's warm-ups to A included
    a, b = rows
    assert a["times_ms"] == pytest.approx([2.0] * 3) and b["median_ms"] == pytest.approx(4.0)
    assert a["images_per_s"] == pytest.approx(4 / 0.002)
    assert a["ratio_vs_torch"] == pytest.approx(2.0)  # torch 4 ms / gpuconv 2 ms
    assert b["ratio_vs_torch"] is None
    assert set(a) == ROW_KEYS


def test_a_failing_backend_reports_an_error_and_the_others_continue():
    order: list[str] = []
    backends = [_fake_backend("A", "gpuconv", order, 0.001, fail_at=3),
                _fake_backend("B", "torch", order, 0.001)]
    rows = measure_group(_layer_workload(), 2, backends, reps=4, warmup=1)
    assert rows[0]["error"].startswith("MemoryError") and rows[0]["median_ms"] is None
    assert rows[1]["error"] is None and rows[1]["reps"] == 4
    table = format_table(rows)
    assert "error" in table


def test_add_ratios_is_the_throughput_ratio():
    rows = [{"workload": "w", "batch": 8, "device": "cpu", "framework": f, "median_ms": m,
             "ratio_vs_torch": None} for f, m in (("gpuconv", 20.0), ("torch", 10.0))]
    add_ratios(rows)
    assert rows[0]["ratio_vs_torch"] == pytest.approx(0.5)  # gpuconv half as fast


def test_gpuconv_case_runs_every_mode(device):
    """Every workload's gpuconv step runs on the CPU and on the strict fake CuPy (so the
    bench's own code never mixes host arrays into a device step)."""
    for workload in all_workloads(tiny=True):
        inputs = make_inputs(workload, 2)
        case = build_gpuconv_case(workload, inputs, device, CpuTimer())
        with warnings.catch_warnings():
            if workload.mode == "train-amp":  # its first steps overflow float16 (then skipped)
                warnings.simplefilter("ignore", RuntimeWarning)
            case.step()
            assert case.timer.measure(case.step) > 0
        assert case.state["x"] is not inputs["x"]  # own copy: counted by the memory probe


def test_cuda_backend_uses_events_and_the_used_bytes_probe(monkeypatch):
    import gpuconv.bench.cases as cases
    fake = _fake_cupy(_FakeCuda())
    monkeypatch.setattr(cases, "get_device", lambda spec: types.SimpleNamespace(xp=fake))
    backend = cases.gpuconv_backend("cuda")
    assert (backend.name, backend.framework, backend.device) == ("gpuconv-cupy", "gpuconv",
                                                                 "cuda")
    assert isinstance(backend.memory_probe(), CupyUsedBytesProbe)
    with pytest.raises(ValueError):
        cases.gpuconv_backend("tpu")


def test_sgemm_peak_counts_2n3_flops():
    ticks = iter(range(100))
    timer = CpuTimer(lambda: next(ticks) * 1e-6)  # every product takes 1 microsecond
    peak = measure_sgemm_peak(numpy, "cpu", timer, size=4, reps=3, warmup=1)
    assert peak["gflops"] == pytest.approx(2 * 4 ** 3 / 1e-6 / 1e9)
    assert peak["size"] == 4 and "numpy.matmul" in peak["method"]


def test_select_by_substring_and_glob():
    workloads = all_workloads(tiny=True)
    assert [w.name for w in select(workloads, ["seed-cnn"])] == ["seed-cnn:train",
                                                                 "seed-cnn:train-amp",
                                                                 "seed-cnn:eval"]
    assert all(w.name.endswith(":fwd") for w in select(workloads, ["conv*:fwd"]))
    assert len(select(workloads, None)) == len(workloads)
    with pytest.raises(ValueError, match="matches no workload"):
        select(workloads, ["nothing-like-this"])


def test_device_resolution_without_a_gpu():
    assert resolve_devices("cpu") == (["cpu"], [])
    if cuda_is_available():
        pytest.skip("a GPU is present")
    devices, notes = resolve_devices("all")
    assert devices == ["cpu"] and "CUDA skipped" in notes[0]
    with pytest.raises(RuntimeError, match="CUDA is not usable"):
        resolve_devices("cuda")


# ---- the reference loader and the torch reference ----------------------------------------

def test_reference_missing_or_broken_gives_a_note(tmp_path):
    missing = load_reference(tmp_path / "nope.py")
    assert not missing.available and "not found" in missing.note
    no_torch = tmp_path / "ref.py"
    no_torch.write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    assert load_reference(no_torch).note == "PyTorch reference unavailable: torch is not installed"
    incomplete = tmp_path / "incomplete.py"
    incomplete.write_text("def info():\n    return {}\n")
    assert "make_backend" in load_reference(incomplete).note


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_reference_builds_identical_architectures():
    import torch

    from gpuconv.models import build_model
    from gpuconv.io.spec import MODEL_FORMAT, MODEL_VERSION
    ref = load_reference(REFERENCE)
    assert ref.available, ref.note
    specs = [w.layers for w in all_workloads()] + [[{
        "type": "Conv2D", "config": {"in_channels": 3, "out_channels": 4, "kernel_size": 3,
                                     "stride": 2, "padding": "same"}}]]
    shapes = [w.input_shape for w in all_workloads()] + [(3, 9, 8)]
    for layers, shape in zip(specs, shapes):
        ours = build_model({"format": MODEL_FORMAT, "version": MODEL_VERSION,
                            "dtype": "float32", "layers": layers})
        theirs = ref.module.build_sequential(layers, torch.float32)
        assert sum(p.data.size for p in ours.parameters()) == \
            sum(p.numel() for p in theirs.parameters())
        # frozen parameters (airbench's whitening weight, BatchNorm scales) train neither side
        assert sum(p.data.size for p in ours.trainable_parameters()) == \
            sum(p.numel() for p in theirs.parameters() if p.requires_grad)
        x = numpy.zeros((2,) + tuple(shape), dtype=numpy.float32)
        ours.eval()
        theirs.eval()
        with torch.no_grad():
            assert tuple(theirs(torch.from_numpy(x)).shape) == ours.forward(x).shape
        assert all(p.dtype == torch.float32 for p in theirs.parameters())


# ---- report pieces, CLI hook --------------------------------------------------------------

def test_add_parser_registers_the_bench_subcommand():
    parser = argparse.ArgumentParser(prog="gpuconv")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--batch-sizes", "32,64", "--no-torch"])
    assert callable(args.func) and args.quick and args.no_torch


def test_gpuconv_cli_lists_workloads(capsys):
    from gpuconv.cli import main
    assert main(["bench", "--list", "--tiny", "--workloads", "dense"]) == 0
    assert "dense_128-32:fwdbwd" in capsys.readouterr().out


def test_invalid_settings_exit_2(capsys):
    from gpuconv.bench import main
    assert main(["--tiny", "--no-torch", "--workloads", "no-such-workload"]) == 2
    assert "matches no workload" in capsys.readouterr().err
    if not cuda_is_available():
        assert main(["--tiny", "--no-torch", "--device", "cuda"]) == 2


@pytest.mark.skipif(cuda_is_available(), reason="CUDA is usable here")
def test_cuda_from_gpuconv_device_names_the_variable(monkeypatch, tmp_path, capsys):
    """GPUCONV_DEVICE=cuda without CUDA: the error names the variable, not a --device
    flag that was never given (as train, evaluate and predict do); the flag still wins."""
    from gpuconv.cli import main
    monkeypatch.setenv("GPUCONV_DEVICE", "cuda")
    json_path = str(tmp_path / "b.json")
    assert main(["bench", "--tiny", "--no-torch", "--json", json_path]) == 2
    err = capsys.readouterr().err
    assert "GPUCONV_DEVICE=cuda: CUDA is not usable" in err and "--device cuda" not in err, err
    assert main(["bench", "--nproc", "2", "--no-torch", "--json", json_path]) == 2
    err = capsys.readouterr().err
    assert "GPUCONV_DEVICE=cuda" in err and "--device cuda" not in err, err
    assert main(["bench", "--tiny", "--no-torch", "--device", "cuda", "--json",
                 json_path]) == 2
    assert "--device cuda: CUDA is not usable" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def _amp_workload():
    return next(w for w in all_workloads(tiny=True) if w.mode == "train-amp")


def test_train_amp_workload_is_cuda_only_and_left_out_on_the_cpu_with_a_note():
    workload = _amp_workload()
    assert workload.name == "seed-cnn:train-amp" and workload.devices == ("cuda",)
    assert "labels" in make_inputs(workload, 2)
    report = run(BenchConfig(batch_sizes=(2,), reps=1, warmup=1, tiny=True, use_torch=False,
                             workloads=("seed-cnn",), device="cpu", peak_size=64, peak_reps=1,
                             cooldown=0.0, command=["test"]), log=lambda _: None)
    assert [w["name"] for w in report["workloads"]] == ["seed-cnn:train", "seed-cnn:eval"]
    assert {r["workload"] for r in report["results"]} == {"seed-cnn:train", "seed-cnn:eval"}
    assert any(n.startswith("seed-cnn:train-amp left out: it runs only on cuda")
               for n in report["notes"])


def test_gpuconv_train_amp_case_trains_in_float16_with_float32_master_weights(device):
    workload = _amp_workload()
    case = build_gpuconv_case(workload, make_inputs(workload, 4), device, CpuTimer())
    model = case.state["model"]
    before = [to_numpy(p.data).copy() for p in model.parameters()]
    with warnings.catch_warnings():  # overflowing float16 steps (then skipped) warn on NumPy
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(20):  # the loss scale starts at 2**16 and halves per overflowing step
            case.step()
            if not numpy.array_equal(before[0], to_numpy(model.parameters()[0].data)):
                break
    assert all(layer.compute_dtype == numpy.float16 for layer in model)
    assert all(p.data.dtype == numpy.float32 for p in model.parameters())
    changed = [not numpy.array_equal(b, to_numpy(p.data))
               for b, p in zip(before, model.parameters())]
    assert all(changed), "a step with finite gradients updates every weight"
    assert all(numpy.isfinite(to_numpy(p.data)).all() for p in model.parameters())


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_reference_train_amp_step_runs_with_autocast_and_grad_scaler():
    """The reference's AMP step, on the CPU (torch.autocast supports float16 there): the
    same code path the CUDA rows use, minus the device."""
    import torch
    ref = load_reference(REFERENCE)
    workload = _amp_workload()
    backend = ref.module.make_backend("cpu")
    case = backend.build(workload, make_inputs(workload, 4))
    before = [p.detach().clone() for p in case.state["model"].parameters()]
    after = list(case.state["model"].parameters())
    for _ in range(20):  # as on our side: overflowing steps at the first scales are skipped
        case.step()
        if not torch.equal(before[0], after[0].detach()):
            break
    assert all(p.dtype == torch.float32 for p in after)
    assert all(not torch.equal(b, a.detach()) for b, a in zip(before, after))


def test_run_without_torch_in_process(tmp_path):
    report = run(BenchConfig(batch_sizes=(2,), reps=2, warmup=1, tiny=True, use_torch=False,
                             workloads=("dense", "conv1x1"), peak_size=64, peak_reps=1,
                             cooldown=0.0, command=["test"]), log=lambda _: None)
    assert set(report) == REPORT_KEYS and report["schema"] == SCHEMA
    assert [r["backend"] for r in report["results"]] == ["gpuconv-numpy"] * 3
    assert all(r["ratio_vs_torch"] is None for r in report["results"])
    assert "PyTorch disabled (--no-torch)" in report["notes"]
    assert all(cells[-1] == "n/a" for cells in table_rows(report["results"]))
    conv = [r for r in report["results"] if r["workload"].startswith("conv")]
    assert all(r["gflops"] > 0 and r["peak_fraction"] > 0 for r in conv)
    assert all(r["peak_memory_bytes"] > 0 and r["memory_method"] == "tracemalloc"
               for r in report["results"])
    json.dumps(report, allow_nan=False)


# ---- end to end: the CLI entry point in a fresh process, PyTorch included -----------------

def test_smoke_tiny_quick_with_torch_reference(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "gpuconv.bench", "--tiny", "--quick", "--device", "cpu",
         "--cooldown", "0", "--json", str(out_json), "--png", str(out_png)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert set(report) == REPORT_KEYS and report["schema"] == SCHEMA
    assert report["settings"]["tiny"] and report["settings"]["batch_sizes"] == [2]
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["cpu_model"]
    assert report["peaks"]["cpu"]["gflops"] > 0
    workloads = [w["name"] for w in report["workloads"]]
    results = report["results"]
    for row in results:
        assert set(row) == ROW_KEYS
        assert row["error"] is None, row
        assert row["reps"] == 2 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    torch_rows = [r for r in results if r["framework"] == "torch"]
    if HAS_TORCH:
        assert report["reference"]["available"] and report["torch"]["torch"]
        assert len(results) == 2 * len(workloads) and len(torch_rows) == len(workloads)
        assert all(r["ratio_vs_torch"] > 0 for r in results if r["framework"] == "gpuconv")
    else:
        assert not torch_rows and any("torch" in n for n in report["notes"])
    # the table on stdout: header, one line per row, ratio column
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header[0] == "workload" and lines[0].rstrip().endswith(COLUMNS[-1])
    for name in workloads:
        assert sum(line.startswith(name + " ") for line in lines) == len(results) // len(workloads)
    assert f"results written to {out_json}" in " ".join(proc.stdout.split())  # may wrap
    if HAS_MATPLOTLIB:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in proc.stdout


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_png_of_a_report_without_ratios(tmp_path):
    rows = [{"workload": "w", "batch": 2, "backend": "gpuconv-numpy", "median_ms": 1.0,
             "ratio_vs_torch": None}]
    assert write_png(tmp_path / "c.png", {"results": rows, "machine": {}}) is None
    assert (tmp_path / "c.png").stat().st_size > 0
    assert write_png(tmp_path / "d.png", {"results": []}) is not None


def test_blas_info_without_threadpoolctl_names_no_build_machine_paths(monkeypatch):
    import builtins
    from gpuconv.bench.machine import blas_info

    real_import = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_threadpoolctl)
    info = blas_info()
    assert info["source"] == "numpy.show_config" and info["blas"].get("name")
    assert not [k for k in info["blas"] if "directory" in k]
