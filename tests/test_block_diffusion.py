"""LLaDA2's block diffusion through `dyllm.generate`: the exact block cache against the reference's
recomputation, batches of prompts of different lengths against each prompt alone, and what is
refused (sampling, options of the other sampler, the saliency policies that do not fit block
diffusion, eos_early_stop on a prompt holding the EOS). The policies that do fit are tested in
`test_block_saliency.py`.

Models: the official LLaDA2 fixture checkpoint (float32, `fixtures/official/llada2`) and the tiny
LLaDA2 checkpoint of `tests/moe_checkpoints.py` (GQA, partial RoPE, grouped routing). The official
runs themselves are reproduced in `test_official_fixtures.py`.

Logit tolerance (cache vs recompute): both are the same float32 arithmetic; the cache computes
fewer query rows (other matmul shapes) and its attention runs over the cache's columns, so the
logits agree to float32 rounding, not bit for bit; a batch likewise (other rows in the matmuls,
masked padding keys). Measured on these runs: at most 1.4e-5 absolute (cache vs recompute
1.1e-5, batch vs alone 1.4e-5) on logits of magnitude up to ~25, i.e. a few float32 eps
relative; `atol = 1e-4`, `rtol = 1e-5` (as `test_official_fixtures.py`) leaves room for other
kernel orders and is far below what a wrong mask or a stale cache entry moves (> 1e-2); the
tokens are compared exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import dyllm
from dyllm.generation.llada2 import BlockStepReport
from dyllm.policies import CosineThreshold, Dense, DLLMCache, DualCache
from tests.moe_checkpoints import write_tiny_moe_checkpoint

OFFICIAL = Path(__file__).resolve().parent / "fixtures" / "official" / "llada2"
ATOL, RTOL = 1e-4, 1e-5
PROMPTS = [[230, 85, 5, 114, 183, 46], [17, 3], [9, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49]]
TINY_PROMPTS = [[token % 60 for token in prompt] for prompt in PROMPTS]  # vocabulary 64
RUNS = {
    "llada2": {"gen_length": 12, "block_length": 4, "steps": 4, "threshold": 0.6},
    "llada2.1": {
        "gen_length": 12,
        "block_length": 4,
        "threshold": 0.7,
        "editing_threshold": 0.5,
        "max_post_steps": 2,
    },
}


def load_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The official-code fixture's LLaDA2 and a tiny random one, float32."""
    folder = tmp_path_factory.mktemp("llada2") / "tiny"
    write_tiny_moe_checkpoint("llada2", folder, seed=3)
    return {
        "official": dyllm.load(OFFICIAL, dtype="float32"),
        "tiny": dyllm.load(folder, dtype="float32"),
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return load_models(tmp_path_factory)


def recorded(model: Any, prompts: list[list[int]], **options: Any) -> tuple[Any, list[Any]]:
    reports: list[BlockStepReport] = []
    result = dyllm.generate(model, prompts, eos_id=-1, on_step=reports.append, **options)
    return result, reports


@pytest.mark.parametrize("sampler", ["llada2", "llada2.1"])
@pytest.mark.parametrize("name", ["official", "tiny"])
def test_block_cache_equals_recomputing_the_window(models, name: str, sampler: str) -> None:
    model = models[name]
    prompt = (PROMPTS if name == "official" else TINY_PROMPTS)[:1]
    options = dict(RUNS[sampler], sampler=sampler)
    cached, cached_steps = recorded(model, prompt, block_cache=True, **options)
    full, full_steps = recorded(model, prompt, block_cache=False, **options)
    assert cached.token_ids == full.token_ids
    assert cached.stats.nfe == full.stats.nfe == len(full_steps) > 3
    for fast, slow in zip(cached_steps, full_steps, strict=True):
        assert fast.window_ends == slow.window_ends
        assert torch.equal(fast.canvas, slow.canvas)
        torch.testing.assert_close(fast.logits, slow.logits, atol=ATOL, rtol=RTOL)
    # The cache computes the current block (and, at a block's first step, the block just
    # finished, or at the very first step the prompt): fewer rows than the window.
    width = options["block_length"]
    computed = [report.rows_computed[0] for report in cached_steps]
    assert computed[0] == cached_steps[0].window_ends[0]
    assert set(computed[1:]) <= {width, 2 * width} and width in computed
    extra = cached.stats.extra["block_diffusion"]
    assert extra["rows_computed"] == sum(computed)
    assert extra["rows_computed"] < extra["rows_the_reference_computes"]
    assert full.stats.extra["block_diffusion"]["rows_computed"] == sum(
        report.window_ends[0] for report in full_steps
    )


@pytest.mark.parametrize("block_cache", [True, False], ids=["block_cache", "recompute"])
@pytest.mark.parametrize("sampler", ["llada2", "llada2.1"])
def test_a_batch_gives_each_prompt_its_tokens_alone(models, sampler: str, block_cache) -> None:
    model = models["official"]
    options = dict(RUNS[sampler], sampler=sampler, block_cache=block_cache)
    alone = [recorded(model, [prompt], **options)[0].token_ids[0] for prompt in PROMPTS]
    batch, reports = recorded(model, PROMPTS, **options)
    assert batch.token_ids == alone
    # The rows were at different blocks in the same call (their prompts end in other blocks).
    assert any(len(set(report.blocks)) > 1 for report in reports)
    split = recorded(model, PROMPTS, max_batch_size=2, **options)[0]
    assert split.token_ids == alone


def test_batched_logits_equal_each_prompt_alone(models) -> None:
    model = models["tiny"]
    options = dict(RUNS["llada2"], sampler="llada2")
    alone = recorded(model, TINY_PROMPTS[1:2], **options)[1]
    batch = recorded(model, TINY_PROMPTS, **options)[1]
    rows = [report.logits[report.rows.index(1)] for report in batch if 1 in report.rows]
    assert len(rows) == len(alone)
    for got, expected in zip(rows, alone, strict=True):
        torch.testing.assert_close(got, expected.logits[0], atol=ATOL, rtol=RTOL)


def test_eos_stops_each_row_on_its_own(models) -> None:
    """With an EOS that one row produces early, that row stops while the others go on."""
    model = models["official"]
    options = dict(RUNS["llada2"], sampler="llada2")
    probe = recorded(model, PROMPTS, **options)[0].token_ids
    eos = probe[0][1]
    alone = [
        dyllm.generate(model, [prompt], **dict(options, eos_id=eos)).token_ids[0]
        for prompt in PROMPTS
    ]
    batch = dyllm.generate(model, PROMPTS, **dict(options, eos_id=eos))
    assert batch.token_ids == alone and alone[0][-1] == eos and len(alone[0]) < 12


def test_the_forward_with_a_block_length_is_block_causal(models) -> None:
    """Later blocks do not move earlier blocks' logits; within a block everything is seen."""
    model = models["tiny"]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    changed = ids.clone()
    changed[0, 6] = 30
    with torch.no_grad():
        first = model(ids, block_length=4)
        second = model(changed, block_length=4)
    torch.testing.assert_close(first[:, :4], second[:, :4], atol=0, rtol=0)
    assert (first[:, 4:] - second[:, 4:]).abs().amax(-1).min() > 1e-4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 0.7}, "greedy only"),
        ({"top_p": 0.9}, "greedy only"),
        ({"sampler": "llada2.1", "steps": 8}, "steps has no effect in the llada2.1 sampler"),
        ({"editing_threshold": 0.5}, "editing_threshold has no effect in the llada2 sampler"),
        ({"factor": 1.0}, "factor does not apply"),
        ({"stop_at_eos": True}, "stop_at_eos does not apply"),
        ({"cfg_scale": 1.0}, "option of the llada sampler"),
        ({"threshold": 1.5}, r"threshold=1.5 must be in \[0, 1\]"),
        ({"minimal_topk": 0}, "minimal_topk=0 must be >= 1"),
        ({"block_cache": "yes"}, "block_cache must be True or False"),
        ({"gen_length": 10_000}, "more than the model's max_position_embeddings"),
        ({"policy": DualCache()}, "'fast-dual' does not apply to LLaDA2's block diffusion"),
        ({"policy": DLLMCache()}, "'dllm-cache' does not apply to LLaDA2's block diffusion"),
        ({"policy": CosineThreshold(0.99), "block_cache": False}, "takes no policy"),
    ],
)
def test_what_block_diffusion_refuses(models, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dyllm.generate(models["official"], PROMPTS[:1], **{"gen_length": 8, **options})


def test_llada2_options_are_refused_by_the_other_samplers(models) -> None:
    for name in ("eos_id", "block_cache", "minimal_topk"):
        with pytest.raises(ValueError, match=f"{name} is an option of the LLaDA2 samplers"):
            dyllm.generate(
                models["official"], PROMPTS[:1], sampler="llada", gen_length=8, **{name: 1}
            )


def test_dense_policy_runs_block_diffusion(models) -> None:
    options = dict(RUNS["llada2"], sampler="llada2", eos_id=-1)
    plain = dyllm.generate(models["official"], PROMPTS[:1], **options)
    dense = dyllm.generate(models["official"], PROMPTS[:1], policy=Dense(), **options)
    assert dense.token_ids == plain.token_ids


def test_eos_early_stop_refuses_a_prompt_holding_the_eos(models) -> None:
    prompt = PROMPTS[0]
    with pytest.raises(ValueError, match="contains eos_id 85 and eos_early_stop=True"):
        dyllm.generate(models["official"], [prompt], eos_id=85, eos_early_stop=True, gen_length=4)
    # Without eos_early_stop (or under 2.1, whose early stop reads the answer only) it runs.
    dyllm.generate(models["official"], [prompt], eos_id=85, gen_length=4, block_length=4)
    dyllm.generate(
        models["official"],
        [prompt],
        sampler="llada2.1",
        eos_id=85,
        eos_early_stop=True,
        gen_length=4,
        block_length=4,
    )
