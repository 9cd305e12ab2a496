"""`dyllm bench` on the LLaDA-layout reference model with a handful of problems.

What a user relies on: the JSON has every documented field; its accuracies are the suite
scorer's verdict on the answers `dyllm.generate` gives for the same policy and options; dense is
the speed-up baseline (exactly 1x, everything recomputed); NFE follows the steps nu implies; the
command writes the table, the JSON and the PNG; bad method specs and decoding settings get an
error saying what to change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import dyllm
from dyllm.bench import (
    BenchSettings,
    Decoding,
    MethodSpec,
    check_report,
    default_methods,
    format_table,
    parse_method,
    run_benchmark,
)
from dyllm.bench.headline import curve_accuracy_at
from dyllm.bench.runner import select_batches
from dyllm.cli import main
from dyllm.policies import CosineThreshold
from dyllm.reference.scoring import score_predictions
from dyllm.reference.tasks import heldout_problems

METHODS = [MethodSpec("dense"), parse_method("dyllm:tau=0.99"), MethodSpec("fast-dual")]


@pytest.fixture(scope="module")
def report() -> dict:
    settings = BenchSettings(
        model="llada-ref",
        methods=METHODS,
        tokens_per_step=(1, 4),
        thresholds=(0.9,),
        tasks=("sort", "rot13"),
        problems_per_task=3,
        batch_size=2,
        repeats=2,
        block_length=8,
    )
    return run_benchmark(settings)


def test_report_has_every_documented_field_and_one_run_per_method_and_decoding(report) -> None:
    check_report(report)
    labels = [(run["method"]["label"], run["decoding"]["label"]) for run in report["runs"]]
    assert labels == [
        (method, decoding)
        for decoding in ("nu=1", "nu=4", "threshold=0.9")
        for method in ("dense", "dyllm tau=0.99", "fast-dual")
    ]
    workload = report["workload"]
    assert workload["problems"] == 6
    assert workload["batch_size"] == 2
    assert workload["prompt_lengths"] == {"sort": 23, "rot13": 28}
    assert report["machine"]["device"] == "cpu"
    assert report["machine"]["dtype"] == "torch.float32"
    assert all(len(run["tokens_per_second_runs"]) == 2 for run in report["runs"])


def test_accuracy_is_the_scorer_on_what_generate_gives(report) -> None:
    gen_length = report["workload"]["gen_length"]
    model = dyllm.load("llada-ref")
    problems = heldout_problems("sort")[:3] + heldout_problems("rot13")[:3]
    texts = []
    for batch in select_batches(("sort", "rot13"), 3, 2):
        result = dyllm.generate(
            model,
            [problem.prompt for problem in batch],
            policy=CosineThreshold(0.99),
            gen_length=gen_length,
            block_length=8,
            steps=gen_length // 4,
        )
        texts.extend(result.texts)
    expected = score_predictions(problems, texts)
    run = next(
        run
        for run in report["runs"]
        if run["method"]["label"] == "dyllm tau=0.99" and run["decoding"]["label"] == "nu=4"
    )
    assert run["exact_match"] == expected.overall.exact_match
    assert run["token_accuracy"] == expected.overall.token_accuracy
    assert run["per_task"]["sort"] == expected.per_task["sort"].to_dict()


def test_dense_is_the_baseline_and_nfe_follows_tokens_per_step(report) -> None:
    gen_length = report["workload"]["gen_length"]
    batches = 4  # 3 problems per task in batches of 2, two tasks
    for run in report["runs"]:
        if run["method"]["policy"] == "dense":
            assert run["speedup"] == 1.0
            assert run["computed_token_ratio"] == 1.0
            assert run["ffn_fraction_per_layer"] == [1.0] * report["model"]["layers"]
            assert run["median_sparse_step_s"] is None
        nu = run["decoding"]["tokens_per_step"]
        if nu is not None:
            assert run["nfe"] == batches * gen_length // nu
        assert run["peak_memory_bytes"] > 0
    # at one token per step DyLLM has 20 sparse steps after its 4 warm-up steps
    (dyllm_nu1,) = [
        run
        for run in report["runs"]
        if run["method"]["policy"] == "dyllm" and run["decoding"]["tokens_per_step"] == 1
    ]
    assert dyllm_nu1["sparse_steps"] == batches * (gen_length - 4)
    assert dyllm_nu1["computed_token_ratio"] < 1.0
    assert dyllm_nu1["median_sparse_step_s"] > 0


def test_table_has_a_row_per_run(report) -> None:
    lines = format_table(report).splitlines()
    assert len(lines) == 2 + len(report["runs"])
    assert lines[2].split()[:2] == ["dense", "nu=1"]


def test_check_report_names_what_is_missing(report) -> None:
    broken = json.loads(json.dumps(report))
    del broken["runs"][1]["tokens_per_second"]
    with pytest.raises(ValueError, match=re.escape("dyllm tau=0.99 nu=1 lacks tokens_per_second")):
        check_report(broken)


def test_the_command_writes_table_json_and_png(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "bench",
            "--model",
            "llada-ref",
            "--method",
            "dense",
            "--method",
            "topk:k=0.25",
            "--tokens-per-step",
            "2",
            "--threshold",
            "--tasks",
            "mul3",
            "--problems-per-task",
            "2",
            "--batch-size",
            "2",
            "--repeats",
            "1",
            "--out-dir",
            str(tmp_path),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    written = json.loads((tmp_path / "llada-ref-cpu.json").read_text())
    check_report(written)
    assert [run["method"]["label"] for run in written["runs"]] == ["dense", "topk k=0.25"]
    assert (tmp_path / "llada-ref-cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "topk k=0.25" in out and "x dense" in out


def test_default_grid_covers_every_strategy() -> None:
    policies = [method.policy for method in default_methods("llada")]
    assert policies == [
        "dense",
        "dyllm",
        "dyllm",
        "dyllm",
        "topk",
        "adaptive",
        "fast-prefix",
        "fast-dual",
        "dllm-cache",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dyllm:tau", "parameters are KEY=VALUE"),
        ("dyllm:tau=high", "tau must be a number"),
        ("fastdllm", "unknown policy 'fastdllm'"),
        ("topk:q=3", "takes no q; its parameters: k: int | float, warmup_steps"),
        ("dense:tau=0.9", "takes no tau: it has no parameters"),
        ("dyllm:attention=exact", "attention must be one of 'approximate', 'frozen'"),
    ],
)
def test_bad_method_specs_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_method(text)


def test_method_parameters_are_read_through_the_policy_type_hints() -> None:
    method = parse_method("adaptive:taus=0.9,0.95,warmup_steps=2,attention=frozen")
    assert method.params == (("taus", [0.9, 0.95]), ("warmup_steps", 2), ("attention", "frozen"))
    assert method.label == "adaptive taus=0.9:0.95 warmup_steps=2 attention=frozen"
    assert parse_method("topk:k=3").params == (("k", 3),)  # an int: a row count
    assert parse_method("topk:k=0.25").params == (("k", 0.25),)  # a float: a fraction


def test_a_method_that_cannot_be_built_fails_before_anything_is_measured(
    tmp_path: Path, capsys
) -> None:
    """adaptive needs a target fraction, taus or budgets; every policy is built (and adaptive
    calibrated) before the first measurement, so the error comes at once."""
    argv = ["bench", "--method", "adaptive", "--tasks", "mul3", "--problems-per-task", "1"]
    code = main([*argv, "--no-plot", "--quiet", "--out-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "the adaptive policy needs one of target_fraction" in err
    assert not list(tmp_path.iterdir())


def test_tokens_per_step_must_fit_the_blocks() -> None:
    assert Decoding(tokens_per_step=4).options(24, 8) == {"steps": 6}
    with pytest.raises(ValueError, match="3 tokens per step does not fit gen_length 24"):
        Decoding(tokens_per_step=3).options(24, 8)
    with pytest.raises(ValueError, match="either tokens_per_step or threshold"):
        Decoding(tokens_per_step=2, threshold=0.9)


def test_the_command_reports_a_bad_method_in_one_line(capsys) -> None:
    code = main(["bench", "--method", "dyllm:tau=x", "--quiet"])
    assert code == 2
    assert "tau must be a number" in capsys.readouterr().err


def test_the_headline_answers_the_three_questions(report) -> None:
    runs = {(r["method"]["label"], r["decoding"]["label"]): r for r in report["runs"]}
    dyllm_nu1, dense_nu1 = runs[("dyllm tau=0.99", "nu=1")], runs[("dense", "nu=1")]
    answers = report["headline"]
    assert answers["method"] == "dyllm tau=0.99"
    assert answers["exact_match_points_vs_dense"] == pytest.approx(
        (dyllm_nu1["exact_match"] - dense_nu1["exact_match"]) * 100
    )
    speedup = dyllm_nu1["tokens_per_second"] / dense_nu1["tokens_per_second"]
    assert answers["speedup_vs_dense"] == speedup
    assert answers["at_least_3x"] == (speedup >= 3.0)
    assert sorted(answers["on_or_beyond_fast_dual"]) == ["nu=1", "nu=4"]


def test_a_point_is_measured_against_the_curve_in_log_throughput() -> None:
    curve = [(100.0, 0.8), (400.0, 0.6)]
    assert curve_accuracy_at(curve, 200.0) == pytest.approx(0.7)  # halfway in log scale
    assert curve_accuracy_at(curve, 1000.0) == 0.6  # faster than the curve: its fastest point
    assert curve_accuracy_at(curve, 50.0) == 0.8  # slower: must beat its most accurate point


def test_the_table_is_printed_when_the_plot_cannot_be_written(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import dyllm.bench

    def disk_full(report, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dyllm.bench, "draw_curves", disk_full)
    argv = ["bench", "--method", "dense", "--tokens-per-step", "2", "--threshold"]
    argv += ["--tasks", "mul3", "--problems-per-task", "2", "--batch-size", "2", "--repeats", "1"]
    code = main([*argv, "--out-dir", str(tmp_path), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "dense" in captured.out and "JSON:" in captured.out  # the table, and the JSON written
    check_report(json.loads((tmp_path / "llada-ref-cpu.json").read_text()))
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "could not write the plot" in errors[0]
    assert "No space left on device" in errors[0]
