"""Options, defaults, validation messages, prompt forms, batching, early stop and statistics."""

import json

import pytest
import torch

from dyllm import generate
from dyllm.generation import Denoiser, GenerationConfig, run_sampler
from dyllm.generation.batching import build_prompt_batch
from dyllm.generation.config import resolve_config
from tests.mock_models import (
    EOS,
    MASK,
    VOCAB_SIZE,
    CharTokenizer,
    ScriptedLM,
    TinyBidirectionalLM,
    peaked_logits,
)

TOKENS = CharTokenizer()
A, B, C, D = TOKENS.encode("abcd")


def scripted(family="llada", **changes):
    return ScriptedLM({None: peaked_logits([C] * 64, [2.0] * 64)}, family=family, **changes)


# ----------------------------------------------------------------------------- defaults


def test_family_defaults():
    llada = resolve_config(GenerationConfig(), "llada", {})
    assert llada.sampler == "llada" and llada.steps == 128
    assert llada.block_length == 32 and llada.temperature == 0.0
    assert llada.alg is None
    assert resolve_config(GenerationConfig(gen_length=40), "llada", {}).block_length == 40


DREAM_REFERENCE = {
    "gen_length": 20,  # transformers' max_length 20, counted after the prompt
    "steps": 512,
    "block_length": 20,  # one block: the reference has none
    "temperature": 1.0,  # transformers' global generation defaults, through config.json
    "top_p": 1.0,
    "top_k": 50,
    "alg": "origin",
    "alg_temp": None,
    "eps": 1e-3,
}
"""What Dream's `diffusion_generate` (transformers 4.46) runs with when the caller sets nothing."""


def resolved_dream_options(config: GenerationConfig) -> dict:
    return {name: getattr(config, name) for name in DREAM_REFERENCE}


def test_unset_dream_options_resolve_as_the_reference_resolves_them():
    dream = resolve_config(GenerationConfig(), "dream", {})
    assert dream.sampler == "dream"
    assert resolved_dream_options(dream) == DREAM_REFERENCE
    with_length = resolve_config(GenerationConfig(gen_length=64), "dream", {})
    assert (with_length.steps, with_length.block_length) == (512, 64)


def test_a_generation_config_derived_from_config_json_is_not_read():
    # Dream's released generation_config.json (transformers wrote it from config.json; the
    # reference never reads it) says temperature 0: the reference still samples at 1.0.
    released = {
        "_from_model_config": True,
        "alg": "origin",
        "alg_temp": None,
        "eps": 0.001,
        "steps": 512,
        "temperature": 0.0,
        "top_k": None,
        "top_p": None,
    }
    dream = resolve_config(GenerationConfig(), "dream", released)
    assert resolved_dream_options(dream) == DREAM_REFERENCE
    llada = resolve_config(GenerationConfig(), "llada", {"_from_model_config": True})
    assert (llada.gen_length, llada.steps, llada.temperature) == (128, 128, 0.0)


def test_a_generation_config_written_for_the_checkpoint_sets_unset_options():
    written = {"alg": "entropy", "temperature": 0.2, "top_p": 0.95, "eps": 0.01, "steps": 32}
    written |= {"max_new_tokens": 64, "top_k": None, "alg_temp": None}
    dream = resolve_config(GenerationConfig(), "dream", written)
    assert (dream.alg, dream.temperature, dream.top_p, dream.eps) == ("entropy", 0.2, 0.95, 0.01)
    assert (dream.steps, dream.gen_length, dream.alg_temp) == (32, 64, None)
    assert dream.top_k == 0  # a null top_k is Dream's "no top-k filter", not "unset"
    assert resolve_config(GenerationConfig(), "dream", {"top_p": None}).top_p == 1.0
    explicit_options = GenerationConfig(alg="maskgit_plus", temperature=0.0, top_k=20)
    explicit = resolve_config(explicit_options, "dream", written)
    assert (explicit.alg, explicit.temperature, explicit.top_k) == ("maskgit_plus", 0.0, 20)
    llada = resolve_config(GenerationConfig(), "llada", {"gen_length": 24, "temperature": None})
    assert (llada.gen_length, llada.steps, llada.temperature) == (24, 24, 0.0)


