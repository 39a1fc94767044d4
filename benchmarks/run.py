#!/usr/bin/env python3
"""Run the gpuconv benchmark suite from a checkout: ``python benchmarks/run.py [flags]``.

The same code and flags as ``gpuconv bench`` and ``python -m gpuconv.bench``
(see benchmarks/README.md); works without installing gpuconv.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # the checkout's gpuconv, installed or not

from gpuconv.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
