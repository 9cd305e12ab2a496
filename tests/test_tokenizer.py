"""Tests of `dyllm.tokenizer.Tokenizer`: Dream's BPE against Hugging Face's ids, LLaDA-style
`tokenizer.json` folders, special-token ids, and the errors of incomplete tokenizer folders.

Hugging Face's ids come from `fixtures/tokenizer/expected.json` (made by `make_expected.py`
with transformers; these tests never import it). Dream's real vocabulary is read from
`fixtures/hf` (vendored, see its README) once per module: it takes ~0.5 s.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from dyllm.tokenizer import Tokenizer
from tests.checkpoints import HF as HF_DIR

DREAM_DIR = HF_DIR / "Dream-v0-Instruct-7B"
LLADA_DIR = HF_DIR / "LLaDA-8B-Instruct"
EXPECTED = json.loads(
    (Path(__file__).parent / "fixtures" / "tokenizer" / "expected.json").read_text("utf-8")
)


@pytest.fixture(scope="module")
def dream() -> Tokenizer:
    tokenizer = Tokenizer.from_pretrained(DREAM_DIR)
    assert tokenizer is not None
    return tokenizer


# ----- Dream: byte-level BPE from vocab.json + merges.txt ------------------------------------


@pytest.mark.parametrize("case", EXPECTED["dream_encode"], ids=lambda case: repr(case["text"])[:40])
def test_dream_ids_equal_hugging_face(dream: Tokenizer, case: dict) -> None:
    assert dream.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", EXPECTED["dream_decode"], ids=str)
def test_dream_decode_equals_hugging_face(dream: Tokenizer, case: dict) -> None:
    decoded = dream.decode(case["ids"], skip_special_tokens=case["skip_special_tokens"])
    assert decoded == case["text"]


def test_dream_decode_inverts_encode_up_to_nfc(dream: Tokenizer) -> None:
    for case in EXPECTED["dream_encode"]:
        text = case["text"]
        assert dream.decode(dream.encode(text)) == unicodedata.normalize("NFC", text)


def test_dream_special_token_ids_match_reference(dream: Tokenizer) -> None:
    assert dream.eos_token_id == 151643
    assert dream.pad_token_id == 151643
    assert dream.mask_token_id == 151666
    assert dream.bos_token_id == 151665
    assert dream.eot_token_id == 151645
    assert dream.token_to_id("<|im_start|>") == 151644
    assert dream.token_to_id("<|im_end|>") == 151645
    assert dream.token_to_id("<|no such token|>") is None
    assert dream.id_to_token(151666) == "<|mask|>"
    assert dream.vocab_size == 151667
    assert dream.special_tokens == {
        "bos_token": "<|beginoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
    }


def test_dream_chat_prompt_equals_hugging_face(dream: Tokenizer) -> None:
    cases = [
        case
        for case in EXPECTED["chat"]
        if case["model"] == "Dream-v0-Instruct-7B" and case["tools"] is None
    ]
    assert len(cases) == 2 * len(EXPECTED["conversations"])
    for case in cases:
        messages = EXPECTED["conversations"][case["conversation"]]
        rendered = dream.apply_chat_template(
            messages, add_generation_prompt=case["add_generation_prompt"]
        )
        assert rendered == case["rendered"], case["conversation"]


def test_dream_chat_prompt_encodes_to_chatml_ids(dream: Tokenizer) -> None:
    prompt = dream.apply_chat_template([{"role": "user", "content": "hi"}])
    system = dream.encode("system\nYou are a helpful assistant.")
    assert dream.encode(prompt) == [
        151644,
        *system,
        151645,
        198,
        151644,
        *dream.encode("user\nhi"),
        151645,
        198,
        151644,
        *dream.encode("assistant\n"),
    ]


def test_decode_leaves_out_ids_beyond_the_vocabulary(dream: Tokenizer) -> None:
    # Dream's embedding has 152064 rows, its tokenizer 151667 ids: the padding rows have no text.
    assert dream.decode([6023, 151700, 6023]) == "hihi"


def test_decode_accepts_any_int_sequence(dream: Tokenizer) -> None:
    assert dream.decode((151644, 872)) == "<|im_start|>user"
    assert dream.decode(iter([872])) == "user"


def test_decode_rejects_negative_ids(dream: Tokenizer) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        dream.decode([872, -1])


def test_encode_rejects_non_strings(dream: Tokenizer) -> None:
    with pytest.raises(TypeError, match="one string"):
        dream.encode(["hi"])  # type: ignore[arg-type]


# ----- folders without a full tokenizer --------------------------------------------------------


def test_folder_without_tokenizer_files_gives_none(tmp_path: Path) -> None:
    assert Tokenizer.from_pretrained(tmp_path) is None


def test_config_without_vocabulary_gives_none() -> None:
    # The vendored LLaDA folder has tokenizer_config.json but not its tokenizer.json.
    assert Tokenizer.from_pretrained(LLADA_DIR) is None


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")


def _write_tiny_bpe_files(folder: Path) -> None:
    """A 6-token byte-level BPE (vocab.json + merges.txt) in Qwen2's file format."""
    vocab = {"h": 0, "i": 1, "Ġ": 2, "hi": 3, "Ġhi": 4, "!": 5}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\nh i\nĠ hi\n", encoding="utf-8")