def test_generate_uses_the_models_generation_defaults():
    model = scripted("dream")
    model.generation_defaults = {"alg": "maskgit_plus", "steps": 4, "temperature": 0.0}
    result = generate(model, [A, B], gen_length=4)
    # maskgit_plus on 4 steps commits 0, 1, 1, 2 (origin would draw coins).
    assert [int((call == MASK).sum()) for call in model.calls] == [4, 4, 3, 2]
    assert result.stats.steps_run == 4


def test_options_override_the_config_argument():
    model = scripted()
    base = GenerationConfig(gen_length=8, steps=8, block_length=8)
    assert generate(model, [A], base, steps=4).stats.steps_run == 4
    assert generate(model, [A], base).stats.steps_run == 8


# ----------------------------------------------------------------------------- validation


def expect_error(model, message_parts, prompts=(A, B), **options):
    """generate must raise a ValueError whose message has every part, before any forward."""
    with pytest.raises(ValueError) as error:
        generate(model, list(prompts) if isinstance(prompts, tuple) else prompts, **options)
    for part in message_parts:
        assert part in str(error.value)
    assert model.calls == []


def test_unknown_option_suggests_the_closest_name():
    expect_error(
        scripted(), ["'stpes'", "Did you mean 'steps'?", "Valid options:", "block_length"], stpes=4
    )


def test_block_length_must_divide_gen_length():
    expect_error(
        scripted(),
        [
            "gen_length=20 is not a multiple of block_length=8",
            "pass a block_length that divides it",
        ],
        gen_length=20,
        block_length=8,
    )


def test_steps_must_divide_into_blocks_and_the_message_proposes_values():
    expect_error(
        scripted(),
        ["steps=10 must be a multiple of the number of blocks (4", "use steps=8 or steps=12"],
        gen_length=16,
        block_length=4,
        steps=10,
    )
    expect_error(scripted(), ["use steps=4"], gen_length=16, block_length=4, steps=3)


def test_steps_at_least_one():
    expect_error(scripted(), ["steps=0 must be >= 1"], gen_length=8, steps=0)


def test_threshold_and_factor_are_exclusive():
    expect_error(scripted(), ["pass only one"], threshold=0.9, factor=1.0)


@pytest.mark.parametrize("threshold", [0.0, 1.5, -0.1])
def test_threshold_range(threshold):
    expect_error(scripted(), [f"threshold={threshold} must be in (0, 1]"], threshold=threshold)


def test_negative_temperature():
    expect_error(scripted(), ["temperature=-0.5 must be >= 0"], temperature=-0.5)


def test_unknown_remasking_and_alg_names():
    expect_error(
        scripted(),
        ["unknown remasking 'low_confidense'", "Did you mean 'low_confidence'?"],
        remasking="low_confidense",
    )
    expect_error(
        scripted("dream"), ["unknown alg 'entropi'", "Did you mean 'entropy'?"], alg="entropi"
    )
    expect_error(scripted(), ["unknown sampler 'drem'", "Did you mean 'dream'?"], sampler="drem")


def test_options_of_the_other_sampler_are_refused():
    expect_error(
        scripted("dream"),
        ["cfg_scale=1.0 is an option of the llada sampler", "pass sampler='llada'"],
        cfg_scale=1.0,
    )
    expect_error(
        scripted(), ["top_p is an option of the dream sampler", "pass sampler='dream'"], top_p=0.9
    )


def test_dream_value_ranges():
    expect_error(scripted("dream"), ["top_p=1.5 must be in (0, 1]"], top_p=1.5)
    expect_error(
        scripted("dream"), ["top_k=-1 must be >= 0 (0 turns the top-k filter off)"], top_k=-1
    )
    expect_error(scripted("dream"), ["eps=1.0 must be in (0, 1)"], eps=1.0)


def test_eos_options_need_the_token_ids():
    expect_error(
        scripted(eot_token_id=None),
        ["eot_token_id", "tokenizer files"],
        confidence_eos_eot_inf=True,
    )
    expect_error(scripted(eos_token_id=None), ["stop_at_eos=True needs"], stop_at_eos=True)


