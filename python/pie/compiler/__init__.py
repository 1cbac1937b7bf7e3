"""The compiler: a float PyTorch network to a fixed-point Plan.

Stages: :mod:`.tracing` (torch.fx), :mod:`.lowering` (linear steps and ReLUs,
batch norm and normalisation folded), then the precision search and the
scale and ring assignment of :mod:`.driver`; :mod:`.relu_count` counts a
network's ReLUs from the same trace.
"""

from .driver import (
    DEFAULT_CALIBRATION_IMAGES,
    REVEALED_FIELDS,
    CompileError,
    Tolerance,
    UnsupportedOpError,
    compile,
)
from .relu_count import relu_count, relu_report

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "REVEALED_FIELDS", "CompileError", "Tolerance",
           "UnsupportedOpError", "compile", "relu_count", "relu_report"]
