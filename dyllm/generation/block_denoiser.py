"""The seam between LLaDA2's block-diffusion samplers and what computes a step's logits.

Block diffusion (LLaDA2.0 / 2.1) differs from LLaDA's and Dream's loops in two ways that the
`Denoiser` interface cannot carry: attention is block-causal (a query in block b sees the keys of
blocks <= b), and the rows of a batch move at their own pace (a block ends when its masks are
gone, so two prompts are rarely in the same block at the same step). So the samplers ask a
`BlockDenoiser` for the logits of each active row's current block, described by a
`BlockRequest`.

The canvas is right-padded: row r holds its own positions 0..T_r - 1 in columns 0..T_r - 1
(prompt, then mask tokens to a whole number of blocks), so block b is columns
[b * block_length, (b + 1) * block_length) in every row, and a row's window (what the reference
recomputes at each step) is columns [0, (b + 1) * block_length). Columns past T_r are never read.

`WindowBlockDenoiser` calls a plain function once per row on its window with the dense
block-causal mask: the reference's call, kept for scripted test models. The model-backed
denoisers (recomputing the window, or the exact cache of finished blocks) live in
`dyllm.engine.block_denoisers`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dyllm.kernels.attention_variants import block_causal_mask

WindowModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`model(input_ids [1, W], attention [W, W] bool (True = may attend), position_ids [1, W])`
-> logits [1, W, V]: one forward over a window with the block-causal mask."""


@dataclass(frozen=True)
class BlockRequest:
    """Which rows need logits, and of which block."""

    canvas: torch.Tensor
    """Long [B, T]: every row of the batch, right-padded (see the module docstring)."""
    rows: tuple[int, ...]
    """Canvas rows that need logits this step (A of them, increasing)."""
    blocks: tuple[int, ...]
    """The current block of each of those rows."""
    block_length: int
    prompt_lengths: tuple[int, ...] = ()
    """Each requested row's prompt length (empty when the caller does not say)."""

    @property
    def window_ends(self) -> tuple[int, ...]:
        """One past each row's last window column: (block + 1) * block_length."""
        return tuple((block + 1) * self.block_length for block in self.blocks)


class BlockDenoiser(ABC):
    """Computes the current block's logits of some rows; counts forward passes in `nfe`.

    A call is one forward pass over the rows it serves (one `nfe`, as a `Denoiser` step).
    `begin` is called before each canvas (each batch); `__call__` returns logits [A, W, V] in
    the model dtype, row i for canvas row `rows[i]`, column w for canvas column
    `blocks[i] * W + w` (W = block_length).
    """

    def __init__(self) -> None:
        self.nfe = 0
        self.last_rows_computed: tuple[int, ...] = ()
        """Query rows the last call computed for each row (the window, or fewer with a cache)."""

    def begin(self, batch_size: int, width: int) -> None:
        """A new canvas of `batch_size` rows and `width` columns: drop per-canvas state."""
        return None

    @abstractmethod
    def __call__(self, request: BlockRequest) -> torch.Tensor: ...

    def extra_stats(self) -> dict[str, Any]:
        """Statistics beyond the common ones; JSON-serialisable values."""
        return {}


class WindowBlockDenoiser(BlockDenoiser):
    """Runs `model` on each row's window with the dense [W, W] block-causal mask (the
    reference's call, row by row); for scripted models in tests."""

    def __init__(self, model: WindowModel) -> None:
        super().__init__()
        self.model = model

    def __call__(self, request: BlockRequest) -> torch.Tensor:
        width = request.block_length
        outputs = []
        for row, end in zip(request.rows, request.window_ends, strict=True):
            canvas = request.canvas
            attention = block_causal_mask(end, width, canvas.device)
            positions = torch.arange(end, device=canvas.device)[None]
            logits = self.model(canvas[row : row + 1, :end], attention, positions)
            outputs.append(logits[0, end - width : end])
        self.nfe += 1
        self.last_rows_computed = request.window_ends
        return torch.stack(outputs)
