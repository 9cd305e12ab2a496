"""Dream derivatives: DiffuCoder's `<|dlm_pad|>` ends the answer as EOS does (its official demo
cuts the text there; a tokenizer without the token changes nothing); Dream-Coder's
`eos_penalty` is refused with the reason."""

from __future__ import annotations

import pytest

from dyllm import generate
from dyllm.generation.result import answer_end_token_ids, tokens_before_eos
from tests.mock_models import EOS, EOT, FIRST_CHARACTER_ID, CharTokenizer, ScriptedLM, peaked_logits

A, B, C = (FIRST_CHARACTER_ID + i for i in range(3))


class PadTokenizer(CharTokenizer):
    """CharTokenizer whose `<|dlm_pad|>` is id EOT (a stand-in for DiffuCoder's added token)."""

    def token_to_id(self, token: str) -> int | None:
        return EOT if token == "<|dlm_pad|>" else None


def test_tokens_before_eos_stops_at_the_first_end_token() -> None:
    assert tokens_before_eos([A, B, EOT, C, EOS], EOS, (EOT,)) == [A, B]
    assert tokens_before_eos([A, EOS, EOT], EOS, (EOT,)) == [A]
    assert tokens_before_eos([A, B, EOT], EOS) == [A, B, EOT]
    assert tokens_before_eos([A, B], None, ()) == [A, B]


def test_answer_end_ids_come_from_the_tokenizer() -> None:
    assert answer_end_token_ids(PadTokenizer()) == (EOT,)
    assert answer_end_token_ids(CharTokenizer()) == ()
    assert answer_end_token_ids(None) == ()


def test_a_diffucoder_answer_ends_at_its_pad_token() -> None:
    tokens = [A, A, B, EOT, C, C, C, C]  # dream: column c reads table row c - 1
    model = ScriptedLM({None: peaked_logits(tokens, [5.0] * 8)}, family="dream")
    model.tokenizer = PadTokenizer()
    result = generate(model, [A, B], gen_length=5, steps=5, alg="maskgit_plus", temperature=0.0)
    assert result.token_ids == [[A, B, EOT, C, C]]
    assert result.stats.generated_tokens_per_row == [2]
    assert result.texts == ["ab"]
    model.tokenizer = CharTokenizer()
    plain = generate(model, [A, B], gen_length=5, steps=5, alg="maskgit_plus", temperature=0.0)
    assert plain.stats.generated_tokens_per_row == [5]


def test_dream_coders_eos_penalty_is_refused_with_the_reason() -> None:
    model = ScriptedLM({None: peaked_logits([A] * 8, [5.0] * 8)}, family="dream")
    with pytest.raises(ValueError, match="'eos_penalty' is not supported: Dream-Coder"):
        generate(model, [A, B], gen_length=4, steps=4, eos_penalty=3.0)