def test_prompt_errors():
    expect_error(scripted(), ["prompts is an empty list"], prompts=[])
    expect_error(scripted(), ["prompt 0 is an empty string"], prompts="")
    expect_error(scripted(), ["prompt 1 is an empty list of token ids"], prompts=[[A], []])
    expect_error(scripted(), ["token id 48 outside the vocabulary [0, 48)"], prompts=[A, 48])
    expect_error(scripted(), ["contains the mask token 3"], prompts=[A, MASK])
    expect_error(scripted(), ["mixes kinds"], prompts=["ab", [A]])
    expect_error(scripted(), ["chat=True wraps text", "token ids"], prompts=[A, B], chat=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gen_length": 0}, "gen_length=0 must be >= 1"),
        ({"gen_length": 8.0}, "gen_length must be an integer"),
        ({"seed": -1}, "seed=-1 must be >= 0"),
        ({"factor": 0.0}, "factor=0.0 must be > 0"),
        ({"cfg_scale": -1.0}, "cfg_scale=-1.0 must be >= 0"),
        ({"stop_at_eos": "yes"}, "stop_at_eos must be True or False"),
        ({"sampler": "dream", "alg_temp": -1.0}, "alg_temp=-1.0 must be >= 0"),
        ({"sampler": "dream", "top_p": 0.0}, "top_p=0.0 must be in (0, 1]"),
    ],
)
def test_more_value_checks(options, message):
    expect_error(scripted(), [message], **options)


def test_logits_eos_inf_needs_an_eos_token():
    expect_error(scripted(eos_token_id=None), ["logits_eos_inf=True needs"], logits_eos_inf=True)


def test_unknown_family_needs_an_explicit_sampler():
    expect_error(scripted(family="gpt"), ["family is 'gpt'", "pass sampler='llada'"])


def test_chat_needs_a_template():
    model = scripted()
    model.tokenizer.has_chat_template = False
    expect_error(model, ["needs a chat template", "pass chat=False"], prompts="hi", chat=True)


def test_tensor_prompts_are_token_ids():
    model = scripted()
    generate(model, torch.tensor([[A, B], [C, D]]), gen_length=4, steps=4)
    assert model.calls[0][:, :2].tolist() == [[A, B], [C, D]]


def test_text_prompts_without_a_tokenizer():
    model = scripted()
    model.tokenizer = None
    expect_error(model, ["model.tokenizer is None", "pass token ids instead"], prompts="hello")


def test_prompt_plus_answer_longer_than_the_position_table():
    expect_error(
        scripted(),
        [
            "longest prompt (60 tokens) plus gen_length (16) is 76",
            "12 more than the model's max_position_embeddings (64)",
            "reduce gen_length to at most 4",
        ],
        prompts=[[A] * 60],
        gen_length=16,
    )


def test_config_must_be_a_generation_config():
    with pytest.raises(ValueError, match="config must be a GenerationConfig"):
        generate(scripted(), [A], {"steps": 4})


def test_config_replace_checks_names():
    with pytest.raises(ValueError, match="Did you mean 'gen_length'"):
        GenerationConfig().replace(gen_lenght=8)


# ----------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ("ab", [[A, B]]),
        (["ab", "c"], [[A, B], [EOS, C]]),
        ([A, B, C], [[A, B, C]]),
        ([[A], [B, C]], [[EOS, A], [B, C]]),
    ],
)
def test_prompt_forms_are_left_padded(prompts, expected):
    model = scripted()
    result = generate(model, prompts, gen_length=4, steps=4, block_length=4)
    first_input = model.calls[0]
    assert first_input[:, : first_input.shape[1] - 4].tolist() == expected
    assert len(result.token_ids) == len(expected)


def test_chat_wraps_the_text_in_the_template():
    model = scripted()
    generate(model, "hi", chat=True, gen_length=4, steps=4)
    assert model.calls[0][0, :-4].tolist() == TOKENS.encode("<bos><user>hi<eot><assistant>")


def test_padding_mask_and_positions():
    batch = build_prompt_batch([[7, 8, 9], [10]], 2, EOS, MASK, torch.device("cpu"))
    assert batch.canvas.tolist() == [[7, 8, 9, MASK, MASK], [EOS, EOS, 10, MASK, MASK]]
    assert batch.attention_mask.tolist() == [[True] * 5, [False, False, True, True, True]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]
    assert batch.prompt_length == 3 and batch.prompt_lengths == (3, 1)
    same = build_prompt_batch([[7, 8], [9, 10]], 2, EOS, MASK, torch.device("cpu"))
    assert same.attention_mask is None and same.position_ids is None


