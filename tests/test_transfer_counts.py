"""Step schedules against hand-computed values: LLaDA's even split, Dream's float32 timesteps."""

import torch

from dyllm.generation.transfer_counts import (
    dream_timesteps,
    dream_transfer_count,
    llada_transfer_counts,
)

CPU = torch.device("cpu")


def masked_rows(*counts: int, width: int = 12) -> torch.Tensor:
    """BoolTensor [len(counts), width] with the first `count` positions of each row masked."""
    columns = torch.arange(width).unsqueeze(0)
    return columns < torch.tensor(counts).unsqueeze(1)


def test_llada_splits_ten_masks_over_four_steps_front_loaded():
    assert llada_transfer_counts(masked_rows(10), 4).tolist() == [[3, 3, 2, 2]]


def test_llada_counts_are_per_row():
    # 7 over 4: base 1, remainder 3 -> 2, 2, 2, 1; a row without masks commits nothing.
    counts = llada_transfer_counts(masked_rows(10, 7, 0), 4)
    assert counts.tolist() == [[3, 3, 2, 2], [2, 2, 2, 1], [0, 0, 0, 0]]


def test_llada_more_steps_than_masks_leaves_empty_steps_like_the_reference():
    assert llada_transfer_counts(masked_rows(3), 5).tolist() == [[1, 1, 1, 0, 0]]


def test_dream_timesteps_are_float32_from_one_to_eps():
    timesteps = dream_timesteps(4, 1e-3, CPU)
    assert timesteps.dtype == torch.float32
    expected = torch.tensor([1.0, 0.75025, 0.5005, 0.25075, 0.001], dtype=torch.float32)
    torch.testing.assert_close(timesteps, expected)


def dream_counts(gen_length: int, steps: int, batch: int = 1) -> list[int]:
    """k per step for a fully masked answer, masks decreasing as the schedule commits."""
    timesteps = dream_timesteps(steps, 1e-3, CPU)
    remaining, counts = gen_length * batch, []
    for i in range(steps):
        count = dream_transfer_count(
            torch.tensor(remaining), batch, timesteps[i], timesteps[i + 1], i == steps - 1
        )
        counts.append(count)
        remaining -= count * batch
    return counts


def test_dream_steps_equal_to_length_four():
    # ts = 1, .75025, .5005, .25075, .001
    # step 0: 4 * (1 - .75025)          = 0.999 -> 0
    # step 1: 4 * (1 - .5005 / .75025)  = 1.33  -> 1
    # step 2: 3 * (1 - .25075 / .5005)  = 1.497 -> 1
    # step 3 (last): int(2)             = 2
    assert dream_counts(4, 4) == [0, 1, 1, 2]


def test_dream_first_step_commits_nothing_and_last_two_when_steps_equal_length():
    for length in (64, 128, 256):
        counts = dream_counts(length, length)
        assert counts[0] == 0 and counts[-1] == 2 and sum(counts) == length


def test_dream_other_shapes():
    # 8 over 4 steps: 8*.24975=1.998 -> 1; 7*.332889=2.33 -> 2; 5*.499=2.495 -> 2; last 3.
    assert dream_counts(8, 4) == [1, 2, 2, 3]
    # 8 over 2 steps: ts = 1, .5005, .001; 8*.4995=3.996 -> 3; last 5.
    assert dream_counts(8, 2) == [3, 5]
    # 16 over 4 steps: 16*.24975=3.996 -> 3; 13*.332889=4.33 -> 4; 9*.499=4.49 -> 4; last 5.
    assert dream_counts(16, 4) == [3, 4, 4, 5]


def test_dream_count_averages_masks_over_the_batch():
    timesteps = dream_timesteps(4, 1e-3, CPU)
    # 7 masks over 2 rows = 3.5 per row; 3.5 * (1 - .5005 / .75025) = 1.165 -> 1; last int(3.5).
    assert dream_transfer_count(torch.tensor(7), 2, timesteps[1], timesteps[2], False) == 1
    assert dream_transfer_count(torch.tensor(7), 2, timesteps[3], timesteps[4], True) == 3
