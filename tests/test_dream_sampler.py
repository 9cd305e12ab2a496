"""Dream sampler: token filtering, confidences, logit shift, schedules, origin, blocks, padding.

Dream's unset temperature is its reference's 1.0, so tests of greedy behaviour pass 0.
"""

import math

import pytest
import torch

from dyllm import generate
from dyllm.generation import run_sampler
from dyllm.generation.token_sampling import dream_sample_tokens, top_k_filter, top_p_filter
from tests.mock_models import (
    MASK,
    VOCAB_SIZE,
    CharTokenizer,
    RecordingDenoiser,
    ScriptedLM,
    TinyBidirectionalLM,
    peaked_logits,
)

TOKENS = CharTokenizer()
A, B, C, D, E = TOKENS.encode("abcde")
FLOOR = torch.finfo(torch.float64).min


def reference_dream(
    model, prompt, *, steps, gen_length, alg, temperature, top_p=1.0, top_k=50, seed=0, eps=1e-3
):
    """Dream's published `_sample` and `sample_tokens` restated as a plain loop for one prompt
    (the test oracle). -> (answer tokens, the canvas each step's forward saw).

    top_p / top_k default to what `diffusion_generate` runs with when the caller leaves them
    unset (transformers' global generation defaults: 1.0 and 50); None turns a filter off.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.tensor([prompt + [MASK] * gen_length])
    canvases = []
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        canvases.append(x.clone())
        masked = x == MASK
        logits = model(x)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        chosen_logits = logits[masked]
        if temperature > 0:
            chosen_logits = chosen_logits / temperature
        if top_p is not None and top_p < 1:
            ordered, order = torch.sort(chosen_logits, descending=True)
            before = torch.cumsum(torch.softmax(ordered, -1), -1) - torch.softmax(ordered, -1)
            drop = torch.zeros_like(before, dtype=torch.bool)
            drop[:, 1:] = (before > top_p)[:, 1:]
            drop = torch.zeros_like(drop).scatter(-1, order, drop)
            chosen_logits = chosen_logits.masked_fill(drop, FLOOR)
        if top_k is not None:
            kth = torch.topk(chosen_logits, min(top_k, chosen_logits.shape[-1])).values[:, -1:]
            chosen_logits = chosen_logits.masked_fill(chosen_logits < kth, FLOOR)
        probabilities = torch.softmax(chosen_logits, -1)
        if temperature > 0:
            tokens = torch.multinomial(probabilities, 1, True, generator=generator)[:, 0]
            confidence = probabilities[torch.arange(len(tokens)), tokens]
        else:
            confidence, tokens = probabilities.max(-1)
        if alg == "topk_margin":
            top_two = probabilities.sort(-1, descending=True).values
            confidence = top_two[:, 0] - top_two[:, 1]
        elif alg == "entropy":
            confidence = (probabilities * torch.log(probabilities + 1e-10)).sum(-1)
        mean_masked = masked.sum() / 1
        if i == steps - 1:
            count = int(mean_masked)
        else:
            count = int(mean_masked * (1 - timesteps[i + 1] / timesteps[i]))
        full = torch.full(x.shape, -math.inf, dtype=confidence.dtype)
        full[masked] = confidence
        proposals = torch.full_like(x, MASK)
        proposals[masked] = tokens
        if count > 0:
            chosen = torch.topk(full, count).indices
            x[0, chosen[0]] = proposals[0, chosen[0]]
    return x[0, len(prompt) :].tolist(), canvases


@pytest.mark.parametrize(
    ("alg", "temperature", "top_p", "steps"),
    [("maskgit_plus", 0.0, None, 12), ("entropy", 0.0, None, 5), ("entropy", 0.8, 0.9, 12)],
)
def test_matches_the_reference_loop(alg, temperature, top_p, steps):
    model = TinyBidirectionalLM("dream", seed=5)
    prompt = TOKENS.encode("tell me a story")
    result = generate(
        model,
        prompt,
        gen_length=12,
        steps=steps,
        alg=alg,
        temperature=temperature,
        top_p=top_p,
        seed=8,
    )
    expected, _ = reference_dream(
        model,
        prompt,
        steps=steps,
        gen_length=12,
        alg=alg,
        temperature=temperature,
        top_p=top_p,
        seed=8,
    )
    assert result.token_ids == [expected]


def wide_vocabulary_model() -> TinyBidirectionalLM:
    """A Dream-like mock with 160 token ids, so that a top-50 filter removes most of them.

    Its tokenizer is dropped: the character tokenizer cannot decode ids past 47.
    """
    model = TinyBidirectionalLM("dream", seed=11, vocab_size=160)
    model.tokenizer = None
    return model


def run_recorded(**options) -> tuple[list[int], list[list]]:
    """(answer tokens, the canvas each forward saw) of `generate` on the wide model."""
    model = wide_vocabulary_model()
    recorder = RecordingDenoiser(model)
    result = run_sampler(model, PROMPT, recorder, **options)
    return result.token_ids[0], [canvas.tolist() for canvas in recorder.inputs]


PROMPT = TOKENS.encode("tell me a story")
GREEDY = dict(gen_length=12, steps=12, temperature=0.0)
RANKED_ALGS = ["maskgit_plus", "topk_margin", "entropy"]


@pytest.mark.parametrize("alg", RANKED_ALGS)
def test_greedy_runs_with_top_k_unset_commit_in_the_references_order(alg):
    # Left unset, top_k is Dream's 50: the greedy tokens are the argmax either way, but the
    # confidences come from the renormalised top-50 distribution, which reorders the commits.
    expected, filtered = reference_dream(wide_vocabulary_model(), PROMPT, alg=alg, **GREEDY)
    _, unfiltered = reference_dream(wide_vocabulary_model(), PROMPT, alg=alg, top_k=None, **GREEDY)
    filtered = [canvas.tolist() for canvas in filtered]
    assert filtered != [canvas.tolist() for canvas in unfiltered]  # the filter matters here
    assert run_recorded(alg=alg, **GREEDY) == (expected, filtered)
    assert run_recorded(alg=alg, top_k=50, **GREEDY) == (expected, filtered)


@pytest.mark.parametrize("alg", RANKED_ALGS)
def test_top_k_zero_turns_the_filter_off(alg):
    expected, unfiltered = reference_dream(
        wide_vocabulary_model(), PROMPT, alg=alg, top_k=None, **GREEDY
    )
    assert run_recorded(alg=alg, top_k=0, **GREEDY) == (
        expected,
        [canvas.tolist() for canvas in unfiltered],
    )


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    # Sorted probabilities .6439 (idx 1), .2369 (idx 3), .0871 (idx 0), .0321 (idx 2);
    # cumulative .6439, .8808, .9679, 1.
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0]], dtype=torch.float64)
    assert top_p_filter(logits, 0.8).tolist() == [[FLOOR, 2.0, FLOOR, 1.0]]
    assert top_p_filter(logits, 0.5).tolist() == [[FLOOR, 2.0, FLOOR, FLOOR]]
    assert top_p_filter(logits, 0.95).tolist() == [[0.0, 2.0, FLOOR, 1.0]]


def test_top_k_keeps_the_k_largest_and_their_ties():
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0]], dtype=torch.float64)
    assert top_k_filter(logits, 2).tolist() == [[FLOOR, 2.0, FLOOR, 1.0]]
    assert top_k_filter(logits, 10).tolist() == logits.tolist()
    ties = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    assert top_k_filter(ties, 2).tolist() == [[1.0, 1.0, 1.0, FLOOR]]


def test_confidences_of_each_algorithm():
    logits = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64).log()
    generator = torch.Generator()
    confidence, x0 = dream_sample_tokens(logits, 0.0, None, None, "maskgit_plus", generator)
    assert x0.tolist() == [0] and confidence.item() == pytest.approx(0.5, rel=1e-12)
    margin, _ = dream_sample_tokens(logits, 0.0, None, None, "topk_margin", generator)
    assert margin.item() == pytest.approx(0.2, rel=1e-12)
    entropy, _ = dream_sample_tokens(logits, 0.0, None, None, "entropy", generator)
    expected = sum(p * math.log(p + 1e-10) for p in (0.5, 0.3, 0.2))
    assert entropy.item() == pytest.approx(expected, rel=1e-12)
    # top_p 0.6 keeps .5 and .3 (the one crossing .6): max probability .5 / .8.
    filtered, _ = dream_sample_tokens(logits, 0.0, 0.6, None, "maskgit_plus", generator)
    assert filtered.item() == pytest.approx(0.625, rel=1e-12)


def test_top_k_one_leaves_only_the_best_token_to_sample():
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0]] * 20, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    confidence, x0 = dream_sample_tokens(logits, 1.0, None, 1, "maskgit_plus", generator)
    assert x0.tolist() == [1] * 20 and confidence.tolist() == [1.0] * 20


def test_sampled_token_confidence_is_its_probability():
    logits = torch.tensor([[1.0, 0.0, 0.5]] * 50, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    confidence, x0 = dream_sample_tokens(logits, 1.0, None, None, "maskgit_plus", generator)
    probabilities = torch.softmax(logits[0], -1)
    assert torch.equal(confidence, probabilities[x0])
    assert set(x0.tolist()) == {0, 1, 2}


def test_logits_are_shifted_one_position():
    # Position p of the table proposes token tokens[p]; after the shift, answer column c
    # (absolute) takes the logits of column c - 1.
    tokens = [A, B, C, D, E, A, B]
    model = ScriptedLM({None: peaked_logits(tokens, [5.0] * 7)}, family="dream")
    result = generate(model, [A, B], gen_length=4, steps=4, alg="maskgit_plus", temperature=0.0)
    assert result.token_ids == [tokens[1:5]]


def test_maskgit_plus_commits_by_confidence_on_dreams_schedule():
    # steps = gen_length = 4 commits 0, 1, 1, 2 tokens. After the shift answer columns 2..5
    # read table rows 1..4: a, b, c, d with logits 1, 2, 3, 4, so d goes first, then c.
    table = peaked_logits([E, A, B, C, D, E], [0.0, 1.0, 2.0, 3.0, 4.0, 0.0])
    model = ScriptedLM({None: table}, family="dream")
    result = generate(model, [A, B], gen_length=4, steps=4, alg="maskgit_plus", temperature=0.0)
    answers = [call[0, 2:].tolist() for call in model.calls]
    assert answers == [
        [MASK, MASK, MASK, MASK],
        [MASK, MASK, MASK, MASK],
        [MASK, MASK, MASK, D],
        [MASK, MASK, C, D],
    ]
    assert result.token_ids == [[A, B, C, D]]


def test_origin_reveals_each_mask_with_probability_one_minus_s_over_t():
    model = ScriptedLM({None: peaked_logits([C] * 40, [3.0] * 40)}, family="dream")
    result = generate(model, [A, B], gen_length=36, steps=4, alg="origin", temperature=0.0, seed=6)
    # At temperature 0 the only draws of step 0 are the 36 reveal coins, against
    # 1 - s / t = 1 - .75025 = .24975.
    coins = torch.rand(36, generator=torch.Generator().manual_seed(6))
    expected_revealed = coins < (1 - torch.linspace(1, 1e-3, 5)[1])
    revealed = model.calls[1][0, 2:] != MASK
    assert torch.equal(revealed, expected_revealed)
    assert 0 < int(revealed.sum()) < 18
    assert result.token_ids == [[C] * 36]


def test_origin_is_seeded():
    model = TinyBidirectionalLM("dream", seed=1)
    options = dict(gen_length=16, steps=8, alg="origin", temperature=0.5)
    first = generate(model, [A], seed=3, **options).token_ids
    assert generate(model, [A], seed=3, **options).token_ids == first
    assert generate(model, [A], seed=4, **options).token_ids != first


def test_alg_temp_samples_positions_reproducibly():
    model = TinyBidirectionalLM("dream", seed=1)
    options = dict(gen_length=16, steps=8, alg="entropy", alg_temp=0.5)

    def commit_order(seed):
        recorder = RecordingDenoiser(model)
        run_sampler(model, [A, B], recorder, seed=seed, **options)
        return [(call[0, 2:] == MASK).tolist() for call in recorder.inputs]

    assert commit_order(0) == commit_order(0)
    assert commit_order(0) != commit_order(1)


def test_blocks_confine_commits_to_the_current_block():
    model = TinyBidirectionalLM("dream", seed=2)
    recorder = RecordingDenoiser(model)
    run_sampler(model, [A, B], recorder, gen_length=12, block_length=4, steps=6, alg="entropy")
    inputs = recorder.inputs
    assert len(inputs) == 6
    for step in (0, 1):
        assert (inputs[step][0, 6:] == MASK).all()
    assert (inputs[2][0, 2:6] != MASK).all() and (inputs[2][0, 6:] == MASK).all()
    assert (inputs[4][0, 2:10] != MASK).all() and (inputs[4][0, 10:] == MASK).all()


@pytest.mark.parametrize(
    ("alg", "block_length"), [("maskgit_plus", None), ("entropy", 4), ("topk_margin", None)]
)
def test_padded_batch_rows_equal_single_prompt_runs(alg, block_length):
    model = TinyBidirectionalLM("dream", seed=6)
    prompts = [TOKENS.encode("how are you?"), TOKENS.encode("hi"), TOKENS.encode("a b c d")]
    options = dict(gen_length=12, steps=12, alg=alg, block_length=block_length, temperature=0.0)
    batch = generate(model, prompts, **options)
    alone = [generate(model, prompt, **options).token_ids[0] for prompt in prompts]
    assert batch.token_ids == alone


def test_dream_sampler_runs_on_a_llada_model_without_shift():
    tokens = [A, B, C, D, E, A]
    model = ScriptedLM({None: peaked_logits(tokens, [5.0] * 6)})
    options = dict(gen_length=4, steps=4, alg="maskgit_plus", temperature=0.0)
    result = generate(model, [A, B], sampler="dream", **options)
    assert result.token_ids == [tokens[2:6]]


def test_bfloat16_logits_sample():
    table = peaked_logits([C] * 8, [2.0] * 8).to(torch.bfloat16)
    model = ScriptedLM({None: table}, family="dream")
    options = dict(gen_length=6, steps=6, alg="entropy", temperature=0.5, top_p=0.9)
    result = generate(model, [A, B], **options)
    assert len(result.token_ids[0]) == 6 and MASK not in result.token_ids[0]


def test_unknown_rows_get_the_default_table():
    model = ScriptedLM({None: torch.zeros(4, VOCAB_SIZE)}, family="dream")
    assert model(torch.tensor([[A, B, C, D]])).shape == (1, 4, VOCAB_SIZE)
