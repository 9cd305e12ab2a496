"""`generate(..., on_step=...)`: one report per step with what the step did.

A server streams blocks and canvases from these reports, and the benchmark times steps with
them, so they must agree with the result: as many reports as steps, commits that add up to the
answer, the canvas as it stood after each commit, and the dense / sparse flag the policy chose.
"""

from __future__ import annotations

import torch

import dyllm
from dyllm.generation import StepReport
from dyllm.policies import TopK
from tests.checkpoints import tiny_model

PROMPTS = [[5, 17, 33, 8], [9, 4, 61, 2, 70, 12]]
OPTIONS = {"gen_length": 16, "steps": 8, "block_length": 8}


def test_reports_add_up_to_the_result():
    model = tiny_model("llada", never_predicts_mask=True)
    reports: list[StepReport] = []
    result = dyllm.generate(
        model, PROMPTS, policy=TopK(0.5, warmup_steps=3), on_step=reports.append, **OPTIONS
    )
    assert len(reports) == result.stats.steps_run == 8
    assert [r.dense for r in reports] == [True] * 3 + [False] * 5
    assert [r.context.step for r in reports] == list(range(8))
    prompt_length = reports[0].context.prompt_length
    committed = torch.stack([r.committed for r in reports]).sum(dim=0)  # [B, L]
    assert committed[:, :prompt_length].eq(0).all()
    assert committed[:, prompt_length:].eq(1).all()  # every answer position exactly once
    assert reports[-1].canvas[:, prompt_length:].tolist() == result.token_ids
    for report in reports:
        width = report.context.logit_end - report.context.logit_start
        assert report.logits.shape == (2, width, model.config.vocab_size)
        assert report.denoiser_seconds > 0
    before = reports[3].canvas
    assert (before != reports[2].canvas).eq(reports[3].committed).all()


def test_dense_generation_reports_dense_steps():
    model = tiny_model("dream", never_predicts_mask=True)
    reports: list[StepReport] = []
    dyllm.generate(model, PROMPTS, on_step=reports.append, **OPTIONS)
    assert reports and all(report.dense for report in reports)
