"""Weight initialisers, ``gpuconv.init``: the public name of :mod:`gpuconv.layers.init`
(they live with the layers, whose defaults they are)."""
from .layers.init import *  # noqa: F401,F403 - this module is the public face of layers.init
from .layers.init import __all__  # noqa: F401
