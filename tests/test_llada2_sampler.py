"""LLaDA2.0's block-diffusion sampler on a scripted model: the transfer schedule, the threshold
rule, prompt blocks left alone, the block-causal windows, EOS stop after a block and the cut
after the first EOS (REFERENCE-families.md, "LLaDA2.0 sampler")."""

from __future__ import annotations

import math

import pytest
import torch

from dyllm.generation.llada2 import llada2_generate, llada2_transfer_schedule
from dyllm.kernels.attention_variants import block_causal_mask

VOCAB, EOS, MASK = 16, 14, 15


class ScriptedBlockModel:
    """Position i proposes script[i] = (token, logit); other tokens get logit 0.

    The chosen token's probability is e^s / (e^s + VOCAB - 1). Each call is recorded, and the
    attention it is given is checked to be the block-causal mask of its window.
    """

    def __init__(self, script: dict[int, tuple[int, float]], block_length: int) -> None:
        self.script = script
        self.block_length = block_length
        self.calls: list[torch.Tensor] = []

    def __call__(self, input_ids, attention, position_ids):
        width = input_ids.shape[1]
        assert torch.equal(attention, block_causal_mask(width, self.block_length, "cpu"))
        assert position_ids.tolist() == [list(range(width))]
        self.calls.append(input_ids.clone())
        logits = torch.zeros(1, width, VOCAB)
        for position in range(width):
            token, strength = self.script.get(position, (0, 0.0))
            logits[0, position, token] = strength
        return logits


def windows(result) -> list[int]:
    """The window of each forward call of a one-prompt run."""
    return [ends[0] for ends in result.window_lengths]


def probability(strength: float) -> float:
    return math.exp(strength) / (math.exp(strength) + VOCAB - 1)


def test_transfer_schedule() -> None:
    assert llada2_transfer_schedule(32, 32) == [1] * 32
    assert llada2_transfer_schedule(10, 4) == [3, 3, 2, 2]
    assert llada2_transfer_schedule(4, 8) == [1, 1, 1, 1, 0, 0, 0, 0]


def test_threshold_commits_every_confident_mask_else_the_scheduled_count() -> None:
    assert probability(8.0) > 0.95 > probability(3.0) > probability(2.0) > probability(1.0)
    script = {4: (5, 8.0), 5: (6, 8.0), 6: (7, 2.0), 7: (8, 3.0)}
    model = ScriptedBlockModel(script, block_length=4)
    result = llada2_generate(
        model, [1, 2, 3, 4], mask_id=MASK, eos_id=EOS, gen_length=4, block_length=4, steps=4
    )
    assert result.tokens[0] == [5, 6, 7, 8]
    # step 1: both confident masks at once (2 > n = 1); step 2: the more confident of the
    # others (position 7); step 3: the last
    canvases = [call[0, 4:].tolist() for call in model.calls]
    assert canvases == [[MASK] * 4, [5, 6, MASK, MASK], [5, 6, MASK, 8]]
    assert windows(result) == [8, 8, 8] and len(set(windows(result))) == 1


def test_prompt_blocks_are_skipped_and_prompt_tokens_stay() -> None:
    # the prompt (6 tokens) fills block 0 and half of block 1; the model proposes other tokens
    # with full confidence at the prompt's positions: they must not be written
    script = {i: (9, 20.0) for i in range(6)} | {6: (5, 8.0), 7: (6, 8.0), 8: (EOS, 8.0)}
    model = ScriptedBlockModel(script, block_length=4)
    result = llada2_generate(
        model, [1, 2, 3, 4, 5, 6], mask_id=MASK, eos_id=EOS, gen_length=6, block_length=4
    )
    assert model.calls[0][0, :6].tolist() == [1, 2, 3, 4, 5, 6]
    assert windows(result)[0] == 8  # block 0 (all prompt) is never denoised
    assert all(call[0, :6].tolist() == [1, 2, 3, 4, 5, 6] for call in model.calls)
    assert result.tokens[0] == [5, 6, EOS]


def test_eos_stops_after_its_block_and_cuts_the_answer() -> None:
    script = {4: (5, 8.0), 5: (EOS, 8.0), 6: (7, 8.0), 7: (8, 8.0), 8: (9, 8.0)}
    model = ScriptedBlockModel(script, block_length=4)
    result = llada2_generate(
        model, [1, 2, 3, 4], mask_id=MASK, eos_id=EOS, gen_length=12, block_length=4, steps=4
    )
    # the whole block is finished (its later tokens too), then no later block is run
    assert max(windows(result)) == 8 and len(set(windows(result))) == 1
    assert result.tokens[0] == [5, EOS]


def test_without_eos_every_generated_token_is_returned() -> None:
    script = {i: (i % 10, 8.0) for i in range(3, 12)}
    model = ScriptedBlockModel(script, block_length=4)
    result = llada2_generate(
        model, [1, 2, 3], mask_id=MASK, eos_id=EOS, gen_length=6, block_length=4, steps=2
    )
    # 3 + 6 positions need 3 blocks of 4; the answer is exactly gen_length tokens
    assert result.tokens[0] == [3, 4, 5, 6, 7, 8]
    assert sorted(set(windows(result))) == [4, 8, 12]


def test_steps_are_capped_by_minimal_topk() -> None:
    script = {i: (5, 1.0) for i in range(2, 10)}  # never confident: the schedule decides
    model = ScriptedBlockModel(script, block_length=8)
    result = llada2_generate(
        model,
        [1, 2],
        mask_id=MASK,
        eos_id=EOS,
        gen_length=6,
        block_length=8,
        steps=8,
        minimal_topk=2,
    )
    # steps = min(8, 6 // 2) = 3; the schedule comes from block_length (8), not from the
    # block's 6 masks: [3, 3, 2], so two steps finish the block
    assert len(model.calls) == 2
    assert result.tokens[0] == [5] * 6


