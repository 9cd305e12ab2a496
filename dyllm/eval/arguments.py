"""The adapter's `batch_size` and `device`, from `--model_args` or lm-eval's own flags.

lm-eval passes its `--batch_size` and `--device` to every model next to the model arguments,
and its command line always fills them (defaults 1 and `cuda:0`), so a model that also takes
them from `--model_args` would get each twice. Here a value in `--model_args` wins, lm-eval's
flag fills the gap, and a CUDA device on a machine without CUDA becomes the CPU (with a
warning), so the documented command runs anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from dyllm.eval import EvalUsageError

LM_EVAL_FLAGS = ("batch_size", "device")
"""lm-eval's own arguments the adapter takes; it ignores the others (`max_batch_size`)."""

log = logging.getLogger("dyllm.eval")


def merge_model_arguments(
    model_args: Mapping[str, Any], lm_eval_config: Mapping[str, Any] | None
) -> dict[str, Any]:
    """`--model_args` plus lm-eval's `batch_size` / `device` where model_args lacks them."""
    merged = dict(model_args)
    for key in LM_EVAL_FLAGS:
        value = (lm_eval_config or {}).get(key)
        if value is not None:
            merged.setdefault(key, value)
    return merged


def parse_batch_size(value: Any) -> int:
    """A positive batch size from an int or a numeric string; lm-eval's "auto" is refused."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("auto"):
            raise EvalUsageError(
                f"batch_size={value!r}: dyllm has no automatic batch size; give a number "
                "(16 is the DyLLM paper's setting)"
            )
        value = int(text) if text.isdigit() else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvalUsageError(f"batch_size={value!r} must be a whole number >= 1 (e.g. 16)")
    return value


def pick_device(requested: str | None) -> str:
    """The device to load on: the one asked for, the CPU for CUDA on a machine without it."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise EvalUsageError(f"device={requested!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning(
            "dyllm: device %s asked for, but CUDA is not available: running on the CPU", requested
        )
        return "cpu"
    return str(device)
