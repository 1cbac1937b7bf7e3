"""The compiler: a float PyTorch network to a fixed-point Plan.

Stages, in order:

1. :mod:`.tracing`: trace the network with ``torch.fx`` and propagate shapes.
2. :mod:`.lowering`: lower it to a float graph of linear steps and ReLUs (batch
   norm and input normalisation folded).
3. :mod:`.folding`: fold the ReLU-free tail into one layer and the ReLU-free head
   (a culled first stage) into dense layers of the input.
4. :mod:`.precision`: calibrate magnitudes on images and search the fewest
   weight and activation bits within a tolerance of the float model.
5. :mod:`.assign`: assign scales, shifts, truncations and rings, and quantise
   into the Plan.

:mod:`.driver` runs them (:func:`compile`); :mod:`.relu_count` counts a
network's ReLUs from the same trace.
"""

from .driver import *  # noqa: F403 - compile() and the names of its interface
from .driver import __all__ as _compile_names
from .relu_count import relu_count, relu_report

__all__ = [*_compile_names, "relu_count", "relu_report"]
