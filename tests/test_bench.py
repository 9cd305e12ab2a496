"""`dyllm bench` on the reference models with a handful of problems.

What a user relies on: the JSON has every documented field; its accuracies are the suite
scorer's verdict on the answers `dyllm.generate` gives for the same policy and options; dense is
the speed-up baseline (exactly 1x, everything recomputed); NFE follows the steps nu implies; the
command writes the table, the JSON and the PNG; the task suite follows the model (`llada-long`:
the long suite) or `--suite`; several block lengths give rows per block length, each with its
own dense baseline; reports written before the block grid still read; bad method specs, suites,
tasks, block lengths and decoding settings get an error saying what to change, before any
compute.
"""

from __future__ import annotations

import json
import re
from itertools import islice
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
    read_report,
    resolve_suite,
    run_benchmark,
    upgrade_report,
)
from dyllm.bench.headline import curve_accuracy_at, format_headline
from dyllm.bench.plot import draw_curves
from dyllm.bench.runner import select_batches
from dyllm.bench.suites import SUITE_GEN_LENGTHS, SUITE_PROBLEMS_PER_TASK
from dyllm.bench.table import batch_text
from dyllm.cli import main
from dyllm.policies import CosineThreshold
from dyllm.reference.long_tasks import LONG_SUITE, SUITES, long_heldout_problems
from dyllm.reference.registry import builtin_model_path
from dyllm.reference.scoring import score_predictions
from dyllm.reference.tasks import heldout_problems, training_stream

ROOT = Path(__file__).resolve().parents[1]

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
        block_lengths=(8,),
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
    assert workload["suite"] == "short" and workload["gen_length"] == 24
    assert workload["block_lengths"] == [8]
    assert all(run["block_length"] == 8 for run in report["runs"])


def test_accuracy_is_the_scorer_on_what_generate_gives(report) -> None:
    gen_length = report["workload"]["gen_length"]
    model = dyllm.load("llada-ref")
    problems = heldout_problems("sort")[:3] + heldout_problems("rot13")[:3]
    texts = []
    for batch in select_batches(resolve_suite("llada-ref", None), ("sort", "rot13"), 3, 2):
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
    assert lines[2].split()[:3] == ["dense", "nu=1", "8"]
    assert "6 problems, batch 2, short suite, gen 24 block 8," in lines[0]


def test_check_report_names_what_is_missing(report) -> None:
    broken = json.loads(json.dumps(report))
    del broken["runs"][1]["tokens_per_second"]
    with pytest.raises(
        ValueError, match=re.escape("dyllm tau=0.99 nu=1 block 8 lacks tokens_per_second")
    ):
        check_report(broken)
    broken = json.loads(json.dumps(report))
    broken["runs"][0]["block_length"] = 32
    with pytest.raises(ValueError, match=re.escape("block length 32, not one of the workload's")):
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
    (answers,) = report["headline"]
    assert answers["block_length"] == 8
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


def test_the_suite_follows_the_model_unless_named(tmp_path: Path) -> None:
    assert resolve_suite("llada-ref", None).name == "short"
    assert resolve_suite("dream-ref", None).name == "short"
    assert resolve_suite("llada-long", None).name == "long"
    shipped = builtin_model_path("llada-long")
    assert resolve_suite(str(shipped), None).name == "long"  # the built-in by its folder
    own = tmp_path / "my-long-model"  # a user's checkpoint: short unless --suite says long
    assert resolve_suite(str(own), None).name == "short"
    assert resolve_suite(str(own), "long").name == "long"
    plan = BenchSettings(model=str(own), suite="long", block_lengths=(8, 32)).plan()
    assert plan.tasks == ("triple", "runsum")
    assert (plan.gen_length, plan.problems_per_task) == (128, SUITE_PROBLEMS_PER_TASK["long"])
    short = BenchSettings(model="llada-ref").plan()
    assert (short.tasks, short.gen_length, short.problems_per_task) == (
        ("mul3", "cumsum", "sort", "rot13"),
        24,
        64,
    )


def test_calibration_prompts_come_from_the_chosen_suites_training_stream() -> None:
    long_prompts = resolve_suite("llada-long", None).calibration_prompts()
    assert len(long_prompts) == 16
    assert all(LONG_SUITE.matches_format(prompt) for prompt in long_prompts)
    assert not set(long_prompts) & LONG_SUITE.heldout_prompts
    assert {prompt.split()[0] for prompt in long_prompts} == {"triple", "runsum"}
    # the short suite's are the prompts every benchmark before the suite choice calibrated on
    short_prompts = resolve_suite("llada-ref", None).calibration_prompts()
    assert short_prompts == [p.prompt for p in islice(training_stream(90_210), 16)]


