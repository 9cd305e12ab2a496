"""Kernel layer of the sparse step: eager references (the specification, the CPU path) and GPU
kernels behind one dispatch (`kernel(name, device)`, overridable with DYLLM_KERNELS)."""

from dyllm.kernels import saliency_attention as _saliency_attention  # noqa: F401 - registers
from dyllm.kernels.dispatch import kernel, register, requested_backend
from dyllm.kernels.row_sets import FlatRows, PaddedRows
from dyllm.kernels.saliency_attention import row_cosine, saliency_attention_reference

__all__ = [
    "FlatRows",
    "PaddedRows",
    "kernel",
    "register",
    "requested_backend",
    "row_cosine",
    "saliency_attention_reference",
]
