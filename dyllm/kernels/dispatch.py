"""One switch between each kernel's implementations: the eager reference and the GPU kernels.

`DYLLM_KERNELS` (or the `backend` argument of `kernel`) chooses: `eager` forces the PyTorch
reference, `triton` forces the GPU kernel, `auto` (default) takes the fastest one available for
the tensors' device. Tests set it to compare the two paths on the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

BACKENDS = ("auto", "eager", "triton")

_IMPLEMENTATIONS: dict[str, dict[str, Callable[..., Any]]] = {}


def register(name: str, backend: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make `function` the `backend` implementation of kernel `name`."""
    if backend not in ("eager", "triton"):
        raise ValueError(f"backend must be 'eager' or 'triton', got {backend!r}")

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


def kernel(name: str, device: torch.device, backend: str | None = None) -> Callable[..., Any]:
    """The implementation of kernel `name` to run on `device`."""
    implementations = _IMPLEMENTATIONS.get(name)
    if not implementations:
        raise KeyError(f"no kernel named {name!r} is registered")
    choice = requested_backend(backend)
    if choice == "auto":
        use_triton = device.type == "cuda" and "triton" in implementations
        choice = "triton" if use_triton else "eager"
    if choice not in implementations:
        raise ValueError(f"kernel {name!r} has no {choice} implementation; use DYLLM_KERNELS=eager")
    return implementations[choice]
