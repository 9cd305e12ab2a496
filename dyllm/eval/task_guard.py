"""Refuse the tasks dyllm cannot serve before lm-eval runs any request.

lm-eval builds every task's requests, then runs them one request kind at a time in the order the
tasks first ask for them: a log-likelihood task listed after a generative one would fail only
once all the generation is done. `python -m dyllm.eval` therefore wraps lm-eval's `evaluate`
(what its `simple_evaluate` calls with the model and the loaded tasks) so that, for a dyllm
model, `check_tasks` runs first. In a Python session, `install()` does the same; without it the
adapter refuses at the first log-likelihood request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from dyllm.eval import EvalUsageError

SERVED_OUTPUT_TYPES = ("generate_until",)


def check_tasks(task_dict: Any) -> None:
    """Raise EvalUsageError naming every loaded task whose output type is not generate_until.

    task_dict: what lm-eval's `TaskManager.load` returns ({"tasks": {name: Task}, ...}); other
    shapes are left to the adapter's own refusal.
    """
    tasks = task_dict.get("tasks") if isinstance(task_dict, Mapping) else None
    if not isinstance(tasks, Mapping):
        return
    refused = {name: _output_type(task) for name, task in tasks.items()}
    refused = {
        name: kind for name, kind in refused.items() if kind not in (None, *SERVED_OUTPUT_TYPES)
    }
    if refused:
        listed = ", ".join(f"{name} ({kind})" for name, kind in sorted(refused.items()))
        raise EvalUsageError(
            f"dyllm serves generate_until tasks only (a masked diffusion LM has no left-to-right "
            f"likelihood), and these ask for log-likelihoods: {listed}; drop them from --tasks"
        )


def guarded(evaluate: Callable[..., Any]) -> Callable[..., Any]:
    """lm-eval's `evaluate`, checking the tasks first when the model is dyllm's."""

    @functools.wraps(evaluate)
    def evaluate_served_tasks(*args: Any, **kwargs: Any) -> Any:
        lm = kwargs.get("lm", args[0] if args else None)
        task_dict = kwargs.get("task_dict", args[1] if len(args) > 1 else None)
        if _is_dyllm(lm):
            check_tasks(task_dict)
        return evaluate(*args, **kwargs)

    evaluate_served_tasks.dyllm_guard = True  # type: ignore[attr-defined]
    return evaluate_served_tasks


def install() -> None:
    """Make lm-eval's `simple_evaluate` refuse unserved tasks before any request (idempotent)."""
    import lm_eval.evaluator as evaluator

    if not getattr(evaluator.evaluate, "dyllm_guard", False):
        evaluator.evaluate = guarded(evaluator.evaluate)


def _output_type(task: Any) -> str | None:
    kind = getattr(task, "OUTPUT_TYPE", None)
    if kind is None and hasattr(task, "get_config"):
        kind = task.get_config("output_type")
    return kind


def _is_dyllm(lm: Any) -> bool:
    from dyllm.eval.lm_eval_adapter import DyLLMEvalModel

    return isinstance(getattr(lm, "lm", lm), DyLLMEvalModel)  # `lm` of lm-eval's CachingLM