def test_eos_early_stop_returns_at_once() -> None:
    script = {2: (5, 8.0), 3: (EOS, 8.0), 4: (6, 1.0), 5: (7, 1.0)}
    model = ScriptedBlockModel(script, block_length=4)
    result = llada2_generate(
        model,
        [1, 2],
        mask_id=MASK,
        eos_id=EOS,
        gen_length=10,
        block_length=4,
        steps=4,
        eos_early_stop=True,
    )
    assert result.tokens[0] == [5, EOS] and result.forward_calls == 1


@pytest.mark.parametrize(
    ("prompt", "options", "message"),
    [
        ([1, 2], {"temperature": 0.5}, "greedy only"),
        ([1, 2], {"top_p": 0.9}, "greedy only"),
        (torch.ones(2, 3, dtype=torch.long), {}, "takes one prompt"),
        ([], {}, "prompt is empty"),
        ([1, 2], {"block_length": 0}, "block_length must be an integer >= 1"),
        ([1, 2], {"threshold": 1.5}, r"threshold must be a number in \[0, 1\]"),
        ([1, 2], {"gen_length": 1, "minimal_topk": 2}, "leaves no step"),
    ],
)
def test_bad_arguments_are_refused(prompt, options, message) -> None:
    model = ScriptedBlockModel({}, block_length=4)
    with pytest.raises(ValueError, match=message):
        llada2_generate(model, prompt, mask_id=MASK, eos_id=EOS, **options)


class CanvasModel:
    """Proposals computed from the window's tokens: `script(window: list[int])` returns
    {position: (token, logit)}; positions not named propose token 0 with logit 0."""

    def __init__(self, script, block_length: int) -> None:
        self.script = script
        self.block_length = block_length
        self.calls: list[list[int]] = []

    def __call__(self, input_ids, attention, position_ids):
        width = input_ids.shape[1]
        assert torch.equal(attention, block_causal_mask(width, self.block_length, "cpu"))
        window = input_ids[0].tolist()
        self.calls.append(window)
        logits = torch.zeros(1, width, VOCAB)
        for position, (token, strength) in self.script(window).items():
            if position < width:
                logits[0, position, token] = strength
        return logits


def run21(model, prompt, **options):
    from dyllm.generation.llada2 import llada21_generate

    defaults = {"mask_id": MASK, "eos_id": EOS, "block_length": 4, "threshold": 0.7}
    return llada21_generate(model, prompt, **(defaults | options))


def test_editing_rewrites_a_confident_changed_token_then_stops() -> None:
    def script(window):
        proposals = {4: (5, 8.0), 5: (6, 8.0), 6: (7, 8.0), 7: (8, 8.0)}
        if MASK not in window[4:8]:
            proposals[5] = (9, 8.0)  # once the block is full, the model changes its mind
        return proposals

    model = CanvasModel(script, block_length=4)
    result = run21(model, [1, 2, 3, 4], gen_length=4, editing_threshold=0.9)
    assert result.tokens[0] == [5, 9, 7, 8]
    # commit all four, edit position 5, then a step with neither mask nor edit ends the block
    assert [call[4:] for call in model.calls] == [[MASK] * 4, [5, 6, 7, 8], [5, 9, 7, 8]]


def test_edits_stop_after_max_post_steps() -> None:
    def script(window):
        flip = 9 if window[5] == 6 else 6
        return {4: (5, 8.0), 5: (flip if MASK not in window[4:8] else 6, 8.0), 6: (7, 8.0)} | {
            7: (8, 8.0)
        }

    model = CanvasModel(script, block_length=4)
    result = run21(model, [1, 2, 3, 4], gen_length=4, editing_threshold=0.9, max_post_steps=2)
    # step 1 commits; steps 2 and 3 (post 1, 2) edit; post 3 > 2 ends the block uncalled
    assert len(model.calls) == 3
    assert result.tokens[0] == [5, 6, 7, 8]


def test_prompt_tokens_are_never_edited_and_low_confidence_takes_num_to_transfer() -> None:
    def script(window):
        return {i: (9, 8.0) for i in range(6)} | {6: (5, 1.0), 7: (6, 2.0)}

    model = CanvasModel(script, block_length=4)
    result = run21(model, [1, 2, 3, 4, 5, 6], gen_length=2, num_to_transfer=2)
    assert all(call[:6] == [1, 2, 3, 4, 5, 6] for call in model.calls)
    # neither mask is above 0.7: both are committed at once (num_to_transfer = 2)
    assert model.calls[1][6:] == [5, 6]
    assert result.tokens[0] == [5, 6]


def test_no_eos_stop_between_blocks_but_the_answer_is_cut() -> None:
    def script(window):
        return {4: (5, 8.0), 5: (EOS, 8.0), 6: (7, 8.0), 7: (8, 8.0)} | {
            i: (10, 8.0) for i in range(8, 12)
        }

    model = CanvasModel(script, block_length=4)
    result = run21(model, [1, 2, 3, 4], gen_length=8)
    assert max(len(call) for call in model.calls) == 12  # block 2 ran despite the EOS
    assert result.tokens[0] == [5, EOS]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 1.0}, "greedy only"),
        ({"editing_threshold": 2}, "editing_threshold must be a number"),
        ({"max_post_steps": -1}, "max_post_steps must be an integer >= 0"),
        ({"num_to_transfer": 0}, "num_to_transfer must be an integer >= 1"),
    ],
)
def test_llada21_bad_arguments_are_refused(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        run21(CanvasModel(lambda window: {}, block_length=4), [1, 2], **options)
