"""Kernel layer of the sparse step: eager references (the specification, the CPU path) and
Triton kernels (the GPU path) behind one dispatch, `kernel(name, device)`, overridable with
DYLLM_KERNELS=auto|eager|triton. See docs/kernels.md.

| kernel | reference | Triton |
|---|---|---|
| `saliency_attention` | `saliency_attention.py` | `triton_saliency_attention.py` |
| `gathered_ffn` | `gathered_ffn.py` | `triton_gathered_ffn.py` |
| `kv_update` | `kv_update.py` | `triton_kv_update.py` |

The references are imported (and so registered) here; the Triton modules on first request.
"""

from dyllm.kernels import gathered_ffn as _gathered_ffn  # noqa: F401 - registers
from dyllm.kernels import kv_update as _kv_update  # noqa: F401 - registers
from dyllm.kernels import saliency_attention as _saliency_attention  # noqa: F401 - registers
from dyllm.kernels.dispatch import kernel, register, requested_backend, triton_interpreting
from dyllm.kernels.gathered_ffn import FeedForwardWeights, gathered_ffn_reference
from dyllm.kernels.kv_update import kv_update_reference
from dyllm.kernels.row_sets import FlatRows, PaddedRows
from dyllm.kernels.saliency_attention import row_cosine, saliency_attention_reference

__all__ = [
    "FeedForwardWeights",
    "FlatRows",
    "PaddedRows",
    "gathered_ffn_reference",
    "kernel",
    "kv_update_reference",
    "register",
    "requested_backend",
    "row_cosine",
    "saliency_attention_reference",
    "triton_interpreting",
]
