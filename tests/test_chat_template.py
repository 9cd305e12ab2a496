"""Tests of chat-template rendering: the real LLaDA and Dream templates against Hugging Face's
output, the jinja settings transformers uses, and the errors a bad template or conversation gets.

Expected prompts come from `fixtures/tokenizer/expected.json`, rendered by transformers'
`apply_chat_template` (see `make_expected.py`); the real templates and special-token names are
read from `fixtures/hf` (vendored, see its README).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from dyllm.tokenizer import ChatTemplateError, TokenizerConfig, render_chat_template
from tests.checkpoints import HF as HF_DIR

EXPECTED = json.loads(
    (Path(__file__).parent / "fixtures" / "tokenizer" / "expected.json").read_text("utf-8")
)

USER_HI = [{"role": "user", "content": "hi"}]


def _case_id(case: dict) -> str:
    tools = "+tools" if case["tools"] else ""
    return f"{case['model']}-{case['conversation']}{tools}-gen={case['add_generation_prompt']}"


# ----- the real templates against transformers ----------------------------------------------


@pytest.mark.parametrize("case", EXPECTED["chat"], ids=_case_id)
def test_real_template_renders_like_hugging_face(case: dict) -> None:
    config = TokenizerConfig.from_folder(HF_DIR / case["model"])
    assert config.chat_template is not None
    extra = {} if case["tools"] is None else {"tools": case["tools"]}
    rendered = render_chat_template(
        config.chat_template,
        EXPECTED["conversations"][case["conversation"]],
        add_generation_prompt=case["add_generation_prompt"],
        **config.special_tokens,
        **extra,
    )
    assert rendered == case["rendered"]


def test_fixture_covers_both_models_and_both_generation_prompt_settings() -> None:
    covered = {(case["model"], case["add_generation_prompt"]) for case in EXPECTED["chat"]}
    assert covered == {
        (model, flag)
        for model in ("LLaDA-8B-Instruct", "Dream-v0-Instruct-7B")
        for flag in (True, False)
    }


def test_llada_config_names_and_added_tokens() -> None:
    config = TokenizerConfig.from_folder(HF_DIR / "LLaDA-8B-Instruct")
    assert config.special_tokens == {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "cls_token": "[CLS]",
    }
    by_content = {spec.content: spec.token_id for spec in config.added_tokens}
    assert len(config.added_tokens) == 269
    assert by_content["<|mdm_mask|>"] == 126336
    assert by_content["<|start_header_id|>"] == 126346
    assert by_content["<|end_header_id|>"] == 126347
    assert by_content["<|eot_id|>"] == 126348
    assert all(spec.special and not spec.normalized for spec in config.added_tokens)


def test_dream_config_names_and_added_tokens() -> None:
    config = TokenizerConfig.from_folder(HF_DIR / "Dream-v0-Instruct-7B")
    # unk_token is null in the file: absent here, as in transformers' special_tokens_map
    assert config.special_tokens == {
        "bos_token": "<|beginoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
    }
    assert [spec.token_id for spec in config.added_tokens] == list(range(151643, 151667))
    tool_call = next(spec for spec in config.added_tokens if spec.content == "<tool_call>")
    assert (tool_call.token_id, tool_call.special, tool_call.normalized) == (151657, False, False)


def test_chat_template_jinja_file_wins_over_config(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "from config"}), encoding="utf-8"
    )
    (tmp_path / "chat_template.jinja").write_text("from file", encoding="utf-8")
    assert TokenizerConfig.from_folder(tmp_path).chat_template == "from file"


def test_named_template_list_uses_the_default_entry(tmp_path: Path) -> None:
    templates = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "chat"}]
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": templates}), encoding="utf-8"
    )
    assert TokenizerConfig.from_folder(tmp_path).chat_template == "chat"


def test_special_tokens_map_fills_names_missing_from_config(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<eos>"}), encoding="utf-8"
    )
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<other>", "bos_token": {"content": "<bos>"}}), encoding="utf-8"
    )
    assert TokenizerConfig.from_folder(tmp_path).special_tokens == {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
    }


# ----- the jinja environment transformers uses ------------------------------------------------


def test_block_tags_leave_no_blank_lines_or_indentation() -> None:
    # trim_blocks drops the newline after a tag, lstrip_blocks the indentation before one.
    template = (
        "{% for message in messages %}\n"
        "    {% if message.role == 'user' %}\n"
        "[{{ message.content }}]\n"
        "    {% endif %}\n"
        "{% endfor %}"
    )
    messages = [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]
    assert render_chat_template(template, messages) == "[a]\n"


def test_loop_controls_are_enabled() -> None:
    template = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.content }}"
    template += "{% endfor %}"
    messages = [{"role": "user", "content": str(number)} for number in range(5)]
    assert render_chat_template(template, messages) == "01"


def test_tojson_keeps_unicode_and_html_characters() -> None:
    template = "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}"
    message = {"role": "user", "content": "<b>Zürich & 'co'</b>"}
    expected = json.dumps(message, ensure_ascii=False)
    expected_indented = json.dumps(message, ensure_ascii=False, indent=2)
    assert render_chat_template(template, [message]) == f"{expected}|{expected_indented}"


def test_special_tokens_and_generation_flag_are_template_variables() -> None:
    template = "{{ bos_token }}{{ messages[0].content }}{% if add_generation_prompt %}>{% endif %}"
    assert render_chat_template(template, USER_HI, bos_token="<s>") == "<s>hi>"
    without_prompt = render_chat_template(
        template, USER_HI, add_generation_prompt=False, bos_token="<s>"
    )
    assert without_prompt == "<s>hi"


def test_tools_and_documents_default_to_none() -> None:
    template = "{{ tools is none }} {{ documents is none }}"
    assert render_chat_template(template, USER_HI) == "True True"


def test_message_keys_set_to_none_are_dropped() -> None:
    # transformers removes them so that `is defined` tests (Dream's tool_calls) behave.
    template = "{{ 'has' if messages[0].tool_calls is defined else 'none' }}"
    message = {"role": "assistant", "content": "x", "tool_calls": None}
    assert render_chat_template(template, [message]) == "none"


def test_strftime_now_gives_the_current_date() -> None:
    before = datetime.now().strftime("%Y-%m-%d")
    rendered = render_chat_template("{{ strftime_now('%Y-%m-%d') }}", USER_HI)
    after = datetime.now().strftime("%Y-%m-%d")
    assert rendered in {before, after}


def test_raise_exception_becomes_a_chat_template_error() -> None:
    template = "{% if messages[0].role != 'system' %}{{ raise_exception('need a system turn') }}"
    template += "{% endif %}"
    with pytest.raises(ChatTemplateError, match="rejected the conversation: need a system turn"):
        render_chat_template(template, USER_HI)


def test_sandbox_forbids_changing_the_messages() -> None:
    with pytest.raises(ChatTemplateError, match="failed while rendering"):
        render_chat_template("{{ messages.append(1) }}", USER_HI)


def test_invalid_jinja_is_reported_with_its_line() -> None:
    with pytest.raises(ChatTemplateError, match=r"not valid jinja \(line 2"):
        render_chat_template("ok\n{% for m in messages %}", USER_HI)


@pytest.mark.parametrize("messages", [[], "hi", {"role": "user", "content": "hi"}])
def test_messages_must_be_a_non_empty_list(messages: object) -> None:
    with pytest.raises(ValueError, match="non-empty list of dicts"):
        render_chat_template("{{ messages }}", messages)  # type: ignore[arg-type]


def test_each_message_must_be_a_dict() -> None:
    with pytest.raises(ValueError, match="message 1 should be a dict"):
        render_chat_template("{{ messages }}", [{"role": "user", "content": "a"}, "b"])
