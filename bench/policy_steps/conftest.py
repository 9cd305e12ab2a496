"""Shared set-up of the policy-step regression guard: one fixed shape, one random model, a
fixed thread count (`DYLLM_BENCH_THREADS`, default 1), and the FLOP count of a step.

The default shape (`small`): a random LLaDA-layout model, d_model 256, 4 layers, 4 heads of 64,
SwiGLU 768, vocabulary 4096, at batch 4 on a 32-token prompt and a 96-token answer decoded in
blocks of 32. Small enough that every policy's step is timed in seconds on one CPU thread, large
enough that matmuls rather than per-op overheads make up most of a dense step; it is the shape of
the committed results. `DYLLM_POLICY_SHAPE=d1024-b1` (or `d1024-b16`) selects the issue-13 shape
instead (d_model 1024, 8 layers, 16 heads, SwiGLU 3072, vocabulary 32,000, prompt 128 + answer
256, blocks of 32, batch 1 or 16): minutes a policy on one thread, not for routine runs.
`DYLLM_POLICY_SHAPE=long-b1` (or `long-b16`) is the long-answer yardstick's shape (llada-long:
d_model 128, 4 layers, 4 heads of 32, SwiGLU 384, vocabulary 128; a 136-token prompt, the width
of its `triple` prompts, and a 128-token answer in blocks of 32), with random weights.
`DYLLM_BENCH_ROUNDS` sets the timed rounds (default 9).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import pytest
import torch

from dyllm.models import DiffusionTransformer, ModelConfig

torch.set_num_threads(int(os.environ.get("DYLLM_BENCH_THREADS", "1")))


@dataclass(frozen=True)
class Shape:
    """The benchmark's model and canvas."""

    batch: int = 4
    prompt: int = 32
    answer: int = 96
    block: int = 32
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    ffn: int = 768
    vocab: int = 4096

    @property
    def length(self) -> int:
        return self.prompt + self.answer

    def config(self) -> ModelConfig:
        return ModelConfig(
            family="llada",
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            num_layers=self.layers,
            num_heads=self.heads,
            num_kv_heads=self.heads,
            intermediate_size=self.ffn,
            rope_theta=10000.0,
            max_position_embeddings=1024,
            mask_token_id=self.vocab - 1,
            eos_token_id=1,
            pad_token_id=1,
        )


SHAPES: dict[str, Shape] = {
    "small": Shape(),
    **{
        f"d1024-b{batch}": Shape(
            batch=batch,
            prompt=128,
            answer=256,
            block=32,
            hidden=1024,
            layers=8,
            heads=16,
            ffn=3072,
            vocab=32000,
        )
        for batch in (1, 16)
    },
    **{
        f"long-b{batch}": Shape(
            batch=batch,
            prompt=136,
            answer=128,
            block=32,
            hidden=128,
            layers=4,
            heads=4,
            ffn=384,
            vocab=128,
        )
        for batch in (1, 16)
    },
}

SHAPE = SHAPES[os.environ.get("DYLLM_POLICY_SHAPE", "small")]


@pytest.fixture(scope="session")
def shape() -> Shape:
    return SHAPE


@pytest.fixture(scope="session")
def model() -> DiffusionTransformer:
    model = DiffusionTransformer(SHAPE.config())
    model.reset_parameters(std=0.02, seed=0)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def weight_stream_s(model: DiffusionTransformer) -> float:
    """Seconds to stream the weights a step reads once (every layer's matrices and the LM head;
    the embedding is a lookup) at this machine's matrix-vector rate: the bound of a step whose
    few rows leave the matmuls memory-bound (batch 1), measured in the same run.

    The rate: a one-row matmul over a 256 MiB float32 matrix (memory-bound on any CPU), median of
    5, after one untimed pass."""
    matrix = torch.randn(8192, 8192)
    vector = torch.randn(8192)
    torch.mv(matrix, vector)
    times = []
    for _ in range(5):
        begin = time.perf_counter()
        torch.mv(matrix, vector)
        times.append(time.perf_counter() - begin)
    bytes_per_second = matrix.numel() * matrix.element_size() / statistics.median(times)
    weights = sum(
        parameter.numel() * parameter.element_size()
        for name, parameter in model.named_parameters()
        if not name.startswith("embed.")
    )
    return weights / bytes_per_second
