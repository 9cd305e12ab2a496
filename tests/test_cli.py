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
