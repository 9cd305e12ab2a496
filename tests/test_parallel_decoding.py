"""Fast-dLLM parallel decoding: the threshold and factor rules, and adaptive block loops."""

import torch

from dyllm import generate
from dyllm.generation import run_sampler
from dyllm.generation.commit_rules import (
    commit_most_confident,
    factor_selection,
    threshold_selection,
)
from tests.mock_models import (
    MASK,
    CharTokenizer,
    RecordingDenoiser,
    ScriptedLM,
    peaked_logits,
)

TOKENS = CharTokenizer()
A, B, C, D = TOKENS.encode("abcd")
CONFIDENT = 30.0  # probability 1 / (1 + 47 e^-30): 1.0 in float64
UNSURE = 1.0  # probability e / (e + 47) = 0.055


def rows(*values):
    return torch.tensor(values, dtype=torch.float64)


def eligible_all(confidence):
    return torch.ones_like(confidence, dtype=torch.bool)


def test_threshold_commits_all_above_and_always_the_best():
    confidence = rows([0.95, 0.5, 0.91, 0.2], [0.3, 0.6, 0.1, 0.0], [0.9, 0.95, 0.1, 0.0])
    chosen = threshold_selection(confidence, eligible_all(confidence), 0.9)
    assert chosen.tolist() == [
        [True, False, True, False],
        [False, True, False, False],  # nothing reaches 0.9: the most confident alone
        [True, True, False, False],  # equal to the threshold counts (Fast-dLLM drops c < t)
    ]


def test_threshold_ignores_ineligible_positions_and_finished_rows():
    confidence = rows([0.99, 0.4, 0.95, 0.2], [0.99, 0.99, 0.99, 0.99])
    eligible = torch.tensor([[False, True, True, True], [False, False, False, False]])
    chosen = threshold_selection(confidence, eligible, 0.9)
    assert chosen.tolist() == [[False, False, True, False], [False] * 4]


def test_factor_commits_the_longest_passing_prefix():
    # factor 1: the n-th most confident needs c_n >= 1 - 1 / (n + 1): .667, .75, .8 for n = 2..4.
    # Row 0 sorted: .95, .8 (>= .667), .79 (>= .75), .7 (< .8) -> the first three.
    # Row 1: .9, .8 (>= .667), .1 (< .75): two (Fast-dLLM's loop would also take the last).
    confidence = rows([0.95, 0.8, 0.7, 0.79], [0.1, 0.9, 0.8, -1.0])
    eligible = torch.tensor([[True] * 4, [True, True, True, False]])
    chosen = factor_selection(confidence, eligible, 1.0)
    assert chosen.tolist() == [[True, True, False, True], [False, True, True, False]]


def test_factor_two():
    # factor 2: thresholds 1/3, 1/2 for n = 2, 3. Sorted .5, .45 (>= .333), .4 (< .5).
    confidence = rows([0.5, 0.4, 0.45, 0.1])
    chosen = factor_selection(confidence, eligible_all(confidence), 2.0)
    assert chosen.tolist() == [[True, False, True, False]]
    assert not factor_selection(confidence, torch.zeros_like(chosen), 2.0).any()


def test_factor_always_commits_the_most_confident():
    # factor 1 asks c_1 >= 1 - 1/2 = .5; .3 fails, yet the first is always committed.
    confidence = rows([0.2, 0.3, 0.1])
    chosen = factor_selection(confidence, eligible_all(confidence), 1.0)
    assert chosen.tolist() == [[False, True, False]]


def test_commit_most_confident_picks_the_k_largest():
    confidence = rows([0.1, 0.7, float("-inf"), 0.5], [0.9, 0.2, 0.3, 0.4])
    chosen = commit_most_confident(confidence, torch.tensor([2, 0]))
    assert chosen.tolist() == [[False, True, False, True], [False] * 4]


def test_threshold_decodes_a_confident_block_in_one_step_whatever_steps_says():
    model = ScriptedLM({None: peaked_logits([C] * 10, [CONFIDENT] * 10)})
    result = generate(model, [A, B], gen_length=8, block_length=4, steps=8, threshold=0.9)
    assert result.token_ids == [[C] * 8]
    assert result.stats.steps_run == 2 and result.stats.nfe == 2


def test_factor_adapts_the_step_count():
    confident = ScriptedLM({None: peaked_logits([C] * 10, [CONFIDENT] * 10)})
    assert generate(confident, [A, B], gen_length=8, block_length=4, factor=1.0).stats.nfe == 2
    unsure = ScriptedLM({None: peaked_logits([C] * 10, [UNSURE] * 10)})
    result = generate(unsure, [A, B], gen_length=8, block_length=4, factor=1.0)
    assert result.stats.steps_run == 8 and result.token_ids == [[C] * 8]


def test_finished_rows_commit_nothing_while_others_finish_the_block():
    confident = peaked_logits([C] * 10, [CONFIDENT] * 10)
    unsure = peaked_logits([D] * 10, [UNSURE] * 10)
    model = ScriptedLM({A: confident, B: unsure})
    recorder = RecordingDenoiser(model)
    result = run_sampler(
        model, [[A, A], [B, B]], recorder, gen_length=8, block_length=4, threshold=0.9
    )
    assert result.token_ids == [[C] * 8, [D] * 8]
    contexts = recorder.contexts
    assert len(contexts) == 8  # the unsure row needs one step per token, 4 per block
    after_first_step = recorder.inputs[1]
    assert (after_first_step[0, 2:6] == C).all() and (after_first_step[0, 6:] == MASK).all()
    for context in contexts[2:4]:
        assert not context.newly_committed[0].any()
        assert int(context.newly_committed[1].sum()) == 1


def test_dream_threshold_and_factor():
    model = ScriptedLM({None: peaked_logits([C] * 10, [CONFIDENT] * 10)}, family="dream")
    greedy = dict(gen_length=8, temperature=0.0)  # Dream's unset temperature is 1.0
    threshold = generate(model, [A, B], block_length=4, threshold=0.9, **greedy)
    assert threshold.token_ids == [[C] * 8] and threshold.stats.steps_run == 2
    unsure = ScriptedLM({None: peaked_logits([C] * 10, [UNSURE] * 10)}, family="dream")
    factor = generate(unsure, [A, B], factor=1.0, **greedy)
    assert factor.token_ids == [[C] * 8] and factor.stats.steps_run == 8
