"""Every ``cupy.cuda.nccl`` name the NCCL communicator uses exists in CuPy.

Scanned (ast) in gpuconv/distributed/nccl.py: attributes of ``self.nccl`` (the
module: ``NcclCommunicator``, ``get_unique_id``, ``NCCL_SUM``...), methods
called on ``self.comm`` (the NcclCommunicator: ``allReduce``, ``bcast``) and
the datatype constants of ``NCCL_DTYPES``. Checked against ``cupy.cuda.nccl``
where libnccl loads; elsewhere (this CPU machine) against the identifiers
compiled into CuPy's binding module ``cupy_backends.cuda.libs.nccl``, which
exists without the library. The self-test plants a wrong name.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib
import re

import pytest

from gpuconv.distributed import nccl as gnccl

SOURCE = pathlib.Path(gnccl.__file__)


def used_names(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                isinstance(node.value.value, ast.Name) and node.value.value.id == "self" and \
                node.value.attr in ("nccl", "comm"):
            names.add(node.attr)
    return names


def cupy_nccl_names():
    """(a predicate "this name exists in CuPy's NCCL bindings", where) or (None, why)."""
    cupy = pytest.importorskip("cupy")
    module = importlib.import_module("cupy.cuda.nccl")
    if getattr(module, "available", False):
        known = set(dir(module)) | set(dir(module.NcclCommunicator))
        return known.__contains__, "cupy.cuda.nccl"
    spec = importlib.util.find_spec("cupy_backends")
    binaries = list(pathlib.Path(spec.origin).parent.glob("cuda/libs/nccl*.so"))
    if not binaries:
        return None, f"cupy {cupy.__version__} has no NCCL binding module"
    data = binaries[0].read_bytes()
    # an identifier compiled into the module appears as a string of its own
    # (or qualified: "NcclCommunicator.__init__"), not inside a longer identifier
    return (lambda name: re.search(rb"(?<![A-Za-z0-9_])" + re.escape(name.encode())
                                   + rb"(?![A-Za-z0-9_])", data) is not None), binaries[0].name


WANTED = used_names(SOURCE.read_text()) | set(gnccl.NCCL_DTYPES.values())


def test_the_scan_finds_the_collectives():
    assert {"NcclCommunicator", "get_unique_id", "allReduce", "bcast", "NCCL_SUM",
            "NCCL_FLOAT32"} <= WANTED


def test_every_nccl_name_exists_in_cupy():
    exists, where = cupy_nccl_names()
    if exists is None:
        pytest.skip(where)
    missing = sorted(n for n in WANTED if not exists(n))
    assert not missing, f"names missing from {where}: {missing}"


def test_the_check_catches_a_wrong_name():
    planted = used_names("def f(self):\n    self.nccl.NcclComunicator\n    self.comm.allreduce\n")
    assert planted == {"NcclComunicator", "allreduce"}
    exists, where = cupy_nccl_names()
    if exists is None:
        pytest.skip(where)
    assert not any(exists(n) for n in planted)
