"""LLaDA sampler: commit order, schedule, CFG, Gumbel sampling, EOS options, padding, seeds."""

import math

import pytest
import torch

from dyllm import generate
from dyllm.generation import run_sampler
from dyllm.generation.token_sampling import gumbel_perturb, llada_propose
from tests.mock_models import (
    EOS,
    MASK,
    VOCAB_SIZE,
    CharTokenizer,
    RecordingDenoiser,
    ScriptedLM,
    TinyBidirectionalLM,
    peaked_logits,
)

TOKENS = CharTokenizer()
A, B, C, D = TOKENS.encode("abcd")


def reference_llada(model, prompt, steps, gen_length, block_length, temperature, remasking, seed):
    """LLaDA's published `generate` restated as a plain loop for one prompt (the test oracle)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.tensor([prompt + [MASK] * gen_length])
    blocks = gen_length // block_length
    steps_per_block = steps // blocks
    for block in range(blocks):
        start = len(prompt) + block * block_length
        end = start + block_length
        masked = int((x[0, start:end] == MASK).sum())
        per_step = [
            masked // steps_per_block + (1 if i < masked % steps_per_block else 0)
            for i in range(steps_per_block)
        ]
        for i in range(steps_per_block):
            # The reference draws noise for every position; only the block's can be committed,
            # so dyllm (and this oracle) draw for the block's columns alone.
            logits = model(x)[0, start:end]  # [W, V]
            if temperature > 0:
                uniform = torch.rand(logits.shape, dtype=torch.float64, generator=generator)
                x0 = (logits.double().exp() / (-uniform.log()) ** temperature).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                confidence = torch.softmax(logits, -1)[torch.arange(block_length), x0]
            else:
                confidence = torch.rand(block_length, generator=generator)
            confidence[x[0, start:end] != MASK] = -math.inf
            chosen = torch.topk(confidence, per_step[i]).indices
            x[0, start + chosen] = x0[chosen]
    return x[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    ("temperature", "remasking", "block_length", "steps"),
    [(0.0, "low_confidence", 4, 12), (0.7, "low_confidence", 12, 6), (1.0, "random", 6, 8)],
)
def test_matches_the_reference_loop(temperature, remasking, block_length, steps):
    model = TinyBidirectionalLM(seed=3)
    prompt = TOKENS.encode("what is 2 and 2?")
    result = generate(
        model,
        prompt,
        gen_length=12,
        block_length=block_length,
        steps=steps,
        temperature=temperature,
        remasking=remasking,
        seed=11,
    )
    expected = reference_llada(model, prompt, steps, 12, block_length, temperature, remasking, 11)
    assert result.token_ids == [expected]


def test_low_confidence_commits_the_most_confident_position_first():
    # Answer positions 2..5 propose a, b, c, d with logits 1, 4, 2, 3: order b, d, c, a.
    table = torch.cat(
        [
            torch.zeros(2, VOCAB_SIZE, dtype=torch.float64),
            peaked_logits([A, B, C, D], [1.0, 4.0, 2.0, 3.0]),
        ]
    )
    model = ScriptedLM({None: table})
    result = generate(model, [A, B], gen_length=4, block_length=4, steps=4)
    answers = [call[0, 2:].tolist() for call in model.calls]
    assert answers == [
        [MASK, MASK, MASK, MASK],
        [MASK, B, MASK, MASK],
        [MASK, B, MASK, D],
        [MASK, B, C, D],
    ]
    assert result.token_ids == [[A, B, C, D]]


def test_steps_split_each_block_evenly():
    # 8 masks over 3 steps: 3, 3, 2 committed, so 5, 2 masks left before steps 2 and 3.
    table = peaked_logits([A] * 10, [float(i) for i in range(10)])
    model = ScriptedLM({None: table})
    result = generate(model, [A, B], gen_length=8, block_length=8, steps=3)
    assert [int((call == MASK).sum()) for call in model.calls] == [8, 5, 2]
    assert result.stats.steps_run == 3 and result.stats.nfe == 3


def test_more_steps_than_block_positions_runs_every_step():
    table = peaked_logits([A] * 6, [1.0] * 6)
    model = ScriptedLM({None: table})
    result = generate(model, [A, B], gen_length=4, block_length=4, steps=8)
    assert result.stats.steps_run == 8 and result.stats.nfe == 8
    assert [int((call == MASK).sum()) for call in model.calls] == [4, 3, 2, 1, 0, 0, 0, 0]


def test_blocks_are_decoded_left_to_right():
    model = TinyBidirectionalLM(seed=1)
    recorder = RecordingDenoiser(model)
    run_sampler(model, [A, B, C], recorder, gen_length=8, block_length=4, steps=8)
    first_of_block_1 = recorder.inputs[4][0]
    assert (first_of_block_1[3:7] != MASK).all() and (first_of_block_1[7:] == MASK).all()
    for step in range(4):
        assert (recorder.inputs[step][0, 7:] == MASK).all()
    contexts = recorder.contexts
    assert [(c.block, c.block_start, c.block_end) for c in contexts] == [(0, 3, 7)] * 4 + [
        (1, 7, 11)
    ] * 4
    assert [c.first_step_in_block for c in contexts] == [True, False, False, False] * 2
    assert contexts[0].newly_committed is None
    committed_by_step_0 = recorder.inputs[1] != recorder.inputs[0]
    assert torch.equal(contexts[1].newly_committed, committed_by_step_0)


def test_cfg_combines_as_unconditional_plus_scaled_difference():
    # Conditional rows (prompt starts with a) prefer c (2.0) over d (1.9); unconditional rows
    # (prompt masked) score c 2.0, d 0.0. With cfg 1: c = 2 + 2*0 = 2, d = 0 + 2*1.9 = 3.8 -> d.
    conditional = torch.zeros(8, VOCAB_SIZE, dtype=torch.float64)
    conditional[:, C], conditional[:, D] = 2.0, 1.9
    unconditional = torch.zeros(8, VOCAB_SIZE, dtype=torch.float64)
    unconditional[:, C] = 2.0
    model = ScriptedLM({A: conditional, MASK: unconditional})
    recorder = RecordingDenoiser(model)
    plain = generate(model, [A, B], gen_length=4, block_length=4, steps=4)
    guided = run_sampler(
        model, [A, B], recorder, gen_length=4, block_length=4, steps=4, cfg_scale=1.0
    )
    assert plain.token_ids == [[C] * 4]
    assert guided.token_ids == [[D] * 4]
    first_input = recorder.inputs[0]
    assert first_input.shape == (2, 6)
    assert first_input[1, :2].tolist() == [MASK, MASK] and first_input[0, :2].tolist() == [A, B]
    contexts = recorder.contexts
    assert all(c.classifier_free_guidance for c in contexts)
    committed = contexts[1].newly_committed
    assert committed.shape == (2, 6) and torch.equal(committed[0], committed[1])
    assert int(committed[0].sum()) == 1
    assert guided.stats.nfe == 8 and guided.stats.steps_run == 4


def test_gumbel_at_temperature_zero_is_argmax_and_draws_nothing():
    logits = torch.randn(2, 5, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    x0, _ = llada_propose(logits, 0.0, "low_confidence", generator)
    assert torch.equal(x0, logits.argmax(-1))
    assert torch.equal(generator.get_state(), state)


def test_gumbel_scores_are_exp_logits_over_noise_power_in_float64():
    logits = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.bfloat16)
    scores = gumbel_perturb(logits, 0.7, torch.Generator().manual_seed(9))
    uniform = torch.rand((1, 3), dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    expected = logits.double().exp() / (-uniform.log()) ** 0.7
    assert scores.dtype == torch.float64
    assert torch.equal(scores, expected)


def test_low_confidence_is_the_softmax_of_the_chosen_token_at_logits_dtype():
    logits = torch.tensor([[[1.0, 3.0, 0.0]]], dtype=torch.bfloat16)
    x0, confidence = llada_propose(logits, 0.0, "low_confidence", torch.Generator())
    assert x0.tolist() == [[1]]
    assert confidence.dtype == torch.bfloat16
    assert confidence.item() == torch.softmax(logits, -1)[0, 0, 1].item()


def test_seeded_sampling_repeats_and_another_seed_differs():
    model = TinyBidirectionalLM(seed=2)
    options = dict(gen_length=16, block_length=8, steps=16, temperature=1.0)
    first = generate(model, [A, B, C], seed=4, **options)
    again = generate(model, [A, B, C], seed=4, **options)
    other = generate(model, [A, B, C], seed=5, **options)
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids


def test_random_remasking_is_seeded():
    model = TinyBidirectionalLM(seed=2)
    options = dict(gen_length=16, block_length=16, steps=16, remasking="random")

    def commit_order(seed):
        recorder = RecordingDenoiser(model)
        run_sampler(model, [A, B], recorder, seed=seed, **options)
        return [(call[0, 2:] == MASK).tolist() for call in recorder.inputs]

    assert commit_order(1) == commit_order(1)
    assert commit_order(1) != commit_order(2)


@pytest.mark.parametrize("cfg_scale", [0.0, 0.5])
def test_padded_batch_rows_equal_single_prompt_runs(cfg_scale):
    model = TinyBidirectionalLM(seed=4)
    prompts = [TOKENS.encode("how are you?"), TOKENS.encode("hi"), TOKENS.encode("a b c d")]
    options = dict(gen_length=12, block_length=4, steps=12, cfg_scale=cfg_scale)
    batch = generate(model, prompts, **options)
    alone = [generate(model, prompt, **options).token_ids[0] for prompt in prompts]
    assert batch.token_ids == alone


def test_logits_eos_inf_never_generates_eos():
    table = peaked_logits([EOS] * 6, [5.0] * 6)
    table[:, C] = 1.0
    model = ScriptedLM({None: table})
    assert generate(model, [A, B], gen_length=4, steps=4).token_ids == [[EOS] * 4]
    blocked = generate(model, [A, B], gen_length=4, steps=4, logits_eos_inf=True)
    assert blocked.token_ids == [[C] * 4]


def test_confidence_eos_eot_inf_removes_eot_and_at_temperature_zero_eos_too():
    # Vocabulary of four: 0 = a, 1 = eos, 2 = eot, 3 = b.
    logits = torch.tensor([[[2.0, 1.0, 1.0, 0.0], [0.0, 3.0, 0.0, 0.0]]], dtype=torch.float64)
    options = dict(confidence_eos_eot_inf=True, eos_token_id=1, eot_token_id=2)
    x0, confidence = llada_propose(logits, 0.0, "low_confidence", torch.Generator(), **options)
    assert x0.tolist() == [[0, 1]]
    # Row 0: softmax over (a, b) only = e^2 / (e^2 + 1); row 1 chose EOS, now weightless.
    assert confidence[0, 0].item() == pytest.approx(math.exp(2) / (math.exp(2) + 1), rel=1e-12)
    assert confidence[0, 1].item() == 0.0

    generator = torch.Generator().manual_seed(3)
    x0, confidence = llada_propose(logits, 1.0, "low_confidence", generator, **options)
    kept = torch.softmax(logits.index_fill(-1, torch.tensor([2]), -math.inf), dim=-1)
    assert torch.equal(confidence, kept.gather(-1, x0.unsqueeze(-1)).squeeze(-1))
