"""The `dyllm` command end to end on tiny checkpoints, as a new user would run it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dyllm.cli import main
from tests.checkpoints import write_tiny_checkpoint, write_tiny_tokenizer

FAST = ["--gen-length", "8", "--steps", "8", "--no-progress"]


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llada")
    write_tiny_checkpoint("llada", folder, max_shard_bytes=100_000)
    write_tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-dream")
    write_tiny_checkpoint("dream", folder)
    return folder


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_prints_the_answer_and_statistics(capsys, llada_dir: Path) -> None:
    code, out, err = _run(capsys, "generate", "--model", str(llada_dir), "add 12 =", *FAST)
    assert code == 0
    assert out.strip()
    assert "8 tokens in" in err and "NFE 8" in err


def test_json_output_matches_the_python_api(capsys, llada_dir: Path) -> None:
    import dyllm

    code, out, _ = _run(
        capsys, "generate", "--model", str(llada_dir), "--json", "add 12 =", "sort 31 =", *FAST
    )
    assert code == 0
    result = json.loads(out)
    model = dyllm.load(llada_dir)
    expected = dyllm.generate(model, ["add 12 =", "sort 31 ="], gen_length=8, steps=8)
    assert result["token_ids"] == expected.token_ids
    assert result["texts"] == expected.texts
    assert result["stats"]["nfe"] == 8


def test_prompt_from_stdin_and_chat_template(capsys, monkeypatch, llada_dir: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n"))
    code, out, _ = _run(capsys, "generate", "--model", str(llada_dir), "--chat", "--json", *FAST)
    assert code == 0
    assert len(json.loads(out)["token_ids"][0]) == 8


def test_token_id_prompts_on_a_checkpoint_without_tokenizer(capsys, dream_dir: Path) -> None:
    code, out, _ = _run(
        capsys, "generate", "--model", str(dream_dir), "--token-ids", "5,6,7", "--json", *FAST
    )
    assert code == 0
    assert json.loads(out)["texts"] is None


def test_an_unset_temperature_resolves_as_in_the_python_api(capsys, dream_dir: Path) -> None:
    # No generation_config.json: Dream's unset temperature is its reference's 1.0 (top-50).
    import dyllm

    model = dyllm.load(dream_dir)
    argv = ["generate", "--model", str(dream_dir), "--token-ids", "5,6,7", "--json", *FAST]
    argv += ["--seed", "0"]  # the API's default seed (the command line draws a fresh one)
    sampled = dyllm.generate(model, [[5, 6, 7]], gen_length=8, steps=8).token_ids
    greedy = dyllm.generate(model, [[5, 6, 7]], gen_length=8, steps=8, temperature=0.0).token_ids
    assert sampled != greedy
    code, out, _ = _run(capsys, *argv)
    assert code == 0 and json.loads(out)["token_ids"] == sampled
    code, out, _ = _run(capsys, *argv, "--temperature", "0")
    assert code == 0 and json.loads(out)["token_ids"] == greedy


def test_policy_trace_and_its_picture(capsys, tmp_path: Path, llada_dir: Path) -> None:
    pytest.importorskip("matplotlib")
    trace = tmp_path / "trace.json"
    code, _, err = _run(
        capsys,
        "generate",
        "--model",
        str(llada_dir),
        "add 12 =",
        "--policy",
        "topk:k=0.25",
        "--policy-arg",
        "warmup_steps=2",
        "--trace",
        str(trace),
        *FAST,
    )
    assert code == 0
    assert "policy topk: computed-token ratio" in err
    data = json.loads(trace.read_text())
    assert data["policy"]["k"] == 0.25
    assert [entry["dense"] for entry in data["trace"]] == [True] * 2 + [False] * 6
    code, out, _ = _run(capsys, "trace", str(trace))
    assert code == 0
    png = Path(out.strip())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


PEER_POLICIES = [
    ("fast-prefix", [], {}),
    ("fast-dual", [], {}),
    (
        "dllm-cache",
        [
            "--policy-arg",
            "prompt_interval=4",
            "--policy-arg",
            "gen_interval=2",
            "--policy-arg",
            "transfer_ratio=0.5",
        ],
        {"prompt_interval": 4, "gen_interval": 2, "transfer_ratio": 0.5},
    ),
]


@pytest.mark.parametrize("name,flags,params", PEER_POLICIES, ids=[p[0] for p in PEER_POLICIES])
def test_peer_policies_from_the_command_line(
    capsys, llada_dir: Path, name: str, flags: list[str], params: dict
) -> None:
    """Two blocks of 4 steps: Fast-dLLM is dense at steps 0 and 4 (block starts), dLLM-Cache
    at steps 0 and 4 (both clocks); the tokens are the Python API's with the same policy."""
    import dyllm
    from dyllm.policies.registry import make_policy

    code, out, _ = _run(
        capsys,
        "generate",
        "--model",
        str(llada_dir),
        "add 12 =",
        "--policy",
        name,
        *flags,
        "--block-length",
        "4",
        "--json",
        *FAST,
    )
    assert code == 0
    result = json.loads(out)
    extra = result["stats"]["extra"]
    assert extra["policy"] == {"name": name, "attention": "frozen", **params}
    assert extra["dense_steps"] == 2 and extra["sparse_steps"] == 6
    model = dyllm.load(llada_dir)
    policy = make_policy(name, "llada", **params)
    expected = dyllm.generate(
        model, "add 12 =", policy=policy, gen_length=8, steps=8, block_length=4
    )
    assert result["token_ids"] == expected.token_ids


