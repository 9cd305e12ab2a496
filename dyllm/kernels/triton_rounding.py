"""Rounding float32 results to a kernel's storage dtype the way a GPU does, interpreter included.

A GPU (and torch) rounds float32 -> bfloat16 to the nearest value, ties to even. Triton's CPU
interpreter (3.x) truncates instead, whatever rounding mode is asked for: a bias of up to one
unit in the last place, always towards zero, which compounds through a chain of roundings (the
FFN's norm, SiLU, product) to several units and would make the interpreter's bfloat16 results
disagree with the reference by more than bfloat16's own precision. So under the interpreter the
kernels round in software first: add half a unit (ties to even) to the float32 bit pattern and
clear the low 16 bits, after which truncating is exact. On a GPU `software_rounding` is False
and the branch compiles away. (Subnormal bfloat16 values are flushed by the interpreter either
way; activations never live there.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dyllm.kernels.dispatch import triton_interpreting


def software_rounding(dtype: torch.dtype) -> bool:
    """Whether kernels storing `dtype` must round in software (bfloat16 under the interpreter)."""
    return dtype == torch.bfloat16 and triton_interpreting()


@triton.jit
def round_to(x, dtype: tl.constexpr, SOFTWARE_ROUNDING: tl.constexpr):
    """float32 `x` rounded to nearest (ties to even) in `dtype`."""
    if SOFTWARE_ROUNDING:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)
