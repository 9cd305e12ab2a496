"""Shared set-up of the policy-step regression guard: one fixed shape, one random model, a
fixed thread count (`DYLLM_BENCH_THREADS`, default 1), and the FLOP count of a step.

The shape (`SHAPE`): a random LLaDA-layout model, d_model 256, 4 layers, 4 heads of 64, SwiGLU
768, vocabulary 4096, at batch 4 on a 32-token prompt and a 96-token answer decoded in blocks of
32. Small enough that every policy's step is timed in seconds on one CPU thread, large enough
that matmuls rather than per-op overheads make up most of a dense step.
"""

from __future__ import annotations

import os
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


SHAPE = Shape()


@pytest.fixture(scope="session")
def shape() -> Shape:
    return SHAPE


@pytest.fixture(scope="session")
def model() -> DiffusionTransformer:
    model = DiffusionTransformer(SHAPE.config())
    model.reset_parameters(std=0.02, seed=0)
    return model.eval().requires_grad_(False)
