"""Machine and software description stored with every benchmark result."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from typing import Any

import numpy

from .. import __version__
from ..backend import get_device

__all__ = ["cpu_model", "blas_info", "machine_info", "load_average", "busy_note",
           "THREAD_VARIABLES"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "CUPY_TF32")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def blas_info() -> Any:
    """NumPy's BLAS: threadpoolctl's view (library, version, threads) when installed,
    else NumPy's build configuration."""
    try:
        import threadpoolctl  # noqa: PLC0415 - optional
    except ImportError:
        pass
    else:
        info = [{k: v for k, v in lib.items() if k in ("user_api", "internal_api", "prefix",
                                                        "version", "num_threads",
                                                        "threading_layer", "architecture")}
                for lib in threadpoolctl.threadpool_info()]
        if info:
            return {"source": "threadpoolctl", "libraries": info}
    try:
        config = numpy.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas") or {}
        # the "... directory" entries are paths on the machine NumPy was built on
        return {"source": "numpy.show_config",
                "blas": {k: v for k, v in blas.items() if not k.endswith("directory")}}
    except Exception as exc:  # older NumPy: no dict mode
        return {"source": "unavailable", "error": f"{type(exc).__name__}: {exc}"}


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _gpu_info() -> dict:
    xp = get_device("cuda").xp
    props = xp.cuda.runtime.getDeviceProperties(0)
    name = props.get("name", b"")
    return {"name": name.decode() if isinstance(name, bytes) else str(name),
            "memory_bytes": int(props.get("totalGlobalMem", 0)),
            "cupy": xp.__version__, "cuda_runtime": int(xp.cuda.runtime.runtimeGetVersion()),
            "cupy_tf32": os.environ.get("CUPY_TF32", "0")}


def machine_info(devices: list[str]) -> dict:
    """CPU, cores, memory, OS, Python/NumPy/BLAS/gpuconv versions, load and (on CUDA) the GPU."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "load_average": load_average(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "blas": blas_info(),
        "gpuconv": __version__,
        "environment": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
    }
    if "cuda" in devices:
        try:
            info["gpu"] = _gpu_info()
        except Exception as exc:  # informative only
            info["gpu"] = {"error": f"{type(exc).__name__}: {exc}"}
    return info


def busy_note(machine: dict) -> str | None:
    """A note when :func:`machine_info`'s load average is above half the cores, else None."""
    load, cores = machine.get("load_average"), machine.get("cpu_affinity") or machine["cpu_count"]
    if load and cores and load[0] > 0.5 * cores:
        return (f"the machine is busy (load average {load[0]} on {cores} cores): CPU "
                "timings are noisy; benchmark on a quiet machine for figures to publish")
    return None
