"""Kernel layer of the sparse step: the transformer's primitives, and each operation twice, an
eager reference (the specification) and a Triton kernel (the GPU path), and where it pays a CPU
fast path beside the reference, behind one typed function that dispatches inside
(`DYLLM_KERNELS=auto|eager|cpu|triton`). See docs/kernels.md.

| operation | reference (`reference_*`) | CPU fast path | Triton (`triton_*`) |
|---|---|---|---|
| `saliency_attention` | `..._saliency_attention.py` | `cpu_saliency_attention.py` | `...` |
| `gathered_ffn` | `..._gathered_ffn.py` | (the reference) | `...` |
| `kv_update` | `..._kv_update.py` | (the reference) | `...` |

The references and CPU paths are imported (and so registered) here; the Triton modules on first
request.
Nothing here imports anything of dyllm above this package.
"""

from dyllm.kernels.cpu_saliency_attention import saliency_attention_cpu
from dyllm.kernels.dispatch import implementation, register, requested_backend, triton_interpreting
from dyllm.kernels.operations import gathered_ffn, kv_update, saliency_attention
from dyllm.kernels.primitives import row_cosine
from dyllm.kernels.reference_gathered_ffn import FeedForwardWeights, gathered_ffn_reference
from dyllm.kernels.reference_kv_update import kv_update_reference
from dyllm.kernels.reference_saliency_attention import saliency_attention_reference
from dyllm.kernels.row_sets import FlatRows, PaddedRows

__all__ = [
    "FeedForwardWeights",
    "FlatRows",
    "PaddedRows",
    "gathered_ffn",
    "gathered_ffn_reference",
    "implementation",
    "kv_update",
    "kv_update_reference",
    "register",
    "requested_backend",
    "row_cosine",
    "saliency_attention",
    "saliency_attention_cpu",
    "saliency_attention_reference",
    "triton_interpreting",
]
