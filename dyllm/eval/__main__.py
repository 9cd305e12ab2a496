"""`python -m dyllm.eval ARGS`: lm-eval's command line with the `dyllm` model registered.

Before lm-eval runs, the `dyllm` model is registered and lm-eval's `evaluate` is wrapped so that
tasks dyllm cannot serve are refused before any request (`task_guard`). A bad model argument,
generation option or task ends with one line on stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise SystemExit(
            "python -m dyllm.eval needs lm-evaluation-harness: pip install 'dyllm[eval]'"
        ) from None
    import dyllm.eval.lm_eval_adapter  # noqa: F401  (registers the "dyllm" model)
    from dyllm.eval import EvalUsageError
    from dyllm.eval.task_guard import install

    install()
    try:
        cli_evaluate()
    except EvalUsageError as error:
        print(f"python -m dyllm.eval: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
