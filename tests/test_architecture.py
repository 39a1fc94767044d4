"""The package keeps its one-way architecture and its dependency promises.

backend -> ops -> layers -> containers -> training -> data -> cli / bench:
each part may import only from itself and parts to its left. No
deep-learning library is imported anywhere inside gpuconv/.
"""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpuconv"
ORDER = ["backend", "ops", "layers", "containers", "training", "data", "cli"]
RANK = {part: i for i, part in enumerate(ORDER)}
RANK["bench"] = RANK["cli"]  # bench and cli are the two top-level entry points
FORBIDDEN_TOP = {"torch", "tensorflow", "jax", "keras", "chainer", "mxnet", "paddle"}


def part_of(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else None  # top-level modules are the facade


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported by a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["gpuconv", *path.relative_to(PACKAGE).parent.parts]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def violations(paths) -> list[str]:
    problems = []
    for path in paths:
        part = part_of(path)
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
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


def test_checker_catches_a_rightward_import(tmp_path, monkeypatch):
    fake_pkg = tmp_path / "gpuconv"
    (fake_pkg / "layers").mkdir(parents=True)
    bad = fake_pkg / "layers" / "bad.py"
    bad.write_text("from ..training import losses\nimport torch\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake_pkg)
    problems = violations([bad])
    assert any("imports 'gpuconv.training'" in p for p in problems)
    assert any("deep-learning library 'torch'" in p for p in problems)
