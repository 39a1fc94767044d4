"""The glibc malloc tuning used by fit() and the benchmarks."""
import subprocess
import sys

CODE = """
import numpy, resource, sys
from gpuconv.backend import keep_freed_memory
applied = keep_freed_memory()
def faults_of_reallocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):  # a training step's pattern: several arrays of 4-16 MiB, all freed
        held = [numpy.ones(n, dtype=numpy.float32) for n in (4 << 20, 1 << 20, 3 << 20, 2 << 20)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_reallocating()
print(applied, faults_of_reallocating())
"""


def run(env_value):
    env = {"GPUCONV_MALLOC_TUNING": env_value, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_tuning_reuses_freed_blocks_and_can_be_disabled():
    applied, faults = run("1")
    if sys.platform.startswith("linux") and applied:
        assert faults < 1000  # 5 x 40 MiB re-touched would be ~50,000 page faults
    off_applied, off_faults = run("0")
    assert not off_applied
    if applied:
        assert off_faults > 10 * max(faults, 1)
