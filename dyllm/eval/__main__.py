"""`python -m dyllm.eval ARGS`: lm-eval's command line with the `dyllm` model registered."""

from __future__ import annotations


def main() -> None:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise SystemExit(
            "python -m dyllm.eval needs lm-evaluation-harness: pip install 'dyllm[eval]'"
        ) from None
    import dyllm.eval.lm_eval_adapter  # noqa: F401  (registers the "dyllm" model)

    cli_evaluate()


if __name__ == "__main__":
    main()
