"""Static scan: every ``xp.<name>`` gpuconv uses exists in CuPy (and generator methods in
cupy.random.Generator), so a NumPy-only name cannot hide in code the CPU tests run.

Scanned (ast, every .py under gpuconv/):

- attribute chains rooted at ``xp`` or at ``<anything>.xp``: ``xp.maximum``,
  ``xp.random.default_rng``, ``xp.linalg.norm``, ``device.xp.zeros``... each
  resolved with getattr against the ``cupy`` module;
- methods called on a seeded generator: ``generator(xp).<name>(...)``,
  ``xp.random.default_rng(...).<name>(...)`` and any variable assigned from
  either in the same scope, checked against ``cupy.random.Generator``.

Known traps (``errstate``, ``sliding_window_view``: NumPy only) must not
appear anywhere in gpuconv. The scanner's self-test plants bad names to prove
it can fail.
"""
from __future__ import annotations

import ast
import functools
import pathlib
import textwrap
from dataclasses import dataclass

import cupy
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gpuconv"
TRAPS = ("errstate", "sliding_window_view", "scatter_add")
GENERATOR_FACTORIES = {"generator"}  # gpuconv.backend.generator(xp)


@dataclass(frozen=True)
class Use:
    where: str      # file:line
    kind: str       # "xp" | "generator"
    chain: tuple    # ("random", "default_rng") for xp.random.default_rng


def _chain(node: ast.AST) -> tuple[list[str], ast.AST]:
    """``a.b.c`` -> (["a", "b", "c"] minus the root, root node)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return parts[::-1], node


def _is_xp(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "xp") or \
        (isinstance(node, ast.Attribute) and node.attr == "xp")


def _is_generator_call(node: ast.AST) -> bool:
    """``generator(...)`` / ``backend.generator(...)`` / ``xp.random.default_rng(...)``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in GENERATOR_FACTORIES
    if isinstance(func, ast.Attribute):
        if func.attr in GENERATOR_FACTORIES:
            return True
        parts, root = _chain(func)
        return _is_xp(root) and parts[-2:] == ["random", "default_rng"]
    return False


def _walk_scope(node: ast.AST):
    """Like ast.walk, but not into nested functions, lambdas or classes."""
    todo = list(ast.iter_child_nodes(node))
    while todo:
        sub = todo.pop()
        yield sub
        if not isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(sub))


