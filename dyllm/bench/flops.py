"""The arithmetic of one denoising step, counted from its recompute counts.

Benchmarks set a step's measured time against the speed-up its FLOPs allow: the dense step's
FLOPs over the sparse step's. One count serves `bench/bench_sparse_step.py` and the policy-step
guard (`bench/policy_steps/`).
"""

from __future__ import annotations

from dyllm.models import ModelConfig


def step_flops(
    config: ModelConfig,
    rows: int,
    queries: int,
    counts: list[tuple[int, int]] | None,
    window: int,
    approximate: bool,
    cached_statistics: bool = False,
) -> float:
    """FLOPs (multiply-adds x 2) of one step on one sequence of `rows` tokens.

    counts: per layer (refreshed rows, FFN rows), or None for a dense step; queries: rows that get
    new hidden states; window: rows that get logits; approximate: whether non-refreshed query rows
    get DyLLM's approximate attention update (P times dV over the refreshed columns) or keep
    their context (frozen attention: block caches, dLLM-Cache); cached_statistics: approximate
    rows reuse their softmax normaliser, so they score the refreshed columns only.
    """
    d = config.hidden_size
    hd = config.num_heads * config.head_dim
    kvd = config.num_kv_heads * config.head_dim
    f = config.intermediate_size
    total = 0.0
    for layer in range(config.num_layers):
        refreshed, selected = (rows, rows) if counts is None else counts[layer]
        q_rows = rows if counts is None else queries
        total += q_rows * d * hd * 2  # q_proj and o_proj
        total += refreshed * d * kvd * 2  # k_proj and v_proj
        exact_rows = q_rows if counts is None or not approximate else refreshed
        total += exact_rows * rows * hd * 2  # scores and P V of the exactly attended rows
        if counts is not None and approximate:
            scored = refreshed if cached_statistics else rows
            total += (q_rows - refreshed) * scored * hd  # scores of the approximate rows
            total += (q_rows - refreshed) * refreshed * hd  # their P dV over refreshed columns
        total += selected * 3 * d * f  # SwiGLU
    total += window * d * config.vocab_size  # LM head
    return 2 * total
