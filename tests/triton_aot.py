"""Compile every Triton kernel for an H100/H200-class GPU (sm_90) without one.

Triton's interpreter runs a kernel as Python, so it misses what only the compiler checks: a
variable whose type differs between the branches of a runtime `if`, a global that is not a
constexpr, a `tl.dot` tile smaller than 16. This module compiles each kernel ahead of time, front
end, LLVM and ptxas, in the configurations a GPU runs (bfloat16 with model-sized tiles, float32
with IEEE products). It must run in a process where TRITON_INTERPRET is unset, which is why
tests/test_triton_kernels.py runs it as `python -m tests.triton_aot`; each kernel compiled
prints one line starting with "compiled".
"""

from __future__ import annotations

import os
from collections.abc import Callable

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("tests.triton_aot compiles for a GPU; unset TRITON_INTERPRET")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dyllm.kernels import triton_gathered_ffn, triton_kv_update
from dyllm.kernels import triton_saliency_attention as attention

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(kernel, pointer_types: dict[str, str], constexprs: dict, num_warps: int) -> None:
    """Compile `kernel` with pointers typed as given, float arguments fp32, the rest int32."""
    floats = {"scale", "eps"}

    def argument_type(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name in pointer_types:
            return "*" + pointer_types[name]
        return "fp32" if name in floats else "i32"

    signature = {name: argument_type(name) for name in kernel.arg_names}
    source = ASTSource(kernel, signature, constexprs=constexprs)
    triton.compile(source, target=TARGET, options={"num_warps": num_warps})
    shown = ", ".join(f"{k}={v}" for k, v in constexprs.items())
    print(f"compiled {kernel.__name__} ({shown})")


def configurations(dtype: str) -> list[tuple[Callable, dict[str, str], dict, int]]:
    """(kernel, pointer types, constexprs, warps) for storage dtype `dtype` ("bf16", "fp32")."""
    fp32 = dtype == "fp32"
    attention_pointers = dict.fromkeys(
        ("q_ptr", "key_ptr", "value_ptr", "old_ptr", "delta_ptr", "new_ptr"), dtype
    ) | {
        "exact_ptr": "u8",
        "order_ptr": "i32",
        "column_ptr": "i64",
        "column_valid_ptr": "u8",
        "key_mask_ptr": "u8",
        "partial_ptr": "fp32",
    }
    attention_constants = {
        "HAS_KEY_MASK": True,
        "DOT_FP32": fp32,
        "DOT_PRECISION": "ieee" if fp32 else "tf32",
        "SOFTWARE_ROUNDING": False,
        "BLOCK_Q": 64,
        "BLOCK_L": 64,
        "BLOCK_S": 64,
        "BLOCK_D": 128,
    }
    row_pointers = dict.fromkeys(
        ("hidden_ptr", "weight_ptr", "normed_ptr", "gate_ptr", "up_ptr", "out_ptr", "rows_ptr"),
        dtype,
    ) | {
        "batch_index_ptr": "i64",
        "slot_ptr": "i64",
        "position_ptr": "i64",
        "valid_ptr": "u8",
        "target_ptr": dtype,
    }
    kv_pointers = dict.fromkeys(
        ("key_rows_ptr", "value_rows_ptr", "key_cache_ptr", "value_cache_ptr", "delta_ptr"), dtype
    ) | {
        "cos_ptr": "fp32",
        "sin_ptr": "fp32",
        "batch_index_ptr": "i64",
        "position_ptr": "i64",
        "valid_ptr": "u8",
    }
    row_tiles = {"BLOCK_ROWS": 4, "BLOCK_COLUMNS": 1024}
    return [
        (attention._saliency_attention_kernel, attention_pointers, attention_constants, 8),
        (
            triton_gathered_ffn._gather_rms_norm_kernel,
            row_pointers,
            {"SOFTWARE_ROUNDING": False} | row_tiles,
            4,
        ),
        (
            triton_gathered_ffn._silu_mul_kernel,
            row_pointers,
            {"SOFTWARE_ROUNDING": False, "BLOCK": 1024},
            4,
        ),
        (triton_gathered_ffn._scatter_rows_kernel, row_pointers, row_tiles, 4),
        *(
            (
                triton_kv_update._kv_update_kernel,
                kv_pointers,
                {
                    "FULL_PRECISION": full,
                    "SOFTWARE_ROUNDING": False,
                    "BLOCK_ROWS": 32,
                    "BLOCK_HALF": 64,
                },
                4,
            )
            for full in (True, False)
        ),
    ]


def main() -> None:
    for dtype in ("bf16", "fp32"):
        for kernel, pointers, constants, warps in configurations(dtype):
            compile_kernel(kernel, pointers, constants, warps)


if __name__ == "__main__":
    main()