class _Scanner(ast.NodeVisitor):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.uses: list[Use] = []
        self.trap_hits: list[str] = []
        self._generator_names: list[set[str]] = [set()]

    # scopes: a variable assigned from generator(...) counts within its function
    def _scoped(self, node: ast.AST) -> None:
        names = set()
        for sub in _walk_scope(node):
            if isinstance(sub, (ast.Assign, ast.AnnAssign)) and sub.value is not None \
                    and _is_generator_call(sub.value):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        names.add(t.id)
                    elif isinstance(t, ast.Attribute):  # self._gen = generator(xp)
                        names.add(ast.unparse(t))
        self._generator_names.append(names | self._generator_names[-1])
        self.generic_visit(node)
        self._generator_names.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_Module(self, node: ast.Module) -> None:
        self._scoped(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        where = f"{self.filename}:{node.lineno}"
        if node.attr in TRAPS:
            self.trap_hits.append(f"{where}: {ast.unparse(node)}")
        parts, root = _chain(node)
        if isinstance(root, ast.Name) and root.id == "xp":
            self.uses.append(Use(where, "xp", tuple(parts)))
            return  # the whole chain is recorded once
        if "xp" in parts[:-1]:  # self.xp.zeros, device.xp.random.default_rng
            self.uses.append(Use(where, "xp", tuple(parts[parts.index("xp") + 1:])))
            return
        if _is_generator_call(node.value) or (
                isinstance(node.value, (ast.Name, ast.Attribute))
                and ast.unparse(node.value) in self._generator_names[-1]):
            self.uses.append(Use(where, "generator", (node.attr,)))
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in TRAPS:
            self.trap_hits.append(f"{self.filename}:{node.lineno}: {node.id}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name in TRAPS:
                self.trap_hits.append(f"{self.filename}:{node.lineno}: import {alias.name}")


def scan_source(source: str, filename: str = "<string>") -> _Scanner:
    scanner = _Scanner(filename)
    scanner.visit(ast.parse(source, filename))
    return scanner


def missing_names(uses: list[Use]) -> list[str]:
    """Human-readable list of uses that CuPy cannot satisfy."""
    problems = []
    for use in uses:
        if use.kind == "generator":
            if not hasattr(cupy.random.Generator, use.chain[0]):
                problems.append(f"{use.where}: generator method .{use.chain[0]}() is not in "
                                "cupy.random.Generator")
            continue
        obj, resolved = cupy, ["xp"]
        for name in use.chain:
            if name in ("shape", "dtype", "ndim", "size"):  # attributes of a result: stop
                break
            if isinstance(obj, type) or callable(obj) and not hasattr(obj, "__path__") \
                    and not isinstance(obj, type(cupy)):
                break  # past a class or function: instance attributes, not module names
            try:
                obj = getattr(obj, name)
            except AttributeError:
                problems.append(f"{use.where}: {'.'.join(resolved + [name])} does not exist in "
                                f"{'cupy' + ''.join('.' + r for r in resolved[1:])}")
                break
            resolved.append(name)
    return problems


@functools.lru_cache(maxsize=1)
def scan_package() -> tuple[list[Use], list[str]]:
    uses, traps = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        scanner = scan_source(path.read_text(encoding="utf-8"), rel)
        uses += scanner.uses
        traps += scanner.trap_hits
    return uses, traps


def test_every_xp_name_exists_in_cupy():
    uses, _ = scan_package()
    assert len([u for u in uses if u.kind == "xp"]) > 50, "scanner found suspiciously few uses"
    problems = missing_names(uses)
    assert not problems, "names CuPy lacks:\n" + "\n".join(problems)


def test_generator_methods_exist_in_cupy_generator():
    uses, _ = scan_package()
    gen_uses = [u for u in uses if u.kind == "generator"]
    assert gen_uses, "no generator(xp).<method> calls found: is the scanner broken?"
    problems = missing_names(gen_uses)
    assert not problems, "\n".join(problems)


def test_known_traps_are_absent():
    _, traps = scan_package()
    assert not traps, "NumPy-only names (CuPy lacks them) used in gpuconv:\n" + "\n".join(traps)


# ---- the scanner can fail ---------------------------------------------------------------

PLANTED = textwrap.dedent('''
    import numpy
    from gpuconv.backend import generator, get_array_module

    def f(x):
        xp = get_array_module(x)
        y = xp.maximum(x, 0)                       # fine
        with xp.errstate(over="ignore"):           # line 8: NumPy only
            z = xp.lib.stride_tricks.sliding_window_view(x, 3)   # line 9: trap list
        w = xp.random.permutation(5)               # fine: module-level function exists
        g = generator(xp)
        a = g.random((2,), dtype=xp.float32)       # fine
        b = g.permutation(5)                       # line 13: not a cupy Generator method
        c = generator(xp).normal(0, 1, (3,))       # line 14
        d = xp.random.default_rng(0).choice(4)     # line 15
        e = xp.linalg.frobnicate(x)                # line 16
        f = xp.fft.rfft(x).real                    # fine
        q = self_like.xp.not_a_function(x)         # line 18
        n = numpy.errstate                         # line 19: trap anywhere
        return y

    def h(gen):
        return gen.permutation(3)                  # unknown variable: not flagged

    def k():
        gen = numpy.random.default_rng(0)          # host generator, other scope: not flagged
        return gen.permutation(3)
''')


def test_scanner_finds_planted_bad_names():
    scanner = scan_source(PLANTED, "planted.py")
    problems = missing_names(scanner.uses)
    text = "\n".join(problems)
    for line, name in [(8, "xp.errstate"), (13, ".permutation()"), (14, ".normal()"), (15, ".choice()"),
                       (16, "xp.linalg.frobnicate"), (18, "xp.not_a_function")]:
        assert any(p.startswith(f"planted.py:{line}:") and name in p for p in problems), \
            f"line {line} ({name}) not reported:\n{text}"
    assert len(problems) == 6, text
    traps = "\n".join(scanner.trap_hits)
    assert "planted.py:8" in traps and "planted.py:9" in traps and "planted.py:19" in traps


@pytest.mark.parametrize("good", ["xp.random.default_rng(1).integers(0, 3)",
                                  "xp.cuda.Device(0)", "xp.float32(1).item()",
                                  "xp.add.at", "xp.linalg.norm(x)"])
def test_scanner_accepts_valid_cupy_names(good):
    problems = missing_names(scan_source(f"def f(x, xp):\n    return {good}\n").uses)
    assert not problems, problems
