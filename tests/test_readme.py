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
