"""``python -m gpuconv.bench.worker``: one measuring process of ``gpuconv bench --nproc N``
(see :mod:`gpuconv.bench.steps`). Nothing imports this module, so ``-m`` runs it fresh."""
import sys

from .steps import main

if __name__ == "__main__":
    sys.exit(main())