# ----------------------------------------------------------------------------- early stop, stats


def eos_model():
    # Answer columns 2..9 (one block of 8, one token per step): column 4 proposes EOS most
    # confidently, columns 2 and 3 next, the rest below; after 3 steps the text is final.
    table = peaked_logits([A, B, C, D, EOS, A, B, C, D, A], [0, 0, 5, 4, 9, 1, 1, 1, 1, 1])
    return ScriptedLM({None: table})


def test_generated_tokens_stop_at_the_first_eos():
    result = generate(eos_model(), [A, B], gen_length=8, block_length=8, steps=8)
    assert result.token_ids == [[C, D, EOS, A, B, C, D, A]]
    assert result.texts == ["cd"]
    stats = result.stats
    assert stats.generated_tokens == 2 and stats.generated_tokens_per_row == [2]
    assert stats.nfe == 8 and stats.steps_run == 8
    assert stats.tokens_per_forward == 2 / 8


def test_stop_at_eos_ends_when_every_row_is_final_and_fills_eos():
    model = eos_model()
    result = generate(model, [A, B], gen_length=8, block_length=8, steps=8, stop_at_eos=True)
    assert result.stats.steps_run == 3 and result.stats.nfe == 3
    assert result.token_ids == [[C, D, EOS, EOS, EOS, EOS, EOS, EOS]]
    assert result.texts == ["cd"] and result.stats.generated_tokens == 2


def test_stop_at_eos_waits_for_the_slowest_row():
    late_eos = peaked_logits([A, B, C, D, A, B, C, D, EOS, A], [0, 0, 5, 4, 3, 3, 3, 3, 9, 0])
    model = ScriptedLM({A: eos_model().tables[None], B: late_eos})
    result = generate(
        model, [[A, A], [B, B]], gen_length=8, block_length=8, steps=8, stop_at_eos=True
    )
    # Row 1's EOS (column 8) comes first, then columns 2..7 one per step: final after 7 steps.
    assert result.stats.steps_run == 7
    assert result.token_ids[0][:3] == [C, D, EOS]
    assert result.token_ids[1] == [C, D, A, B, C, D, EOS, EOS]
    assert result.stats.generated_tokens_per_row == [2, 6]


def test_result_serialises_to_json():
    result = generate(TinyBidirectionalLM(), "hello", gen_length=8, steps=8)
    decoded = json.loads(json.dumps(result.to_dict()))
    expected_keys = "generated_tokens nfe wall_time_s tokens_per_second tokens_per_forward"
    assert set(decoded["stats"]) >= {*expected_keys.split(), "steps_run", "extra"}
    assert decoded["token_ids"] == result.token_ids and decoded["texts"] == result.texts


class CountingDenoiser(Denoiser):
    """Returns constant logits and reports how often it was called in extra stats."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __call__(self, x, ctx):
        self.calls += 1
        self.nfe += 1
        logits = torch.zeros(x.shape[0], ctx.logit_end - ctx.logit_start, VOCAB_SIZE)
        logits[..., C] = 1.0
        return logits

    def extra_stats(self):
        return {"calls": self.calls}


def test_custom_denoisers_report_extra_stats():
    result = run_sampler(scripted(), [A], CountingDenoiser(), gen_length=4, steps=4)
    assert result.token_ids == [[C] * 4]
    assert result.stats.extra == {"calls": 4} and result.stats.nfe == 4


def test_a_denoiser_returning_the_wrong_shape_is_named():
    class WholeCanvas(CountingDenoiser):
        def __call__(self, x, ctx):
            return torch.zeros(*x.shape, VOCAB_SIZE)

    with pytest.raises(ValueError, match=r"WholeCanvas returned logits of shape \[1, 5, "):
        run_sampler(scripted(), [A], WholeCanvas(), gen_length=4, steps=4)


def test_progress_bar(capsys):
    generate(scripted(), [A], gen_length=4, steps=4, progress=True)
    assert "denoising" in capsys.readouterr().err
