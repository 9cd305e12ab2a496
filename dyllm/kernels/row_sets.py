"""Row sets as index tensors, built on the device without reading anything back to the host.

A row set starts as a boolean mask [B, L]. The sparse step needs it as indices, and the number
of selected rows is only known on the device; reading it back (`nonzero`, `int(mask.sum())`)
would stall a GPU's launch queue at every layer. So a row set has a fixed *capacity* C chosen on
the host, and is stored padded:

* `PaddedRows(index [B, C], valid [B, C])`: per sequence, the selected positions in ascending
  order, then (`valid` False) unselected positions of the same sequence, all distinct. Padding
  entries are real, distinct rows, so a kernel may compute them and write `where(valid, new,
  old)` back without two entries ever writing the same place; `counts` [B] says how many are
  valid and `overflow` whether a sequence had more than C.
* `FlatRows(batch_index, position, valid)` [N] each: the same rows flattened (N = B x C), for
  row-wise work (projections, FFN) where rows of different sequences share one matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PaddedRows:
    """Per-sequence positions of a [B, L] mask: selected first (ascending), padded to C."""

    index: torch.Tensor
    """Long [B, C]: positions, distinct within each sequence."""
    valid: torch.Tensor
    """Bool [B, C]: True for the selected positions, False for the padding."""
    counts: torch.Tensor
    """Long [B]: selected positions per sequence (may exceed C: see `overflow`)."""

    @classmethod
    def from_mask(cls, mask: torch.Tensor, capacity: int) -> PaddedRows:
        """The rows of `mask` [B, L] in `capacity` <= L slots per sequence (no host sync)."""
        if not 0 <= capacity <= mask.shape[1]:
            raise ValueError(f"capacity {capacity} must lie in [0, {mask.shape[1]}]")
        counts = mask.sum(dim=1)
        # a stable sort puts the selected positions first, each group in position order
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        index = order[:, :capacity]
        valid = torch.arange(capacity, device=mask.device)[None, :] < counts[:, None]
        return cls(index, valid, counts)

    @property
    def width(self) -> int:
        """The capacity C."""
        return self.index.shape[1]

    @property
    def overflow(self) -> torch.Tensor:
        """Bool scalar tensor: some sequence selected more rows than the capacity holds."""
        return (self.counts > self.width).any()

    def mask(self, length: int) -> torch.Tensor:
        """Bool [B, length]: True at the valid positions."""
        full = torch.zeros(self.index.shape[0], length, dtype=torch.bool, device=self.index.device)
        return full.scatter(1, self.index, self.valid)

    def flat(self) -> FlatRows:
        """The same rows as flat (batch index, position, valid) vectors of B x C entries."""
        batch, width = self.index.shape
        batch_index = torch.arange(batch, device=self.index.device).repeat_interleave(width)
        return FlatRows(batch_index, self.index.reshape(-1), self.valid.reshape(-1))


@dataclass(frozen=True)
class FlatRows:
    """Rows as parallel index vectors [N], in (sequence, slot) order; `valid` marks the real ones
    (kernels compute every entry and write only the valid ones)."""

    batch_index: torch.Tensor
    position: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> FlatRows:
        """Exactly the rows of `mask` [B, L] (this reads the count back: for tests and tools,
        not for the layer loop)."""
        batch_index, position = mask.nonzero(as_tuple=True)
        return cls(batch_index, position, torch.ones_like(position, dtype=torch.bool))

    def __len__(self) -> int:
        return self.batch_index.numel()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rows of `tensor` [B, L, ...] -> [N, ...]."""
        return tensor[self.batch_index, self.position]

    def write_valid(
        self, target: torch.Tensor, positions: torch.Tensor, values: torch.Tensor
    ) -> None:
        """Write `values` [N, F] into `target` [B, L, F] at (batch_index, positions [N]) for the
        valid rows; the padding rows' places keep their values (positions distinct per
        sequence)."""
        old = target[self.batch_index, positions]
        target[self.batch_index, positions] = torch.where(self.valid[:, None], values, old)
