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
def faults_of_reallocating_big():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):  # airbench at batch 1024: activations of 30-130 MiB, above the threshold
        held = [numpy.ones(n, dtype=numpy.float32) for n in (24 << 20, 16 << 20)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_reallocating()
faults_of_reallocating_big()
print(applied, faults_of_reallocating(), faults_of_reallocating_big())
"""


def run(env_value):
    env = {"GPUCONV_MALLOC_TUNING": env_value, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    applied, faults, big_faults = out.stdout.split()
    return applied == "True", int(faults), int(big_faults)


def test_tuning_reuses_freed_blocks_and_can_be_disabled():
    applied, faults, big_faults = run("1")
    if sys.platform.startswith("linux") and applied:
        assert faults < 1000  # 5 x 40 MiB re-touched would be ~50,000 page faults
        assert big_faults < 1000  # 3 x 160 MiB: ~120,000 in 4 KiB pages (fewer if huge)
    off_applied, off_faults, off_big_faults = run("0")
    assert not off_applied
    if applied:
        assert off_faults > 10 * max(faults, 1)
        assert off_big_faults > 10 * max(big_faults, 1)
