"""``python -m gpuconv``: the gpuconv command line (see :mod:`gpuconv.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