def test_adaptive_policy_is_calibrated_on_the_prompts(capsys, llada_dir: Path) -> None:
    code, _, err = _run(
        capsys,
        "generate",
        "--model",
        str(llada_dir),
        "add 12 =",
        "--policy",
        "adaptive:target_fraction=0.3",
        "--policy-arg",
        "warmup_steps=2",
        *FAST,
    )
    assert code == 0
    assert "policy adaptive" in err


def test_info_describes_a_sharded_checkpoint(capsys, llada_dir: Path) -> None:
    code, out, _ = _run(capsys, "info", str(llada_dir), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["family"] == "llada"
    assert info["shards"] > 1
    assert info["parameters"] == 106_944
    assert info["weight_memory_bytes"]["bfloat16"] == 2 * 106_944
    assert info["tokenizer"] == {"vocab_size": 97}
    assert info["chat_template"] is True
    code, out, _ = _run(capsys, "info", str(llada_dir))
    assert "family         llada" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "--model", "{missing}", "x"], "does not exist"),
        (["generate", "--model", "{dream}", "text"], "text prompts need a tokenizer"),
        (["generate", "--model", "{dream}", "--token-ids", "5,x"], "--token-ids prompts"),
        (["generate", "--model", "{dream}", "--token-ids", "5", "--cfg-scale", "1"], "cfg_scale"),
        (
            ["generate", "--model", "{llada}", "x", "--gen-length", "10", "--block-length", "4"],
            "gen_length",
        ),
        (
            ["generate", "--model", "{llada}", "x", "--policy", "dense", "--policy-arg", "tau=0.9"],
            "takes no tau",
        ),
        (["generate", "--model", "{llada}", "x", "--policy", "adaptive"], "target_fraction"),
        (["generate", "--model", "{llada}", "x", "--policy", "nope"], "unknown policy 'nope'"),
        (["generate", "--model", "{llada}", "x", "--policy", "topk"], "the topk policy needs k"),
        (["generate", "--model", "{llada}", "x", "--policy", "topk:k=few"], "k must be a number"),
        (
            ["generate", "--model", "{llada}", "x", "--policy", "dyllm", "--policy-arg", "tau"],
            "policy parameters are KEY=VALUE",
        ),
        (
            ["generate", "--model", "{llada}", "x", "--policy", "topk:k=2", "--policy-arg", "k=3"],
            "k is given twice",
        ),
        (["generate", "--model", "{llada}", "x", "--plugin", "{missing}.py"], "does not exist"),
        (
            [
                "generate",
                "--model",
                "{llada}",
                "x",
                "--policy",
                "dllm-cache",
                "--policy-arg",
                "transfer_ratio=2",
            ],
            "transfer_ratio is the fraction",
        ),
        (
            ["generate", "--model", "{llada}", "x", "--policy", "dyllm:gen_interval=3"],
            "takes no gen_interval",
        ),
        (
            ["generate", "--model", "{llada}", "x", "--policy", "fast-dual:warmup_steps=2"],
            "takes no warmup_steps",
        ),
        (["generate", "--model", "{llada}", "x", "--gen-length", "400"], "more than the model"),
        (["info", "{missing}"], "does not exist"),
    ],
)
def test_bad_input_gets_one_line_and_status_2(
    capsys, argv: list[str], message: str, llada_dir: Path, dream_dir: Path, tmp_path: Path
) -> None:
    paths = {"missing": tmp_path / "nowhere", "dream": dream_dir, "llada": llada_dir}
    argv = [arg.format(**paths) for arg in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("dyllm ") and message in err
    assert "Traceback" not in err


def test_the_installed_entry_point_runs(llada_dir: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "dyllm.cli", "info", str(llada_dir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "llada" in completed.stdout


def test_json_records_the_model_options_and_policy(capsys, llada_dir: Path) -> None:
    argv = ["generate", "--model", str(llada_dir), "add 12 =", "--json", "--seed", "7", *FAST]
    code, out, _ = _run(capsys, *argv, "--policy", "topk:k=0.5")
    assert code == 0
    record = json.loads(out)
    assert record["model"] == {
        "name": str(llada_dir),
        "path": str(llada_dir),
        "family": "llada",
        "device": "cpu",
        "dtype": "float32",
        "tensor_parallel": 1,
    }
    assert record["policy"]["name"] == "topk" and record["policy"]["k"] == 0.5
    options = record["options"]
    assert (options["gen_length"], options["steps"], options["seed"]) == (8, 8, 7)
    assert (options["block_length"], options["temperature"]) == (8, 0.0)
    assert options["sampler"] == "llada"
    assert options["max_batch_size"] == 16


def test_without_a_seed_a_fresh_one_is_drawn_printed_and_reproducible(
    capsys, dream_dir: Path
) -> None:
    # Dream's unset temperature is 1.0: sampled tokens depend on the seed
    argv = ["generate", "--model", str(dream_dir), "--token-ids", "5,6,7", *FAST]
    seeds, answers = [], []
    for _ in range(2):
        code, out, err = _run(capsys, *argv)
        assert code == 0
        seeds.append(int(err.split("seed ")[1].split()[0]))
        answers.append(out)
    assert seeds[0] != seeds[1]
    code, out, _ = _run(capsys, *argv, "--seed", str(seeds[0]))
    assert code == 0 and out == answers[0]


def test_version(capsys) -> None:
    import dyllm

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"dyllm {dyllm.__version__} (torch ")


def test_max_new_tokens_is_an_alias_of_gen_length(capsys, dream_dir: Path) -> None:
    argv = ["generate", "--model", str(dream_dir), "--token-ids", "5,6", "--json", "--seed", "1"]
    code, out, _ = _run(capsys, *argv, "--max-new-tokens", "6", "--steps", "6", "--no-progress")
    assert code == 0 and json.loads(out)["options"]["gen_length"] == 6


@pytest.mark.parametrize(
    ("argv", "warned"),
    [
        (["Hello, how are you?"], "the prompt 'Hello, how are you?'"),
        (["sort 3141592653589793 =", "--chat"], "--chat"),
        (["sort 3141592653589793 ="], None),
        (["sort 31 ="], "the prompt 'sort 31 ='"),  # the models know 16-digit sorts only
    ],
)
def test_the_reference_models_say_what_they_are(capsys, argv: list[str], warned) -> None:
    code, _, err = _run(
        capsys, "generate", *argv, "--gen-length", "8", "--steps", "8", "--no-progress"
    )
    assert code == 0
    warnings = [line for line in err.splitlines() if "warning" in line]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert warnings[0].startswith(
            "dyllm generate: warning: llada-ref is a tiny reference model"
        )
        assert "'sort D =' (D: 16 digits)" in warnings[0] and warned in warnings[0]


def test_the_answer_is_printed_when_the_trace_cannot_be_written(
    capsys, monkeypatch, tmp_path: Path, llada_dir: Path
) -> None:
    trace = tmp_path / "trace.json"
    real_write = Path.write_text

    def refuse(self: Path, *args, **kwargs):
        if self == trace:
            raise PermissionError(13, "Permission denied")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", refuse)
    argv = ["generate", "--model", str(llada_dir), "add 12 =", "--trace", str(trace), *FAST]
    code, out, err = _run(capsys, *argv, "--policy", "topk:k=0.5")
    assert code == 1
    assert out.strip()  # the answer
    assert "8 tokens in" in err  # the statistics
    assert "could not write the trace" in err and "Traceback" not in err


def test_info_sizes_a_model_before_its_shards_are_downloaded(capsys, tmp_path: Path) -> None:
    from tests.checkpoints import LLADA_DIR

    for name in ("config.json", "model.safetensors.index.json"):
        (tmp_path / name).write_bytes((LLADA_DIR / name).read_bytes())
    code, out, _ = _run(capsys, "info", str(tmp_path), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["parameters"] == 8_015_581_184
    assert (info["shards"], info["shards_present"], len(info["missing_shards"])) == (6, 0, 6)
    assert info["stored_bytes"] == 2 * 8_015_581_184
    assert info["checkpoint_dtype"] == "bfloat16" and info["stored_dtypes"] == {}
    code, out, _ = _run(capsys, "info", str(tmp_path))
    assert "in 6 file(s) (none downloaded yet), config.json says bfloat16" in out
    assert "14.93 GiB on disk" in out


def test_info_reports_the_stored_dtype_from_the_headers(capsys, tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["torch_dtype"] = "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    code, out, _ = _run(capsys, "info", str(tmp_path))
    assert code == 0
    assert "stored as float32 (config.json says bfloat16)" in out
