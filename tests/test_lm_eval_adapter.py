"""The lm-eval adapter on the LLaDA-layout reference model with task files written on the spot.

The tasks read held-out `sort` problems from a local JSON-lines file (no download). The README's
lm-eval command runs through lm-eval's own command line (`python -m dyllm.eval`), as written
but for the checkpoint, the answer length and the task; lm-eval's answers must be what
`dyllm.generate` gives for the same prompts: the adapter passes the prompts through untouched.
Tasks dyllm cannot serve and bad arguments end with one line on stderr before any generation.
Skipped when lm_eval is not installed (`pip install 'dyllm[eval]'`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

import dyllm  # noqa: E402
from dyllm.eval import EvalUsageError  # noqa: E402
from dyllm.eval.__main__ import main as eval_main  # noqa: E402
from dyllm.eval.arguments import merge_model_arguments, pick_device  # noqa: E402
from dyllm.policies import CosineThreshold  # noqa: E402
from dyllm.policies.registry import make_policy  # noqa: E402
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


MULTIPLE_CHOICE_YAML = """\
task: dyllm_local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_target: 0
doc_to_choice: ["{{{{answer}}}}", "0"]
metric_list:
  - metric: acc
"""

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def local_tasks_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval indexes its whole task catalogue (~4 s) on every run; these tests read only the
    task files they write, so its TaskManager is built without the catalogue."""
    from lm_eval.tasks import TaskManager

    init = functools.partialmethod(TaskManager.__init__, include_defaults=False)
    monkeypatch.setattr(TaskManager, "__init__", init)


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
    (tmp_path / "dyllm_local_choice.yaml").write_text(MULTIPLE_CHOICE_YAML.format(data=data))
    return tmp_path


def readme_command() -> list[str]:
    """The README's lm-eval command as argv after `python -m dyllm.eval`, with $ARGS expanded."""
    args, commands = "", []
    for line in README.read_text("utf-8").splitlines():
        if line.startswith("ARGS="):
            args = line.removeprefix("ARGS=").replace("$ARGS", args)
        if line.startswith("python -m dyllm.eval "):
            commands.append(line.removeprefix("python -m dyllm.eval ").split())
    (words,) = commands
    return [args if word == "$ARGS" else word for word in words]


def with_model_args(argv: list[str], **changes: object) -> list[str]:
    """argv with the model_args values in `changes` replaced (the keys must be there)."""
    pairs = model_args_of(argv)
    assert set(changes) <= set(pairs)
    pairs |= {key: str(value) for key, value in changes.items()}
    argv = list(argv)
    argv[argv.index("--model_args") + 1] = ",".join(f"{k}={v}" for k, v in pairs.items())
    return argv


