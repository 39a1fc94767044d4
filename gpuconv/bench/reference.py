"""Loading the PyTorch reference, which lives outside the package.

gpuconv itself never imports a deep-learning library. The reference
implementation is a plain file, ``benchmarks/torch_reference.py`` in the
repository, loaded by path with :func:`importlib.util.spec_from_file_location`.
It must define:

- ``make_backend(device: str, dtype: str) -> gpuconv.bench.cases.Backend | None``
  (None when PyTorch cannot run on that device, e.g. no CUDA build);
- ``info() -> dict`` (torch version, threads, CUDA device name, ...).

When the file or torch is missing, :func:`load_reference` returns no module
and a one-line note; the PyTorch columns then read "n/a".
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["REFERENCE_FILE", "MODULE_NAME", "Reference", "candidate_paths", "load_reference"]

REFERENCE_FILE = Path("benchmarks") / "torch_reference.py"
MODULE_NAME = "gpuconv_bench_torch_reference"
_REQUIRED = ("make_backend", "info")


@dataclass
class Reference:
    """The loaded reference module (or None) with where it came from and why not."""

    module: ModuleType | None
    path: str | None
    note: str

    @property
    def available(self) -> bool:
        return self.module is not None


def candidate_paths(explicit: "str | os.PathLike | None" = None) -> list[Path]:
    """``[explicit]``, or the default file relative to the current directory and to the
    repository root next to the imported gpuconv package (duplicates removed)."""
    if explicit:
        return [Path(explicit).expanduser()]
    package_root = Path(__file__).resolve().parent.parent.parent
    paths: list[Path] = []
    for path in (Path.cwd() / REFERENCE_FILE, package_root / REFERENCE_FILE):
        if path.resolve() not in [p.resolve() for p in paths]:
            paths.append(path)
    return paths


def load_reference(path: "str | os.PathLike | None" = None) -> Reference:
    """Import the reference file (``path`` or the default locations)."""
    candidates = candidate_paths(path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        where = " or ".join(str(p) for p in candidates)
        return Reference(None, None, f"PyTorch reference not found ({where}); "
                                     "pass --reference PATH")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, found)
    if spec is None or spec.loader is None:
        return Reference(None, str(found), f"cannot load {found} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        sys.modules.pop(MODULE_NAME, None)
        missing = getattr(exc, "name", None)
        reason = "torch is not installed" if missing == "torch" else f"{exc}"
        return Reference(None, str(found), f"PyTorch reference unavailable: {reason}")
    except Exception as exc:  # a broken reference file must not stop gpuconv's rows
        sys.modules.pop(MODULE_NAME, None)
        return Reference(None, str(found), f"PyTorch reference {found} failed to load: "
                                           f"{type(exc).__name__}: {exc}")
    missing = [name for name in _REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        return Reference(None, str(found), f"{found} does not define {', '.join(missing)}")
    return Reference(module, str(found), "")