def test_every_suite_has_benchmark_defaults_that_fit_its_answers_and_the_paper_blocks() -> None:
    assert set(SUITES) == set(SUITE_GEN_LENGTHS) == set(SUITE_PROBLEMS_PER_TASK)
    for name, suite in SUITES.items():
        longest = max(task.answer_length for task in suite.tasks.values())
        assert SUITE_GEN_LENGTHS[name] >= longest
        assert 1 <= SUITE_PROBLEMS_PER_TASK[name] <= suite.heldout_per_task
    assert SUITE_GEN_LENGTHS["long"] % 8 == 0 and SUITE_GEN_LENGTHS["long"] % 32 == 0
    # the run, with the defaults: every nu fits both block lengths
    assert batch_text({"batch_size": 16, "problems_per_task": 5}) == "batch 5 (of 16)"
    assert batch_text({"batch_size": 16, "problems_per_task": 64}) == "batch 16"
    plan = BenchSettings(model="llada-long", block_lengths=(8, 32)).plan()
    assert [d.label for d in plan.decodings] == ["nu=1", "nu=2", "nu=4", "threshold=0.9"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--suite", "medium"],
            "unknown suite 'medium'; the suites: short (mul3, cumsum, sort, "
            "rot13), long (triple, runsum)",
        ),
        (
            ["--model", "llada-long", "--tasks", "mul3"],
            "unknown task 'mul3' for the long suite; its tasks: triple, runsum",
        ),
        (["--suite", "long", "--tasks", "sort"], "unknown task 'sort' for the long suite"),
        (
            ["--model", "llada-long", "--block-length", "8", "48"],
            "block length 48 does not divide gen length 128",
        ),
        (["--block-length", "8", "8"], "block length 8 is given twice"),
        (["--model", "llada-long", "--problems-per-task", "101"], "must be 1..100 (the long"),
        (
            ["--suite", "long", "--gen-length", "64"],
            "gen length 64 is shorter than the long "
            "suite's longest answer (128 tokens); pass --gen-length 128",
        ),
        (
            ["--model", "llada-long", "--block-length", "2", "--tokens-per-step", "4"],
            "4 tokens per step does not fit gen_length 128 in 64 block(s) of 2",
        ),
    ],
)
def test_bad_suites_tasks_and_blocks_are_refused_before_any_compute(
    argv: list[str], message: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    import dyllm.bench.runner

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(dyllm, "load", forbidden)
    monkeypatch.setattr(dyllm.bench.runner, "run_benchmark", forbidden)
    code = main(["bench", *argv, "--no-plot", "--quiet", "--out-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> tuple[dict, Path, list[int]]:
    """`dyllm bench --model llada-long --block-length 8 32` at tiny settings: dense and DyLLM, nu
    = 4, one problem per task; records the block length of every generate call."""
    import dyllm.bench.measure

    out = tmp_path_factory.mktemp("long-bench")
    blocks: list[int] = []
    real = dyllm.bench.measure.generate

    def recording(model, prompts, **options):
        blocks.append(options["block_length"])
        return real(model, prompts, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dyllm.bench.measure, "generate", recording)
        code = main(
            [
                "bench",
                "--model",
                "llada-long",
                "--block-length",
                "8",
                "32",
                "--method",
                "dyllm:tau=0.99",
                "--tokens-per-step",
                "4",
                "--threshold",
                "--problems-per-task",
                "1",
                "--batch-size",
                "1",
                "--repeats",
                "1",
                "--out-dir",
                str(out),
                "--quiet",
            ]
        )
    assert code == 0
    return json.loads((out / "llada-long-cpu.json").read_text()), out, blocks


def test_the_long_model_is_benched_on_the_long_suite(long_run) -> None:
    report, _, _ = long_run
    check_report(report)
    workload = report["workload"]
    assert workload["suite"] == "long"
    assert workload["tasks"] == ["triple", "runsum"]
    assert workload["gen_length"] == 128
    assert workload["prompt_lengths"] == {"triple": 136, "runsum": 137}
    assert workload["problems"] == 2
    # scored against the long held-out answers: dense at nu = 4 is the scorer on generate's text
    model = dyllm.load("llada-long")
    problems = [long_heldout_problems(task)[0] for task in ("triple", "runsum")]
    for block in (8, 32):
        texts = [
            dyllm.generate(
                model, [problem.prompt], gen_length=128, block_length=block, steps=32
            ).texts[0]
            for problem in problems
        ]
        expected = score_predictions(problems, texts)
        (dense,) = [
            run
            for run in report["runs"]
            if run["method"]["policy"] == "dense" and run["block_length"] == block
        ]
        assert dense["token_accuracy"] == expected.overall.token_accuracy
        assert dense["per_task"]["runsum"] == expected.per_task["runsum"].to_dict()


def test_each_block_length_gets_its_rows_and_its_own_dense_baseline(long_run) -> None:
    report, _, blocks = long_run
    assert report["workload"]["block_lengths"] == [8, 32]
    assert [(r["block_length"], r["method"]["label"]) for r in report["runs"]] == [
        (8, "dense"),
        (8, "dyllm tau=0.99"),
        (32, "dense"),
        (32, "dyllm tau=0.99"),
    ]
    # warm-up, profile and one pass over 2 batches per run, block 8's runs first
    assert blocks == [8] * 8 + [32] * 8
    by_block = {
        block: {r["method"]["policy"]: r for r in report["runs"] if r["block_length"] == block}
        for block in (8, 32)
    }
    for rows in by_block.values():
        assert rows["dense"]["speedup"] == 1.0
        assert rows["dyllm"]["speedup"] == pytest.approx(
            rows["dyllm"]["tokens_per_second"] / rows["dense"]["tokens_per_second"]
        )
        assert rows["dyllm"]["speedup_vs_dense_nu1"] is None  # no nu = 1 in this grid
        assert rows["dyllm"]["nfe"] == 2 * 128 // 4
    table = format_table(report).splitlines()
    assert "2 problems, batch 1, long suite, gen 128 blocks 8, 32," in table[0]
    assert [line[45:50].strip() for line in table[2:]] == ["8", "8", "32", "32"]
    assert report["headline"] == []  # no fast-dual, no nu = 1
    assert "needs dense" in format_headline(report["headline"])


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_picture_has_a_row_of_panels_per_block_length(long_run, tmp_path: Path) -> None:
    report, out, _ = long_run
    width, height = _png_size(out / "llada-long-cpu.png")
    one_block = json.loads(json.dumps(report))
    one_block["workload"]["block_lengths"] = [8]
    one_block["runs"] = [run for run in one_block["runs"] if run["block_length"] == 8]
    single_width, single_height = _png_size(draw_curves(one_block, tmp_path / "one.png"))
    assert width == single_width
    assert height == 2 * single_height


V1_FILES = [
    "llada-ref-cpu.json",
    "dream-ref-cpu.json",
    "llada-ref-cpu-nu1-recheck.json",
    "llada-ref-cpu-cumsum-diagnosis.json",
]


def test_every_committed_version_1_report_is_in_the_list_below() -> None:
    old = [
        path.name
        for path in sorted((ROOT / "bench" / "results").glob("*.json"))
        if json.loads(path.read_text()).get("schema") == "dyllm-bench/1"
    ]
    assert sorted(old) == sorted(V1_FILES)


@pytest.mark.parametrize("name", V1_FILES)
def test_reports_written_before_the_block_grid_still_read(name: str, tmp_path: Path) -> None:
    path = ROOT / "bench" / "results" / name
    old = json.loads(path.read_text())
    assert old["schema"] == "dyllm-bench/1"
    with pytest.raises(ValueError, match=r"'dyllm-bench/1'.*dyllm\.bench\.read_report"):
        check_report(old)
    report = read_report(path)
    block = old["workload"]["block_length"]
    assert report["workload"]["block_lengths"] == [block]
    assert report["workload"]["suite"] == "short"
    assert all(run["block_length"] == block for run in report["runs"])
    assert len(report["runs"]) == len(old["runs"])
    # the old headline is the new one at its block length, recomputed from the runs
    from dyllm.bench.headline import headline

    before = old["headline"]
    assert report["headline"] == ([] if before is None else [{**before, "block_length": block}])
    assert headline(report) == report["headline"]
    assert len(format_table(report).splitlines()) == 2 + len(old["runs"])
    assert _png_size(draw_curves(report, tmp_path / "old.png"))[1] > 0
    assert upgrade_report(report) is report
