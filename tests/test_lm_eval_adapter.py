"""The lm-eval adapter on the LLaDA-layout reference model with a task file written on the spot.

The task reads held-out `sort` problems from a local JSON-lines file (no download), asks lm-eval
for `generate_until` with exact match, and the test checks lm-eval's score against the suite
scorer's verdict on `dyllm.generate`'s answers under the same policy: the adapter must pass the
prompts through untouched and return the answers as dyllm gives them. Skipped when lm_eval is not
installed (`pip install 'dyllm[eval]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

import dyllm  # noqa: E402
from dyllm.policies import CosineThreshold  # noqa: E402
from dyllm.reference.scoring import score_predictions  # noqa: E402
from dyllm.reference.tasks import heldout_problems  # noqa: E402

PROBLEMS = heldout_problems("sort")[:6]
GEN_LENGTH = 24

TASK_YAML = """\
task: dyllm_local_sort
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {gen_length}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture()
def task_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    data = tmp_path / "sort.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n" for p in PROBLEMS)
    )
    (tmp_path / "dyllm_local_sort.yaml").write_text(
        TASK_YAML.format(data=data, gen_length=GEN_LENGTH)
    )
    return tmp_path


def _dyllm_answers() -> list[str]:
    model = dyllm.load("llada-ref")
    result = dyllm.generate(
        model,
        [p.prompt for p in PROBLEMS],
        policy=CosineThreshold(0.99),
        gen_length=GEN_LENGTH,
        block_length=8,
    )
    return result.texts


def test_lm_eval_scores_what_dyllm_generates(task_dir: Path) -> None:
    from lm_eval.tasks import TaskManager

    import dyllm.eval.lm_eval_adapter  # noqa: F401  (registers "dyllm")

    results = lm_eval.simple_evaluate(
        model="dyllm",
        model_args="pretrained=llada-ref,policy=dyllm,tau=0.99,block_length=8,batch_size=4",
        tasks=["dyllm_local_sort"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
    )
    answers = _dyllm_answers()
    samples = results["samples"]["dyllm_local_sort"]
    by_prompt = {sample["arguments"][0][0]: sample["resps"][0][0] for sample in samples}
    assert by_prompt == {p.prompt: answer for p, answer in zip(PROBLEMS, answers, strict=True)}
    expected = score_predictions(PROBLEMS, answers).overall.exact_match
    assert results["results"]["dyllm_local_sort"]["exact_match,none"] == expected


def test_loglikelihood_tasks_are_refused_with_a_reason() -> None:
    from dyllm.eval.lm_eval_adapter import DyLLMEvalModel

    model = DyLLMEvalModel(pretrained="llada-ref")
    with pytest.raises(NotImplementedError, match="generate_until tasks only"):
        model.loglikelihood([])


def test_unknown_model_argument_names_the_closest_option() -> None:
    from dyllm.eval.lm_eval_adapter import DyLLMEvalModel

    with pytest.raises(ValueError, match="Did you mean 'block_length'"):
        DyLLMEvalModel(pretrained="llada-ref", block_lenght=8)
