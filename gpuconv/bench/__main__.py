"""``python -m gpuconv.bench [flags]``: the same as ``gpuconv bench``."""
import sys

from .cli import main

sys.exit(main())
