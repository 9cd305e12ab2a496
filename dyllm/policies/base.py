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
   (`C_old + softmax(q K^T / sqrt(d)) dV`, DyLLM) or "frozen" (the cached context as it was);
   and, for "approximate", where the softmax normaliser comes from (`softmax_statistics`):
   "exact" scores every key (the paper), "cached" reuses each row's log-sum-exp from its last
   exact computation, so a non-refreshed row's update costs O(refreshed columns), not O(keys).

A policy may also say how many rows it can pick at most (`row_budget`), which lets the engine
size its buffers without waiting for the device (see docs/architecture.md).

Under LLaDA2's block diffusion (`StepContext.block_causal`) only the current block's rows can
change: a sparse step's queries must lie inside `step.block_rows` (the engine refuses a plan that
strays), and a policy whose idea does not fit says why in `block_diffusion_refusal`, which
`dyllm.generate` turns into a clear error before the first step.

Every row set is a boolean mask [rows, L] over canvas positions. The step is the sampler's own
`StepContext`; a layer's signals arrive complete in `LayerSignals` (before attention) and
`AttentionSignals` (after it). A policy sees signals, never modules or cache buffers, so it stays a
few lines long, and it must not read tensors back to the host (no `.item()`, `bool(...)`): the
engine keeps the whole layer loop on the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch

from dyllm.generation.step import StepContext

AttentionMode = Literal["approximate", "frozen"]
SoftmaxStatistics = Literal["exact", "cached"]


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


@dataclass(frozen=True)
class LayerRows:
    """The row sets of one layer of a sparse step, as a policy sees them."""

    layer: int
    step: StepContext
    queries: torch.Tensor
    """Bool [rows, L]: this step's query rows."""
    query_count: int
    """Query rows per sequence (the same in every sequence)."""
    incoming: torch.Tensor
    """Bool [rows, L]: rows the previous layer selected (layer 0: the plan's `refresh`)."""


@dataclass(frozen=True)
class LayerSignals(LayerRows):
    """What `rows_to_refresh` may look at, before attention.

    `value_cosine` (dLLM-Cache's signal) is computed on first read: it costs a V projection of
    every query row. Rows outside `queries` carry +1 similarity (unchanged by definition).
    """

    compute_value_cosine: Callable[[], torch.Tensor] = field(repr=False, compare=False)

    @cached_property
    def value_cosine(self) -> torch.Tensor:
        """Float32 [rows, L]: cosine(fresh V, cached V) per row over all kv heads."""
        return self.compute_value_cosine()


@dataclass(frozen=True)
class AttentionSignals(LayerRows):
    """What `select` may look at, after attention."""

    refreshed: torch.Tensor
    """Bool [rows, L]: rows refreshed at this layer (K/V recomputed, exact attention)."""
    context_cosine: torch.Tensor
    """Float32 [rows, L]: cosine(new context, cached context) over all heads, DyLLM's signal;
    +1 outside the queries."""


class SaliencyPolicy(ABC):
    """Base class of every caching strategy. Subclass, implement `plan` and `select`."""

    name: str = "policy"
    attention: AttentionMode = "approximate"
    softmax_statistics: SoftmaxStatistics = "exact"

    def reset(self, num_layers: int) -> None:  # noqa: B027 - optional hook
        """Called once per generate call before the first step."""

    @abstractmethod
    def plan(self, step: StepContext) -> StepPlan:
        """Dense or sparse, and for sparse steps the query and layer-0 refreshed rows."""

    def rows_to_refresh(self, layer: int, signals: LayerSignals) -> torch.Tensor:
        """Query rows whose K/V are recomputed and whose attention is exact at this layer."""
        return signals.incoming

    @abstractmethod
    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        """Query rows that go through the FFN at this layer (bool [rows, L])."""

    def row_budget(self, step: StepContext, layer: int, query_count: int) -> int | None:
        """Most rows per sequence that `rows_to_refresh` or `select` returns at `layer` of this
        sparse step, or None when the policy cannot know before the layer runs.

        With a bound the engine sizes that layer's gathered work to it exactly. Without one it
        guesses from the previous step and, should a layer select more, runs the step again
        with room for every query row, so the answer never depends on the guess (the policy is
        then asked again about that step's layers). Layer 0's refresh set defaults to the plan's
        `refresh`, whose size the engine knows. A budget that a layer exceeds is an error.
        """
        return None

    def block_diffusion_refusal(self) -> str | None:
        """None when the policy runs under LLaDA2's block diffusion (its sparse plans keep their
        queries inside the current block when `step.block_causal`), else the reason it does not
        apply, which `dyllm.generate` reports."""
        return None

    def describe(self) -> dict[str, object]:
        """Name and parameters, for statistics and results files."""
        return {"name": self.name, "attention": self.attention}
