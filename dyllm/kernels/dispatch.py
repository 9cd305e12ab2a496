"""One switch between each kernel's implementations: the eager reference, CPU fast paths and the
GPU kernels.

Callers use the typed functions of `dyllm.kernels.operations`; this module is the registry they
dispatch through. `DYLLM_KERNELS` (or a `backend` argument) chooses: `eager` forces the PyTorch
reference, `triton` forces the GPU kernel, `cpu` takes a kernel's CPU fast path where it has one
(plain PyTorch shaped for a CPU's caches, held to the reference by tests) and the reference
otherwise, `auto` (default) takes Triton for CUDA tensors when Triton is installed, the CPU fast
path for CPU tensors, and the reference otherwise. Tests set it to compare the paths.

Triton kernel modules (and triton itself) are imported on first request, not with the package:
Triton decides when it is imported, and when each kernel is defined, whether code is compiled for
the GPU or run by its CPU interpreter (`TRITON_INTERPRET=1`), so a process that sets the variable
before its first Triton kernel gets interpreted kernels, and CPU-only runs never pay for
importing Triton. Forcing `triton` on CPU tensors is allowed only under the interpreter.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

BACKENDS = ("auto", "eager", "cpu", "triton")
IMPLEMENTATION_KINDS = ("eager", "cpu", "triton")
"""What `register` accepts: the reference, a CPU fast path, a Triton kernel."""

TRITON_MODULES = {
    "saliency_attention": "dyllm.kernels.triton_saliency_attention",
    "gathered_ffn": "dyllm.kernels.triton_gathered_ffn",
    "kv_update": "dyllm.kernels.triton_kv_update",
}
"""Kernel name -> the module whose import registers its Triton implementation."""

_IMPLEMENTATIONS: dict[str, dict[str, Callable[..., Any]]] = {}


def register(name: str, backend: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make `function` the `backend` implementation of kernel `name`."""
    if backend not in IMPLEMENTATION_KINDS:
        raise ValueError(
            f"backend must be one of {', '.join(IMPLEMENTATION_KINDS)}, got {backend!r}"
        )

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        _IMPLEMENTATIONS.setdefault(name, {})[backend] = function
        return function

    return decorate


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for by argument or by DYLLM_KERNELS (default auto)."""
    choice = backend or os.environ.get("DYLLM_KERNELS", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"DYLLM_KERNELS={choice!r}; choose one of {', '.join(BACKENDS)}")
    return choice


def implementation(
    name: str, device: torch.device, backend: str | None = None
) -> Callable[..., Any]:
    """The implementation of kernel `name` to run on `device`."""
    implementations = _IMPLEMENTATIONS.get(name)
    if not implementations:
        raise KeyError(f"no kernel named {name!r} is registered")
    choice = requested_backend(backend)
    if choice == "auto":
        if device.type == "cuda" and _load_triton(name):
            choice = "triton"
        else:
            choice = "cpu" if device.type == "cpu" and "cpu" in implementations else "eager"
    elif choice == "cpu":
        choice = "cpu" if "cpu" in implementations else "eager"  # no fast path: the reference
    elif choice == "triton":
        if device.type != "cuda" and not triton_interpreting():
            raise ValueError(
                f"the Triton kernels run on CUDA tensors, got {device.type} tensors; use "
                "DYLLM_KERNELS=eager, or set TRITON_INTERPRET=1 to run Triton's interpreter"
            )
        if not _load_triton(name) and importlib.util.find_spec("triton") is None:
            raise ValueError("DYLLM_KERNELS=triton needs the triton package; pip install triton")
    if choice not in implementations:
        raise ValueError(f"kernel {name!r} has no {choice} implementation; use DYLLM_KERNELS=eager")
    return implementations[choice]


def triton_interpreting() -> bool:
    """True when Triton's CPU interpreter runs the kernels (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _load_triton(name: str) -> bool:
    """Import the module registering kernel `name`'s Triton implementation; False when there is
    none or Triton is not installed."""
    if "triton" in _IMPLEMENTATIONS.get(name, {}):
        return True
    module = TRITON_MODULES.get(name)
    if module is None or importlib.util.find_spec("triton") is None:
        return False
    importlib.import_module(module)
    return "triton" in _IMPLEMENTATIONS.get(name, {})
