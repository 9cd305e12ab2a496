"""The shipped reference models, their registry, and the training script that made them.

The shipped checkpoints must load through the ordinary loader in their family's real format and
still score what their committed `eval.json` says (within 10 points, on 20 held-out problems,
with `dyllm.generation.generate` and the default sampler): this guards the loader and the
samplers against regressions that only a trained model reveals. The training script is checked
on a tiny model: it writes a loadable checkpoint, and a run interrupted and resumed ends with
exactly the weights of an uninterrupted run; the loss applies Dream's logit shift and masks only
answer positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import dyllm
from dyllm.reference.encoding import Batch, collate, encode_prompt
from dyllm.reference.evaluate import default_gen_length, evaluate, sampler_settings
from dyllm.reference.long_tasks import LONG_TASK_NAMES, long_heldout_problems
from dyllm.reference.objective import diffusion_loss, mask_answers
from dyllm.reference.registry import (
    BUILTIN_MODELS,
    BUILTIN_SUITES,
    CHECKPOINTS_DIR,
    DEFAULT_MODEL,
    builtin_model_path,
    resolve_model_path,
)
from dyllm.reference.tasks import TASK_NAMES, heldout_problems
from dyllm.reference.train import main as train_main
from dyllm.reference.vocab import VOCAB_SIZE, build_tokenizer, special_token_ids

PROBLEMS_PER_TASK = 5
LONG_PROBLEMS_PER_TASK = 10
ALLOWED_DROP = 0.10
MAX_CHECKPOINT_BYTES = 10 * 1024 * 1024


def committed_scores(name: str) -> dict:
    return json.loads((builtin_model_path(name) / "eval.json").read_text())


def test_registry_maps_builtin_names_and_passes_paths_through(tmp_path: Path) -> None:
    assert DEFAULT_MODEL == "llada-ref"
    assert resolve_model_path("llada-ref") == CHECKPOINTS_DIR / "llada-ref"
    assert resolve_model_path("dream-ref") == CHECKPOINTS_DIR / "dream-ref"
    assert resolve_model_path(str(tmp_path)) == tmp_path
    assert resolve_model_path(tmp_path / "x") == tmp_path / "x"


def test_every_builtin_names_its_task_suite() -> None:
    assert set(BUILTIN_SUITES) == set(BUILTIN_MODELS)
    assert committed_scores("llada-long")["heldout"]["suite"] == "long"


def test_registry_names_the_builtins_for_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="'gpt-2' is not a built-in model; built-ins: llada-ref"):
        builtin_model_path("gpt-2")


@pytest.mark.parametrize(
    ("name", "model_type", "kv_heads_key", "bias_key"),
    [
        ("llada-ref", "llada", "n_kv_heads", None),
        ("dream-ref", "Dream", "num_key_value_heads", "model.layers.0.self_attn.q_proj.bias"),
        ("llada-long", "llada", "n_kv_heads", None),
    ],
)
def test_shipped_checkpoint_is_in_the_real_family_format(
    name: str, model_type: str, kv_heads_key: str, bias_key: str | None
) -> None:
    folder = builtin_model_path(name)
    for file in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "eval.json",
    ):
        assert (folder / file).is_file(), file
    total = sum(file.stat().st_size for file in folder.iterdir())
    assert total < MAX_CHECKPOINT_BYTES
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == model_type
    tensors = load_file(str(folder / "model.safetensors"))
    if bias_key is None:
        assert "model.transformer.blocks.0.q_proj.weight" in tensors
        assert not any(key.endswith(".bias") for key in tensors)
        assert config[kv_heads_key] == config["n_heads"]
    else:
        assert bias_key in tensors
        assert config[kv_heads_key] < config["num_attention_heads"]


def test_shipped_tokenizer_encodes_one_token_per_character() -> None:
    model = dyllm.load(builtin_model_path("llada-ref"), device="cpu")
    ids = model.tokenizer.encode("sort 31 =")
    assert ids == [83, 79, 82, 84, 0, 19, 17, 0, 29]
    assert model.tokenizer.decode(ids) == "sort 31 ="
    assert model.tokenizer.mask_token_id == model.config.mask_token_id


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_shipped_model_still_scores_its_committed_figure(name: str) -> None:
    committed = committed_scores(name)
    model = dyllm.load(builtin_model_path(name), device="cpu")
    assert default_gen_length(model) == committed["sampler"]["gen_length"]
    if BUILTIN_SUITES[name] == "long":  # 20 problems: 10 per long task
        problems = [
            p
            for task in LONG_TASK_NAMES
            for p in long_heldout_problems(task)[:LONG_PROBLEMS_PER_TASK]
        ]
    else:  # 20 problems: 5 per task
        problems = [p for task in TASK_NAMES for p in heldout_problems(task)[:PROBLEMS_PER_TASK]]
    assert len(problems) == 20
    score, _ = evaluate(model, problems, batch_size=len(problems))
    assert score.overall.exact_match >= committed["overall"]["exact_match"] - ALLOWED_DROP


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_shipped_model_samples_as_its_committed_figure_was_measured(name: str) -> None:
    # Their generation_config.json (written by dyllm, not derived from config.json) sets the
    # sampler; dream-ref's null top_k / top_p mean no filter, not Dream's unset top-50.
    committed = committed_scores(name)["sampler"]
    settings = sampler_settings(dyllm.load(builtin_model_path(name), device="cpu"))
    assert {key: settings[key] for key in committed} == committed
    if committed["sampler"] == "dream":
        assert (settings["top_k"], settings["top_p"]) == (0, 1.0)


def tiny_run(out: Path, *extra: str) -> None:
    train_main(
        [
            "--family", "dream", "--out", str(out), "--seed", "3", "--steps", "4",
            "--batch-size", "8", "--hidden-size", "32", "--layers", "1", "--heads", "2",
            "--intermediate-size", "64", "--warmup", "2", "--quick-eval-per-task", "1",
            "--eval-every", "1000", "--checkpoint-every", "1000", "--threads", "1", *extra,
        ]
    )  # fmt: skip


def test_training_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    tiny_run(tmp_path / "run")
    model = dyllm.load(tmp_path / "run" / "model", device="cpu")
    assert model.config.family == "dream"
    assert model.config.num_kv_heads == 1
    assert model.generation_defaults["alg"] == "entropy"
    log_lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in log_lines]
    assert log[-1]["step"] == 4 and "quick_eval" in log[-1]


def test_resumed_training_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    tiny_run(tmp_path / "straight")
    tiny_run(tmp_path / "interrupted", "--minutes", "0")
    stopped = torch.load(tmp_path / "interrupted" / "train_state.pt", weights_only=True)
    assert stopped["step"] == 1
    tiny_run(tmp_path / "interrupted", "--resume")
    straight = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "interrupted" / "model" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key, tensor in straight.items():
        assert torch.equal(tensor, resumed[key]), key


def test_resume_without_a_state_file_says_how_to_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no train_state\.pt in"):
        tiny_run(tmp_path / "empty", "--resume")


class OracleModel(torch.nn.Module):
    """Logits that put all mass on the true token of position i + `lead` at position i."""

    def __init__(self, true_ids: torch.Tensor, lead: int, vocab_size: int = 128) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        predicted = true_ids if lead == 0 else torch.cat((true_ids[:, 1:], true_ids[:, -1:]), 1)
        self.register_buffer("logits", F.one_hot(predicted, vocab_size).float() * 50.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.logits + self.anchor  # [B, L, V]


def oracle_batch() -> Batch:
    tokenizer = build_tokenizer("dream")
    eos = special_token_ids("dream")["eos"]
    problems = [p for task in TASK_NAMES for p in heldout_problems(task)[:2]]
    return collate(tokenizer, problems, eos, gen_length=24)


@pytest.mark.parametrize(("lead", "logit_shift"), [(0, False), (1, True)])
def test_loss_is_zero_for_a_model_that_predicts_the_answer(lead: int, logit_shift: bool) -> None:
    batch = oracle_batch()
    model = OracleModel(batch.input_ids, lead)
    noise = torch.Generator().manual_seed(0)
    loss = diffusion_loss(model, batch, mask_id=99, logit_shift=logit_shift, generator=noise)
    assert loss.item() < 1e-6


@pytest.mark.parametrize(("lead", "logit_shift"), [(0, True), (1, False)])
def test_loss_is_large_when_the_shift_is_wrong(lead: int, logit_shift: bool) -> None:
    batch = oracle_batch()
    model = OracleModel(batch.input_ids, lead)
    noise = torch.Generator().manual_seed(0)
    loss = diffusion_loss(model, batch, mask_id=99, logit_shift=logit_shift, generator=noise)
    assert loss.item() > 5.0


def test_masks_fall_only_on_answer_positions() -> None:
    batch = oracle_batch()
    noised, masked, ratio = mask_answers(batch, 99, torch.Generator().manual_seed(1))
    assert not masked[~batch.answer_mask].any()
    assert torch.equal(noised[~masked], batch.input_ids[~masked])
    assert (noised[masked] == 99).all()
    assert ((ratio >= 1e-3) & (ratio <= 1)).all()
    assert batch.answer_mask.sum(dim=1).tolist() == [24] * len(ratio)


@pytest.mark.parametrize(
    ("family", "specials"),
    [
        ("llada", ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|eot_id|>"]),
        ("dream", ["<|beginoftext|>", "<|endoftext|>", "<|mask|>", "<|im_end|>"]),
    ],
)
def test_vocabulary_has_the_family_special_tokens(family: str, specials: list[str]) -> None:
    tokenizer = build_tokenizer(family)
    ids = special_token_ids(family)
    assert [tokenizer.id_to_token(ids[name]) for name in ("bos", "eos", "mask")] == specials[:3]
    assert tokenizer.token_to_id(specials[3]) is not None
    assert tokenizer.get_vocab_size() <= VOCAB_SIZE
    assert tokenizer.decode(tokenizer.encode("rot13 abc =\n").ids) == "rot13 abc =\n"


def test_prompt_with_characters_outside_the_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the reference vocabulary"):
        encode_prompt(build_tokenizer("llada"), "sort 12 ≠")


def test_long_model_warns_only_off_its_own_task_formats(capsys: pytest.CaptureFixture) -> None:
    from argparse import Namespace

    from dyllm.cli import _warn_off_task
    from dyllm.reference.long_tasks import generate_long_problems

    folder = builtin_model_path("llada-long")
    flags = Namespace(chat=False, token_ids=False)
    _warn_off_task(folder, [generate_long_problems("runsum", 1, seed=9)[0].prompt], flags)
    assert capsys.readouterr().err == ""
    _warn_off_task(folder, ["sort 3141592653589793 ="], flags)
    assert "'runsum D ='" in capsys.readouterr().err
