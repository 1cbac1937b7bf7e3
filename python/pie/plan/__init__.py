"""The Plan: what the two parties execute, as plain data, and its exact
cleartext interpreter (:mod:`.reference`), which the secure output must equal."""

from .plan import (
    MAX_HE_RING_BITS,
    OUTPUT_REVEALS,
    CalibrationReport,
    ConvTerm,
    FCTerm,
    LinearStep,
    OutputStep,
    Plan,
    PlanFormatError,
    ReluStep,
    ScaleTerm,
    Step,
    TensorSpec,
    Term,
    TruncateStep,
    relu_and_gates,
    truncate_and_gates,
)

__all__ = [
    "MAX_HE_RING_BITS",
    "OUTPUT_REVEALS",
    "CalibrationReport",
    "ConvTerm",
    "FCTerm",
    "LinearStep",
    "OutputStep",
    "Plan",
    "PlanFormatError",
    "ReluStep",
    "ScaleTerm",
    "Step",
    "TensorSpec",
    "Term",
    "TruncateStep",
    "relu_and_gates",
    "truncate_and_gates",
]
