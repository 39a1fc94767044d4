"""The README's Python API example runs as written (on a tiny synthetic CIFAR-10)."""
import re
from pathlib import Path

from synthetic_cifar import write_cifar

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(tmp_path, monkeypatch):
    code = re.search(r"## The Python API\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README.md lost its '## The Python API' python block"
    source = code.group(1)
    assert "epochs=10" in source
    root = write_cifar(tmp_path / "data", n_train=256, n_test=32, layout="py")
    monkeypatch.setenv("GPUCONV_DATA", str(root))
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(source.replace("epochs=10", "epochs=1"), str(README), "exec"), namespace)
    assert (tmp_path / "cnn.npz").is_file()
    model, same = namespace["model"], namespace["same"]
    x = namespace["data"].images[:8].astype("float32") / 255
    import numpy
    numpy.testing.assert_array_equal(model.predict(x), same.predict(x))


REPO = README.parent
DOCS = [README, REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").rglob("*.md")),
        *sorted((REPO / "docs").rglob("*.txt"))]


def test_readme_speaks_of_the_project_only():
    """No pointers outside the repository, no words about how the project was built."""
    for path in DOCS:
        text = path.read_text()
        for phrase in ("../shared", "make_cifar10", "this session", "seed PyTorch report",
                       "benchmarks issue", "issue note", "development machine",
                       "this repository's workspace", "gpuconv-test", "tested here",
                       "possible here", "second here", "was available", "to be measured"):
            assert phrase not in text, f"{path.name}: {phrase!r}"


def test_readme_install_lines_match_pyproject_and_ci():
    """README's test line is the one .ci/run runs, its CPU-only PyTorch line pins the
    same torch as the test extra, and the example's line count is right."""
    text = README.read_text()
    lines = text.splitlines()
    test_lines = [line for line in lines if line.startswith('pip install -e ".[test')]
    assert test_lines, "README lost its test command"
    ci = (REPO / ".ci" / "run").read_text()
    assert r"""'^pip install -e "\.\[test'""" in ci
    pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    cpu = [line for line in lines if line.startswith("pip install torch==")]
    assert cpu == [f"pip install torch=={pin} --index-url https://download.pytorch.org/whl/cpu"]
    assert "download.pytorch.org" not in ci.split("set -uo")[1]  # CI has no internet
    n = len((REPO / "examples" / "train_cifar10.py").read_text().splitlines())
    assert f"{n}-line CIFAR-10 script" in text
