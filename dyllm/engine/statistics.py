"""Recompute statistics of a generate call: how much of the network each step really ran.

Per layer, two fractions of row-layer work: *attention* (rows whose K/V were recomputed and
whose attention row was exact) and *FFN* (rows that went through the FFN), each over all rows of
all steps, so a dense run reports 1.0 everywhere. The overall computed-token ratio is the FFN
fraction averaged over layers: the share of the dense FFN work that was done. With `trace=True`
the per-step fractions are kept too: query rows, and per layer attention and FFN (`dyllm trace`
draws them).

On a mixture-of-experts model the FFN work of a row depends on its layer: `experts_per_row[l]`
expert passes (top-k routed experts, plus the shared expert when there is one; 0 on a dense
layer), so the summary adds `expert_rows_per_layer` (rows x experts actually computed, summed
over steps) and `expert_fraction` (their total over a dense run's).
"""

from __future__ import annotations

from typing import Any


class RecomputeStatistics:
    """Accumulates per-layer recompute counts over the steps of one generate call."""

    def __init__(
        self, num_layers: int, trace: bool = False, experts_per_row: list[int] | None = None
    ) -> None:
        self.num_layers = num_layers
        self.experts_per_row = experts_per_row
        """Per layer, the experts one FFN row passes through (None: a model without experts)."""
        self.rows_seen = 0
        self.refreshed = [0] * num_layers
        self.selected = [0] * num_layers
        self.dense_steps = 0
        self.sparse_steps = 0
        self.trace: list[dict[str, Any]] | None = [] if trace else None

    def record_dense(self, step: int, rows: int, computed: int | None = None) -> None:
        """One dense step over `rows` rows; `computed` of them run when fewer do (under block
        diffusion: the rows not final yet, out of the window the reference computes)."""
        computed = rows if computed is None else computed
        self.dense_steps += 1
        self.rows_seen += rows
        for layer in range(self.num_layers):
            self.refreshed[layer] += computed
            self.selected[layer] += computed
        if self.trace is not None:
            share = computed / max(rows, 1)
            fractions = [share] * self.num_layers
            self.trace.append(
                {
                    "step": step,
                    "dense": True,
                    "queries": share,
                    "attention": fractions,
                    "ffn": fractions,
                }
            )

    def record_sparse(
        self, step: int, rows: int, query_rows: int, refreshed: list[int], selected: list[int]
    ) -> None:
        """One sparse step: `refreshed` and `selected` rows per layer (summed over the batch)."""
        self.sparse_steps += 1
        self.rows_seen += rows
        for layer, (attention, ffn) in enumerate(zip(refreshed, selected, strict=True)):
            self.refreshed[layer] += attention
            self.selected[layer] += ffn
        if self.trace is not None:
            self.trace.append(
                {
                    "step": step,
                    "dense": False,
                    "queries": query_rows / rows,
                    "attention": [count / rows for count in refreshed],
                    "ffn": [count / rows for count in selected],
                }
            )

    def summary(self) -> dict[str, Any]:
        seen = max(self.rows_seen, 1)
        attention = [count / seen for count in self.refreshed]
        ffn = [count / seen for count in self.selected]
        summary: dict[str, Any] = {
            "dense_steps": self.dense_steps,
            "sparse_steps": self.sparse_steps,
            "attention_fraction_per_layer": attention,
            "ffn_fraction_per_layer": ffn,
            "computed_token_ratio": sum(ffn) / max(len(ffn), 1),
        }
        if self.experts_per_row is not None:
            expert_rows = [
                rows * experts
                for rows, experts in zip(self.selected, self.experts_per_row, strict=True)
            ]
            summary["expert_rows_per_layer"] = expert_rows
            summary["expert_fraction"] = sum(expert_rows) / max(seen * sum(self.experts_per_row), 1)
        if self.trace is not None:
            summary["trace"] = self.trace
        return summary
