"""Shared set-up of the sparse-step micro-benchmarks: shapes, a random model, and a fixed thread
count (`DYLLM_BENCH_THREADS`, default 1) so numbers from different runs compare.

Two shapes: `ref-b16` is the reference models' shape at the benchmark's batch of 16 (d_model
128, 4 layers, 4 heads of 32, FFN 384, a 28-token prompt and a 24-token answer); `d512-b2` is a
wider model at a longer canvas (d_model 512, 4 heads of 128, FFN 1536, 64 + 192 tokens, batch
2), where matmuls outweigh per-op overheads. Every sparse part recomputes a quarter of the rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from dyllm.models import DiffusionTransformer, ModelConfig

torch.set_num_threads(int(os.environ.get("DYLLM_BENCH_THREADS", "1")))

RECOMPUTED_FRACTION = 0.25


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    prompt: int
    answer: int
    hidden: int
    heads: int
    ffn: int

    @property
    def length(self) -> int:
        return self.prompt + self.answer

    def model(self) -> DiffusionTransformer:
        config = ModelConfig(
            family="llada",
            vocab_size=128,
            hidden_size=self.hidden,
            num_layers=4,
            num_heads=self.heads,
            num_kv_heads=self.heads,
            intermediate_size=self.ffn,
            max_position_embeddings=1024,
            mask_token_id=127,
            eos_token_id=1,
            pad_token_id=1,
        )
        model = DiffusionTransformer(config)
        model.reset_parameters(std=0.02, seed=0)
        return model.eval().requires_grad_(False)


SHAPES = [
    Shape("ref-b16", batch=16, prompt=28, answer=24, hidden=128, heads=4, ffn=384),
    Shape("d512-b2", batch=2, prompt=64, answer=192, hidden=512, heads=4, ffn=1536),
]


@pytest.fixture(params=SHAPES, ids=[shape.name for shape in SHAPES], scope="module")
def shape(request: pytest.FixtureRequest) -> Shape:
    return request.param


@pytest.fixture(scope="module")
def model(shape: Shape) -> DiffusionTransformer:
    return shape.model()


@pytest.fixture(scope="session")
def salient_mask():
    """The helper below, as a fixture: test files import nothing from conftest."""
    return make_salient_mask


def make_salient_mask(shape: Shape, fraction: float = RECOMPUTED_FRACTION) -> torch.Tensor:
    """Bool [B, L]: the same number of answer rows per sequence, spread over the answer."""
    mask = torch.zeros(shape.batch, shape.length, dtype=torch.bool)
    count = max(1, round(fraction * shape.answer))
    generator = torch.Generator().manual_seed(1)
    for row in range(shape.batch):
        chosen = torch.randperm(shape.answer, generator=generator)[:count] + shape.prompt
        mask[row, chosen] = True
    return mask
