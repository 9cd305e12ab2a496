"""`DLLMCache`: dLLM-Cache's interval refreshes and value-guided partial updates as a policy.

dLLM-Cache (Liu et al., 2025) keeps K, V, attention output and FFN output per layer for the
prompt and for the response, and refreshes them on two clocks:

* the prompt every `prompt_interval` steps (K_p; 100 in the authors' demo),
* the response every `gen_interval` steps (K_r; 7 in the demo);

and between response refreshes it updates, at every layer, the `transfer_ratio` (0.25) of
response rows whose freshly projected V is least similar (cosine) to the cached V: those rows get
new Q/K/V, exact attention and the FFN; every other row reuses its cached attention output and
FFN output. Layer 0 is always refreshed (every query row).

In the policy interface, with `step` the global step index of the generate call:

* `step % K_p == 0` and `step % K_r == 0`: a dense step;
* `step % K_p == 0` only: queries = every row; refreshed (new K/V, exact attention, FFN) at
  layer 0 every row, at later layers the prompt rows and the least V-similar response rows;
* `step % K_r == 0` only: queries = the response rows, all refreshed at every layer;
* neither: queries = the response rows; refreshed at layer 0 all of them, at later layers the
  least V-similar ones.

The first step (step 0) falls on both clocks, so it is dense: it fills every cache, which the
sparse steps then read. Rows that are not refreshed keep their cached context (`attention =
"frozen"`) and FFN output; prompt rows outside prompt-refresh steps are not queries at all.
"Response" means the rows whose hidden states produce answer logits (`StepContext.response_rows`:
from the first generated column, one column earlier for Dream's logit shift); "prompt" is every
column before them. The count of least-similar rows is ceil(transfer_ratio x response rows) per
sequence (the authors' code rounds down; the two agree whenever the product is whole, e.g.
0.25 x 256).

One difference from the authors' code, from the interface: a refresh rewrites a row's K and V
together. Between refreshes their code writes the fresh V of *every* response row into the cache
(K only for the updated rows), so later attention reads fresh V under stale K and the next
comparison is against the previous step's V. Here non-updated rows keep the K and V of their last
refresh, and the comparison is against that V.
"""

from __future__ import annotations

import math

import torch

from dyllm.generation.step import StepContext
from dyllm.policies.base import AttentionSignals, LayerSignals, SaliencyPolicy, StepPlan
from dyllm.policies.topk import least_similar

DEFAULT_PROMPT_INTERVAL = 100
DEFAULT_GEN_INTERVAL = 7
DEFAULT_TRANSFER_RATIO = 0.25


def transfer_rows(response_rows: int, transfer_ratio: float) -> int:
    """ceil(transfer_ratio x response_rows), computed on the product rounded to 9 decimals so
    that binary rounding cannot add a row (0.1 x 30 is 3 rows, not 4)."""
    return math.ceil(round(transfer_ratio * response_rows, 9))


class DLLMCache(SaliencyPolicy):
    """Prompt refreshed every `prompt_interval` steps, response every `gen_interval` steps, and
    in between the `transfer_ratio` least V-similar response rows per layer."""

    name = "dllm-cache"
    attention = "frozen"

    def __init__(
        self,
        prompt_interval: int = DEFAULT_PROMPT_INTERVAL,
        gen_interval: int = DEFAULT_GEN_INTERVAL,
        transfer_ratio: float = DEFAULT_TRANSFER_RATIO,
    ) -> None:
        for label, interval in (
            ("prompt_interval", prompt_interval),
            ("gen_interval", gen_interval),
        ):
            if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
                raise ValueError(
                    f"{label} is a number of steps, at least 1 (1 = refresh every step), got "
                    f"{interval!r}"
                )
        if not 0.0 <= transfer_ratio <= 1.0:
            raise ValueError(
                f"transfer_ratio is the fraction of response rows updated per layer between "
                f"refreshes, in [0, 1], got {transfer_ratio}"
            )
        self.prompt_interval = prompt_interval
        self.gen_interval = gen_interval
        self.transfer_ratio = float(transfer_ratio)

    def block_diffusion_refusal(self) -> str | None:
        return (
            "dLLM-Cache's prompt and response refresh clocks assume the whole canvas is re-read "
            "bidirectionally at every step; under LLaDA2's block diffusion the prompt and the "
            "finished blocks are final (cached exactly) and only the current block can change, "
            "which leaves its prompt clock nothing to do and its response clock a different "
            "meaning; no adaptation is implemented: use policy 'dyllm' or 'topk', or policy=None"
        )

    def refreshes(self, step: int) -> tuple[bool, bool]:
        """(prompt refreshed, response refreshed) at global step `step`."""
        return step % self.prompt_interval == 0, step % self.gen_interval == 0

    def plan(self, step: StepContext) -> StepPlan:
        prompt_refresh, response_refresh = self.refreshes(step.step)
        if prompt_refresh and response_refresh:
            return StepPlan.dense_step()
        queries = step.all_rows if prompt_refresh else step.response_rows
        return StepPlan(dense=False, queries=queries, refresh=queries)

    def rows_to_refresh(self, layer: int, signals: LayerSignals) -> torch.Tensor:
        if layer == 0:
            return signals.queries
        step = signals.step
        prompt_refresh, response_refresh = self.refreshes(step.step)
        if response_refresh:  # not a prompt refresh too: that step was dense
            return signals.queries
        response = step.response_rows
        refreshed = least_similar(signals.value_cosine, response, self.updated_rows(step))
        if prompt_refresh:
            refreshed |= ~response
        return refreshed

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        return signals.refreshed

    def updated_rows(self, step: StepContext) -> int:
        """Response rows per sequence updated at a layer between response refreshes."""
        return transfer_rows(step.length - step.response_start, self.transfer_ratio)

    def row_budget(self, step: StepContext, layer: int, query_count: int) -> int:
        prompt_refresh, response_refresh = self.refreshes(step.step)
        if layer == 0 or response_refresh:
            return query_count
        prompt_rows = step.response_start if prompt_refresh else 0
        return min(query_count, self.updated_rows(step) + prompt_rows)

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "prompt_interval": self.prompt_interval,
            "gen_interval": self.gen_interval,
            "transfer_ratio": self.transfer_ratio,
        }
