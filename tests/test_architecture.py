"""The package keeps its one-way architecture and its dependency promises.

backend -> ops -> layers -> containers -> losses -> optim -> metrics -> amp -> io
-> distributed -> training -> models -> data -> recipes -> cli / bench: each part may
import only from itself and parts to its left. The public aliases ``gpuconv/init.py`` (of
``layers.init``) and ``gpuconv/datasets.py`` (of ``data.datasets``) rank with
the part they re-export. No deep-learning library is imported anywhere inside
gpuconv/, no gpuconv module is aliased in ``sys.modules``, and no gpuconv module is
imported inside a function (the one allowed lazy import keeps ``import
gpuconv.cli`` light).
"""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpuconv"
# distributed sits just left of training: the training loop, the DataLoader and the
# CLI use its communicators, and it needs only backend (arrays, devices) and layers
# (parameters, the SyncBatchNorm converter) -- no numerics below it may depend on it
# (SyncBatchNorm in layers takes any object with allreduce_sum, not an import).
ORDER = ["backend", "ops", "layers", "containers", "losses", "optim", "metrics", "amp", "io",
         "distributed", "training", "models", "data", "recipes", "cli"]
RANK = {part: i for i, part in enumerate(ORDER)}
RANK["bench"] = RANK["cli"]  # bench and cli are the two top-level entry points
RANK["init"] = RANK["layers"]  # gpuconv/init.py: the public name of layers/init.py
RANK["datasets"] = RANK["data"]  # gpuconv/datasets.py: the public name of data/datasets/
FACADE = {"__init__", "__main__"}  # the package's face may import every part
LAZY_IMPORTS_ALLOWED = {"cli/__init__.py"}  # build_parser imports the subcommands lazily
FORBIDDEN_TOP = {"torch", "tensorflow", "jax", "keras", "chainer", "mxnet", "paddle"}


def part_of(path: Path) -> str | None:
    """The part a file belongs to: its top folder, or a top-level module's own name;
    None for the package facade."""
    rel = path.relative_to(PACKAGE)
    name = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    return None if name in FACADE else name


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = ["gpuconv", *path.relative_to(PACKAGE).parent.parts]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path, tree: ast.AST | None = None) -> list[tuple[int, str]]:
    """Absolute module names imported by a file, relative imports resolved;
    ``from gpuconv import x`` counts as importing ``gpuconv.x``."""
    tree = tree or ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = _resolve(path, node)
            if name == "gpuconv":
                found += [(node.lineno, f"gpuconv.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, name))
    return found


def function_level_imports(path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """gpuconv modules imported inside a function body."""
    found = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = ast.Module(body=func.body, type_ignores=[])
            found += [(line, m) for line, m in imported_modules(path, body)
                      if m.split(".")[0] == "gpuconv"]
    return found


def module_aliases(tree: ast.AST) -> list[int]:
    """Lines that assign ``sys.modules[<key>]`` for a key naming a gpuconv module
    (a literal starting with ``gpuconv.`` or built from ``__name__``). Loading a
    file from outside the package under its own name (bench/reference.py,
    importlib's documented recipe) is not an alias."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if (isinstance(target, ast.Subscript) and ast.unparse(target.value).endswith("sys.modules")):
                key = ast.unparse(target.slice)
                if "__name__" in key or key.strip("'\"f").startswith("gpuconv."):
                    lines.append(node.lineno)
    return lines


def violations(paths) -> list[str]:
    problems = []
    for path in paths:
        part = part_of(path)
        text = path.read_text()
        tree = ast.parse(text, filename=str(path))
        rel = path.relative_to(PACKAGE).as_posix()
        where_file = f"{path.relative_to(PACKAGE.parent)}"
        for line in module_aliases(tree):
            problems.append(f"{where_file}:{line}: aliases a gpuconv module in sys.modules "
                            "(make the module a real file)")
        if rel not in LAZY_IMPORTS_ALLOWED:
            for line, module in function_level_imports(path, tree):
                problems.append(f"{where_file}:{line}: imports {module!r} inside a function "
                                "(import at module level; a cycle means a part is misplaced)")
        for line, module in imported_modules(path, tree):
            top = module.split(".")[0]
            where = f"{where_file}:{line}"
            if top in FORBIDDEN_TOP:
                problems.append(f"{where} imports deep-learning library {module!r}")
            if part is None or top != "gpuconv" or module == "gpuconv":
                continue
            target = module.split(".")[1]
            if target in RANK and part in RANK and RANK[target] > RANK[part]:
                problems.append(f"{where}: part {part!r} imports {module!r} (a part to its right)")
    return problems


def test_parts_import_only_leftwards_and_no_dl_library():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    unknown = {part_of(f) for f in files} - set(RANK) - {None}
    assert not unknown, f"new top-level parts must be placed in ORDER: {unknown}"
    problems = violations(files)
    assert not problems, "\n".join(problems)


def test_public_names_are_real_modules():
    for name in ("losses", "metrics", "amp", "init", "datasets"):
        assert (PACKAGE / f"{name}.py").is_file(), name
    for name in ("optim", "models", "io", "training", "data", "layers"):
        assert (PACKAGE / name / "__init__.py").is_file(), name
    assert (PACKAGE / "optim" / "lr_scheduler.py").is_file()


@pytest.mark.parametrize("source, expected", [
    ("from ..training import loop\nimport torch\n", "imports 'gpuconv.training'"),
    ("from .. import models\n", "imports 'gpuconv.models'"),
    ("import gpuconv.io.spec\n", "imports 'gpuconv.io.spec'"),
    ("def f():\n    from ..ops import conv\n", "inside a function"),
    ("import sys\nsys.modules['gpuconv.x'] = sys\n", "aliases a gpuconv module"),
    ("import sys\nsys.modules[__name__ + '.x'] = sys\n", "aliases a gpuconv module"),
])
def test_checker_catches_a_wrong_import(tmp_path, monkeypatch, source, expected):
    fake_pkg = tmp_path / "gpuconv"
    (fake_pkg / "layers").mkdir(parents=True)
    bad = fake_pkg / "layers" / "bad.py"
    bad.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake_pkg)
    problems = violations([bad])
    assert any(expected in p for p in problems), problems
    if "torch" in source:
        assert any("deep-learning library 'torch'" in p for p in problems)


def test_checker_ranks_top_level_modules(tmp_path, monkeypatch):
    fake_pkg = tmp_path / "gpuconv"
    fake_pkg.mkdir()
    (fake_pkg / "losses.py").write_text("from .optim import SGD\n")
    (fake_pkg / "amp.py").write_text("from .layers.base import Layer\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake_pkg)
    assert part_of(fake_pkg / "losses.py") == "losses"
    problems = violations([fake_pkg / "losses.py", fake_pkg / "amp.py"])
    assert len(problems) == 1 and "part 'losses' imports 'gpuconv.optim'" in problems[0]
