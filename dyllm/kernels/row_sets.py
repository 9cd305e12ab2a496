"""Row sets as index tensors: from a boolean mask [B, L] to what gathers and scatters need.

Two forms, each for the operations it suits:

* flat pairs `(batch_index, position)` [N] each, for row-wise work (projections, FFN) where
  rows of different sequences can share one matmul;
* padded per sequence `(index [B, S], valid [B, S])`, S the largest count in the batch, for
  attention, where each row must stay with its own sequence's keys. Padding entries point at
  position 0 and are marked invalid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FlatRows:
    """Rows of a [B, L] mask as parallel index vectors, in (sequence, position) order."""

    batch_index: torch.Tensor
    position: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> FlatRows:
        batch_index, position = mask.nonzero(as_tuple=True)
        return cls(batch_index, position)

    def __len__(self) -> int:
        return self.batch_index.numel()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rows of `tensor` [B, L, ...] -> [N, ...]."""
        return tensor[self.batch_index, self.position]

    def scatter_(self, tensor: torch.Tensor, rows: torch.Tensor) -> None:
        """Write rows [N, ...] into `tensor` [B, L, ...] in place."""
        tensor[self.batch_index, self.position] = rows


@dataclass(frozen=True)
class PaddedRows:
    """Per-sequence positions of a [B, L] mask, padded to the longest: index, valid [B, S]."""

    index: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> PaddedRows:
        counts = mask.sum(dim=1)
        width = int(counts.max()) if mask.numel() else 0
        # stable sort puts the selected positions first, in position order
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        index = order[:, :width]
        valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
        return cls(index.masked_fill(~valid, 0), valid)

    @property
    def width(self) -> int:
        return self.index.shape[1]