def model_args_of(argv: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in argv[argv.index("--model_args") + 1].split(","))


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with the value after `flag` replaced (the flag must be there)."""
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def run_cli(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> int:
    """`python -m dyllm.eval ARGV` in this process; its exit status."""
    import lm_eval.evaluator

    # The command line wraps lm-eval's evaluate (task_guard); undo that after the test.
    monkeypatch.setattr(lm_eval.evaluator, "evaluate", lm_eval.evaluator.evaluate)
    monkeypatch.setattr(sys, "argv", ["python -m dyllm.eval", *argv])
    try:
        eval_main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def local_argv(task_dir: Path, *tasks: str) -> list[str]:
    """The README command on the reference model and the local task(s), one shot (a longer
    few-shot prompt would not fit the reference model's 256 positions)."""
    argv = with_model_args(
        readme_command(), pretrained="llada-ref", gen_length=GEN_LENGTH, steps=GEN_LENGTH
    )
    argv = with_flag(argv, "--num_fewshot", "1")
    position = argv.index("--tasks") + 1
    argv[position : position + 1] = list(tasks)
    return [*argv, "--include_path", str(task_dir)]


def test_the_readme_command_runs_through_lm_evals_command_line(
    task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    argv = local_argv(task_dir, "dyllm_local_sort")
    given = model_args_of(argv)
    # lm-eval passes its own batch_size and device too: they used to collide with these.
    assert {"batch_size", "device"} <= set(given)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="dyllm.eval"):
        assert run_cli(monkeypatch, [*argv, "--output_path", str(out), "--log_samples"]) == 0
    if not torch.cuda.is_available():
        assert "CUDA is not available: running on the CPU" in caplog.text
    (samples_file,) = out.rglob("samples_dyllm_local_sort_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    prompts = [sample["arguments"]["gen_args_0"]["arg_0"] for sample in samples]
    assert len(prompts) == len(PROBLEMS) and all(p.endswith(" =") for p in prompts)
    model = dyllm.load("llada-ref", device=pick_device(given["device"]), dtype=given["dtype"])
    expected = dyllm.generate(
        model,
        prompts,
        policy=make_policy(given["policy"], "llada", tau=float(given["tau"])),
        gen_length=int(given["gen_length"]),
        steps=int(given["steps"]),
        block_length=int(given["block_length"]),
    )
    assert [sample["resps"][0][0] for sample in samples] == [
        text.split("\n")[0] for text in expected.texts
    ]


@pytest.mark.slow
@pytest.mark.parametrize("split", [False, True], ids=["data-parallel", "tensor-parallel"])
def test_several_processes_under_torchrun_give_the_single_process_answers(
    task_dir: Path, tmp_path: Path, split: bool
) -> None:
    """`torchrun --nproc-per-node 2 -m dyllm.eval ...`: lm-eval shares the requests out between
    two processes (data parallel) or both serve every request with the model split
    (tensor_parallel=2); the samples file holds the single process's answers either way."""
    argv = local_argv(task_dir, "dyllm_local_sort")
    given = model_args_of(argv)
    if split:
        argv[argv.index("--model_args") + 1] += ",tensor_parallel=2"
    out = tmp_path / "out"
    repository = Path(__file__).resolve().parents[1]
    paths = [str(repository), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    completed = subprocess.run(
        [*launcher, "2", "-m", "dyllm.eval", *argv, "--output_path", str(out), "--log_samples"],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (samples_file,) = out.rglob("samples_dyllm_local_sort_*.jsonl")
    lines = samples_file.read_text().splitlines()
    samples = sorted((json.loads(line) for line in lines), key=lambda sample: sample["doc_id"])
    assert [sample["doc_id"] for sample in samples] == list(range(len(PROBLEMS)))
    prompts = [sample["arguments"]["gen_args_0"]["arg_0"] for sample in samples]
    model = dyllm.load("llada-ref", device="cpu", dtype=given["dtype"])
    expected = dyllm.generate(
        model,
        prompts,
        policy=make_policy(given["policy"], "llada", tau=float(given["tau"])),
        gen_length=int(given["gen_length"]),
        steps=int(given["steps"]),
        block_length=int(given["block_length"]),
    )
    assert [sample["resps"][0][0] for sample in samples] == [
        text.split("\n")[0] for text in expected.texts
    ]


def test_a_log_likelihood_task_is_refused_before_any_generation(
    task_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # lm-eval would run the generative task first and reach the other one only at the end.
    monkeypatch.setattr(dyllm, "generate", _never_called("generation"))
    argv = local_argv(task_dir, "dyllm_local_sort", "dyllm_local_choice")
    assert run_cli(monkeypatch, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "python -m dyllm.eval: error: dyllm serves generate_until tasks only (a masked "
        "diffusion LM has no left-to-right likelihood), and these ask for log-likelihoods: "
        "dyllm_local_choice (multiple_choice); drop them from --tasks"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"policy": "cosine"}, "unknown policy 'cosine'"),
        ({"tau": "high"}, "the dyllm policy's tau must be a number, got 'high'"),
        ({"tau": 1.5}, "tau is a cosine similarity threshold in [-1, 1], got 1.5"),
        ({"batch_size": "auto"}, "dyllm has no automatic batch size"),
        ({"batch_size": 0}, "batch_size=0 must be a whole number >= 1"),
        ({"device": "tpu"}, "device='tpu' is not a device"),
        ({"dtype": "float8"}, "unknown dtype 'float8'"),
        ({"pretrained": "/no/such/folder"}, "checkpoint folder /no/such/folder does not exist"),
    ],
)
def test_a_bad_model_argument_gets_one_line_before_the_weights_are_read(
    task_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys, changes: dict, message: str
) -> None:
    monkeypatch.setattr(dyllm, "load", _never_called("loading the weights"))
    monkeypatch.setattr(dyllm, "generate", _never_called("generation"))
    argv = with_model_args(local_argv(task_dir, "dyllm_local_sort"), **changes)
    assert run_cli(monkeypatch, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("python -m dyllm.eval: error: ") and message in last


def test_bad_generation_options_are_refused_before_any_generation(
    task_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(dyllm, "generate", _never_called("generation"))
    argv = with_model_args(local_argv(task_dir, "dyllm_local_sort"), steps=7)
    assert run_cli(monkeypatch, argv) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert "the generation options of dyllm_local_sort" in last
    assert "steps=7 must be a multiple of the number of blocks (3" in last


def _never_called(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} started")

    return refuse


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

    # batch_size and device both in model_args and as lm-eval's arguments: model_args wins.
    results = lm_eval.simple_evaluate(
        model="dyllm",
        model_args="pretrained=llada-ref,policy=dyllm,tau=0.99,block_length=8,batch_size=4,"
        "device=cpu",
        tasks=["dyllm_local_sort"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
        batch_size=2,
        device="cuda:0",
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


def test_model_args_win_over_lm_evals_flags_which_fill_the_gaps() -> None:
    flags = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}
    assert merge_model_arguments({"batch_size": 16, "device": "cpu", "tau": 0.99}, flags) == {
        "batch_size": 16,
        "device": "cpu",
        "tau": 0.99,
    }
    assert merge_model_arguments({"policy": "dyllm"}, flags) == {
        "policy": "dyllm",
        "batch_size": 1,
        "device": "cuda:0",
    }
    assert merge_model_arguments({"policy": "dyllm"}, {"batch_size": None}) == {"policy": "dyllm"}


def test_the_cpu_is_picked_when_cuda_is_absent(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="dyllm.eval"):
        assert pick_device("cuda:0") == "cpu"
    assert "device cuda:0 asked for, but CUDA is not available: running on the CPU" in caplog.text
    assert pick_device(None) == "cpu"
    assert pick_device("cpu") == "cpu"


def test_in_python_the_installed_guard_refuses_before_any_generation(
    task_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager

    from dyllm.eval.task_guard import install

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", lm_eval.evaluator.evaluate)  # restored
    install()
    monkeypatch.setattr(dyllm, "generate", _never_called("generation"))
    with pytest.raises(EvalUsageError, match=r"dyllm_local_choice \(multiple_choice\)"):
        lm_eval.simple_evaluate(
            model="dyllm",
            model_args="pretrained=llada-ref",
            tasks=["dyllm_local_sort", "dyllm_local_choice"],
            task_manager=TaskManager(include_path=str(task_dir)),
        )
