"""Padding invariance on the real transformer (not a mock): each greedy row of a left-padded batch
gets the tokens its prompt gets alone, for both layouts and both samplers, dense and sparse.
(Dream's unset temperature is its reference's 1.0, so the Dream cases ask for 0.)"""

from __future__ import annotations

import pytest

import dyllm
from dyllm.policies import EveryRow
from tests.checkpoints import tiny_model

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [14, 15], [16, 17, 18, 19, 20]]


@pytest.mark.parametrize(
    "family,options",
    [
        ("llada", {"gen_length": 16, "steps": 16, "block_length": 8}),
        ("llada", {"gen_length": 16, "block_length": 8, "threshold": 0.2}),
        ("dream", {"gen_length": 16, "steps": 16, "alg": "entropy", "temperature": 0.0}),
        (
            "dream",
            {"gen_length": 16, "steps": 8, "alg": "topk_margin", "block_length": 8}
            | {"temperature": 0.0},
        ),
    ],
)
@pytest.mark.parametrize("policy", [None, EveryRow()], ids=["dense", "every-row"])
def test_each_row_of_a_padded_batch_matches_its_prompt_alone(family, options, policy) -> None:
    model = tiny_model(family, seed=21, never_predicts_mask=True)
    batch = dyllm.generate(model, PROMPTS, policy=policy, check_invariants=True, **options)
    for row, prompt in enumerate(PROMPTS):
        alone = dyllm.generate(model, [prompt], policy=policy, check_invariants=True, **options)
        assert batch.token_ids[row] == alone.token_ids[0], f"row {row}"
