"""The `SaliencyPolicy` interface: which rows a denoising step recomputes, and where.

A policy answers four questions; the engine asks them and does all the work:

1. `plan(step)`: is this step dense (a full forward that refills every cache) or sparse, and if
   sparse, which rows are *queries* (get new hidden states and logits) and which enter layer 0
   as *refreshed* (their K/V are recomputed and their attention row is exact)?
2. `rows_to_refresh(layer, signals)`: per layer, before attention, which query rows get new K/V
   and an exact attention row. Default: what the previous layer selected (DyLLM).
3. `select(layer, signals)`: per layer, after attention, which query rows go through the FFN
   (and so are refreshed at the next layer). The others reuse their cached FFN output.
4. `attention`: how query rows that are not refreshed get their attention context: "approximate"
   (`C_old + softmax(q K^T / sqrt(d)) dV`, DyLLM) or "frozen" (the cached context as it was).

Every row set is a boolean mask [B, L] over canvas positions. A policy sees signals (similarities,
positions, masks, step indices), never modules or cache buffers, so it stays a few lines long.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch

AttentionMode = Literal["approximate", "frozen"]


@dataclass(frozen=True)
class StepInfo:
    """Where the denoising loop stands, as a policy sees it. Masks are bool [B, L]."""

    step: int
    """Global step index of this generate call (0-based)."""
    block: int
    step_in_block: int
    first_step_in_block: bool
    block_start: int
    """First canvas column of the current block."""
    block_end: int
    prompt_length: int
    """Columns of the (left-padded) prompt."""
    response_start: int
    """First column whose hidden state produces answer logits: prompt_length, or
    prompt_length - 1 for models with Dream's one-position logit shift."""
    length: int
    logit_start: int
    """First column whose logits the sampler reads this step (the block's first column, one
    earlier with Dream's logit shift); queries must cover logit_start..logit_end-1."""
    logit_end: int
    masked: torch.Tensor
    """Positions still masked in this step's input."""
    newly_committed: torch.Tensor | None
    """Positions the previous step unmasked (None at the first step)."""

    def columns(self, start: int, end: int | None = None) -> torch.Tensor:
        """A [B, L] mask selecting canvas columns start..end-1 (end None = to the end)."""
        rows = torch.zeros_like(self.masked)
        rows[:, start:end] = True
        return rows

    @property
    def all_rows(self) -> torch.Tensor:
        return torch.ones_like(self.masked)

    @property
    def logit_rows(self) -> torch.Tensor:
        """Rows whose logits the sampler reads this step (the current block, shifted)."""
        return self.columns(self.logit_start, self.logit_end)

    @property
    def response_rows(self) -> torch.Tensor:
        """Rows whose logits the sampler reads: from `response_start` to the end."""
        return self.columns(self.response_start)


@dataclass(frozen=True)
class StepPlan:
    """A policy's answer to "how is this step computed?"."""

    dense: bool
    """Full forward over every row, refilling every cache."""
    queries: torch.Tensor | None = None
    """Sparse steps: rows that get new hidden states (bool [B, L]); must cover every row whose
    logits the sampler reads."""
    refresh: torch.Tensor | None = None
    """Sparse steps: layer 0's refreshed rows (bool [B, L], a subset of `queries`)."""

    @classmethod
    def dense_step(cls) -> StepPlan:
        return cls(dense=True)


@dataclass
class LayerSignals:
    """What a policy may look at for one layer of a sparse step.

    Expensive signals are computed only when read: `context_cosine` after attention (DyLLM's
    signal), `value_cosine` before attention (dLLM-Cache's signal, costs a V projection of every
    query row). Rows outside `queries` carry +1 similarity (unchanged by definition).
    """

    layer: int
    step: StepInfo
    queries: torch.Tensor
    """Bool [B, L]: this step's query rows."""
    incoming: torch.Tensor
    """Bool [B, L]: rows the previous layer selected (layer 0: the plan's `refresh`)."""
    refreshed: torch.Tensor | None = None
    """Bool [B, L]: rows refreshed at this layer (set after `rows_to_refresh`)."""
    _context_cosine: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    _value_cosine: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    @cached_property
    def context_cosine(self) -> torch.Tensor:
        """Float32 [B, L]: cosine(new context, cached context) over all heads."""
        if self._context_cosine is None:
            raise RuntimeError("context_cosine is only available after attention (in `select`)")
        return self._context_cosine()

    @cached_property
    def value_cosine(self) -> torch.Tensor:
        """Float32 [B, L]: cosine(fresh V, cached V) per row over all kv heads."""
        if self._value_cosine is None:
            raise RuntimeError("value_cosine is only available before attention")
        return self._value_cosine()


class SaliencyPolicy(ABC):
    """Base class of every caching strategy. Subclass, implement `plan` and `select`."""

    name: str = "policy"
    attention: AttentionMode = "approximate"

    def reset(self, num_layers: int) -> None:  # noqa: B027 - optional hook
        """Called once per generate call before the first step."""

    @abstractmethod
    def plan(self, step: StepInfo) -> StepPlan:
        """Dense or sparse, and for sparse steps the query and layer-0 refreshed rows."""

    def rows_to_refresh(self, layer: int, signals: LayerSignals) -> torch.Tensor:
        """Query rows whose K/V are recomputed and whose attention is exact at this layer."""
        return signals.incoming

    @abstractmethod
    def select(self, layer: int, signals: LayerSignals) -> torch.Tensor:
        """Query rows that go through the FFN at this layer (bool [B, L])."""

    def describe(self) -> dict[str, object]:
        """Name and parameters, for statistics and results files."""
        return {"name": self.name, "attention": self.attention}
