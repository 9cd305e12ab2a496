"""DyLLM's step schedule, shared by the cosine, top-k and layer-adaptive policies.

* The first `warmup_steps` steps of a generate call are dense: they fill every cache (DyLLM's
  `num_full_steps`, 4 in all the authors' scripts). There is no later full refresh.
* After warm-up, on `prompt_refresh_every - 1` of every `prompt_refresh_every` sparse steps only
  the response rows are queries (prompt K/V, context and FFN stay cached); on the last one the
  whole sequence is a query set, still processed sparsely.
* Layer 0's refreshed rows are the positions the previous step committed.
* Under LLaDA2's block diffusion (`StepContext.block_causal`) the queries of every sparse step
  are the current block's rows: the prompt and the finished blocks are final (their K/V exact in
  the cache, nothing of theirs can move), so there is no whole-sequence step to take.

`softmax_statistics="cached"` (off by default) makes the approximate update of a non-refreshed
row use the row's cached log-sum-exp from its last exact computation instead of scoring every
key (docs/sparse-step.md); it needs `attention="approximate"`.
"""

from __future__ import annotations

from dyllm.generation.step import StepContext
from dyllm.policies.base import AttentionMode, SaliencyPolicy, SoftmaxStatistics, StepPlan


class DyLLMSchedule(SaliencyPolicy):
    """Warm-up, response-focused queries and a periodic whole-sequence query step."""

    def __init__(
        self,
        warmup_steps: int = 4,
        prompt_refresh_every: int = 4,
        attention: AttentionMode = "approximate",
        softmax_statistics: SoftmaxStatistics = "exact",
    ) -> None:
        if warmup_steps < 1:
            raise ValueError(
                f"warmup_steps must be at least 1 (the first step fills the caches), got "
                f"{warmup_steps}"
            )
        if prompt_refresh_every < 1:
            raise ValueError(f"prompt_refresh_every must be at least 1, got {prompt_refresh_every}")
        if attention not in ("approximate", "frozen"):
            raise ValueError(f"attention must be 'approximate' or 'frozen', got {attention!r}")
        if softmax_statistics not in ("exact", "cached"):
            raise ValueError(
                f"softmax_statistics must be 'exact' or 'cached', got {softmax_statistics!r}"
            )
        if softmax_statistics == "cached" and attention != "approximate":
            raise ValueError(
                "softmax_statistics='cached' changes the approximate attention update only; with "
                f"attention={attention!r} it has nothing to do: use attention='approximate' or "
                "softmax_statistics='exact'"
            )
        self.softmax_statistics = softmax_statistics
        self.warmup_steps = warmup_steps
        self.prompt_refresh_every = prompt_refresh_every
        self.attention = attention

    def plan(self, step: StepContext) -> StepPlan:
        if step.step < self.warmup_steps:
            return StepPlan.dense_step()
        sparse_index = step.step - self.warmup_steps
        whole_sequence = sparse_index % self.prompt_refresh_every == self.prompt_refresh_every - 1
        if step.block_causal:
            queries = step.block_rows
        else:
            queries = step.all_rows if whole_sequence else step.response_rows
        committed = step.newly_committed
        refresh = queries & committed if committed is not None else queries & ~queries
        return StepPlan(dense=False, queries=queries, refresh=refresh)

    def block_diffusion_refusal(self) -> str | None:
        if self.softmax_statistics == "cached":
            return (
                "softmax_statistics='cached' needs every row's log-sum-exp from a dense step, and "
                "a block-diffusion dense step attends to cached keys of finished blocks that the "
                "statistics sink does not see; use softmax_statistics='exact'"
            )
        return None

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "warmup_steps": self.warmup_steps,
            "prompt_refresh_every": self.prompt_refresh_every,
            "softmax_statistics": self.softmax_statistics,
        }