def test_tiny_vocab_and_merges_use_the_qwen2_pipeline(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    tokenizer = Tokenizer.from_pretrained(tmp_path)
    assert tokenizer is not None
    assert tokenizer.encode("hi hi!") == [3, 4, 5]
    assert tokenizer.decode([3, 4, 5]) == "hi hi!"
    assert tokenizer.eos_token_id is None
    assert tokenizer.has_chat_template is False


def test_vocab_without_merges_names_the_missing_file(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"has vocab\.json but not merges\.txt"):
        Tokenizer.from_pretrained(tmp_path)


def test_merges_without_vocab_names_the_missing_file(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has merges\.txt but not vocab\.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_unreadable_vocab_json_names_the_file(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    (tmp_path / "vocab.json").write_text('{"h": 0,', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json is not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)


def test_merge_outside_the_vocabulary_names_both_files(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh i\ni h\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt: merge #2 \('i' 'h'\) uses 'ih'"):
        Tokenizer.from_pretrained(tmp_path)


def test_malformed_merges_line_is_reported_with_its_number(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh i\nĠhi\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt, line 3: expected two tokens"):
        Tokenizer.from_pretrained(tmp_path)


def test_unreadable_tokenizer_config_names_the_file(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json is not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)


def test_unreadable_tokenizer_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json could not be read"):
        Tokenizer.from_pretrained(tmp_path)


def test_added_token_id_that_skips_ids_is_an_error(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    config = {"added_tokens_decoder": {"9": {"content": "<|end|>", "special": True}}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match=r"declares '<\|end\|>' as id 9, but .* give it id 6"):
        Tokenizer.from_pretrained(tmp_path)


def test_added_tokens_json_conflicting_with_config_is_an_error(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    config = {"added_tokens_decoder": {"6": {"content": "<|end|>", "special": True}}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "added_tokens.json").write_text('{"<|other|>": 6}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"added_tokens\.json gives id 6 to '<\|other\|>'"):
        Tokenizer.from_pretrained(tmp_path)


def test_tokenizer_without_chat_template_refuses_chat(tmp_path: Path) -> None:
    _write_tiny_bpe_files(tmp_path)
    tokenizer = Tokenizer.from_pretrained(tmp_path)
    assert tokenizer is not None
    with pytest.raises(ValueError, match="has no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


# ----- LLaDA-style folder: tokenizer.json + tokenizer_config.json -----------------------------

# LLaDA's special tokens, at small ids so that a tiny vocabulary can hold them.
LLADA_SPECIALS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|mdm_mask|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]


def _write_llada_style_folder(folder: Path, specials_in_tokenizer_json: bool) -> None:
    """A byte-level BPE tokenizer.json (256 bytes + 'hi') and LLaDA's real names and template.

    The special tokens take ids 257..262, either saved in tokenizer.json (as LLaDA's own file
    does) or only declared in tokenizer_config.json's added_tokens_decoder.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab["hi"] = len(vocab)
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=[("h", "i")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if specials_in_tokenizer_json:
        backend.add_special_tokens(
            [AddedToken(token, special=True, normalized=False) for token in LLADA_SPECIALS]
        )
    backend.save(str(folder / "tokenizer.json"))

    real_config = json.loads((LLADA_DIR / "tokenizer_config.json").read_text("utf-8"))
    added = {
        str(257 + offset): {"content": token, "special": True, "normalized": False}
        for offset, token in enumerate(LLADA_SPECIALS)
    }
    config = {
        key: real_config[key]
        for key in ("bos_token", "eos_token", "pad_token", "add_bos_token", "chat_template")
    }
    config["added_tokens_decoder"] = added
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize("specials_in_tokenizer_json", [True, False])
def test_llada_style_tokenizer_json(tmp_path: Path, specials_in_tokenizer_json: bool) -> None:
    _write_llada_style_folder(tmp_path, specials_in_tokenizer_json)
    tokenizer = Tokenizer.from_pretrained(tmp_path)
    assert tokenizer is not None
    assert tokenizer.vocab_size == 263
    assert tokenizer.bos_token_id == 257
    assert tokenizer.eos_token_id == 258
    assert tokenizer.pad_token_id == 258
    assert tokenizer.mask_token_id == 259  # not named in LLaDA's config: found as <|mdm_mask|>
    assert tokenizer.eot_token_id == 262

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": " hi\n"}])
    assert prompt == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tokenizer.encode(prompt)
    assert [tokenizer.id_to_token(token_id) for token_id in ids] == [
        "<|startoftext|>",
        "<|start_header_id|>",
        *"user",
        "<|end_header_id|>",
        "Ċ",
        "Ċ",
        "hi",
        "<|eot_id|>",
        "<|start_header_id|>",
        *"assistant",
        "<|end_header_id|>",
        "Ċ",
        "Ċ",
    ]
    assert tokenizer.decode(ids) == prompt
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\n\nhiassistant\n\n"
    mask = tokenizer.mask_token_id
    assert tokenizer.encode("hi<|mdm_mask|><|mdm_mask|>") == [256, mask, mask]
