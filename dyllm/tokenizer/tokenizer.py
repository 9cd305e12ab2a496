"""`Tokenizer`: text <-> token ids and chat prompts for a checkpoint folder, without transformers.

It wraps a `tokenizers.Tokenizer` (Rust, fast) built from whichever files the folder has:

- `tokenizer.json` (LLaDA and most checkpoints): loaded as is;
- `vocab.json` + `merges.txt` (Dream, Qwen2): the Qwen2 byte-level BPE of `qwen2_bpe.py`;
- neither: `from_pretrained` returns None, so a checkpoint without tokenizer still loads and only
  text prompts fail (with an error from the caller).

The added tokens of `tokenizer_config.json` (`<|im_start|>`, `<|mask|>`, ...) are registered at
their declared ids, so they are matched whole in text and never split by BPE. `encode` adds no
BOS/EOS (both LLaDA and Dream configs say `add_bos_token: false`; chat templates write the BOS
themselves). Special-token ids come from the names in the config files (`eos_token`, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as BackendTokenizer

from dyllm.tokenizer.chat_template import render_chat_template
from dyllm.tokenizer.config_files import AddedTokenSpec, TokenizerConfig
from dyllm.tokenizer.qwen2_bpe import build_qwen2_bpe

TOKENIZER_JSON_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

# Tokens that end one chat turn, by model family, for models whose config does not name them.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>")
# LLaDA's mask token is not named in its tokenizer_config.json (only config.json's
# mask_token_id says 126336); Dream names `<|mask|>` as mask_token.
MASK_TOKENS = ("<|mdm_mask|>", "<|mask|>")


class Tokenizer:
    """Encode/decode text and render chat prompts for one model.

    Build it with `Tokenizer.from_pretrained(folder)`; the constructor takes an already built
    `tokenizers.Tokenizer` (with its added tokens) and the parsed side files.
    """

    def __init__(self, backend: BackendTokenizer, config: TokenizerConfig | None = None) -> None:
        self.backend = backend
        self.config = config if config is not None else TokenizerConfig()

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer | None:
        """The tokenizer stored in `folder`, or None when the folder has no vocabulary file."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist or is not a folder.")
        tokenizer_json = folder / TOKENIZER_JSON_FILE
        vocab_path, merges_path = folder / VOCAB_FILE, folder / MERGES_FILE
        if tokenizer_json.is_file():
            backend = _load_tokenizer_json(tokenizer_json)
        elif vocab_path.is_file() and merges_path.is_file():
            backend = build_qwen2_bpe(vocab_path, merges_path)
        elif vocab_path.is_file() or merges_path.is_file():
            present, missing = (
                (vocab_path, merges_path) if vocab_path.is_file() else (merges_path, vocab_path)
            )
            raise FileNotFoundError(
                f"{folder} has {present.name} but not {missing.name}: a byte-level BPE tokenizer "
                f"needs both (or a {TOKENIZER_JSON_FILE}); copy {missing.name} from the original "
                "checkpoint."
            )
        else:
            return None
        config = TokenizerConfig.from_folder(folder)
        _register_added_tokens(backend, config.added_tokens, folder)
        return cls(backend, config)

    # ----- text <-> ids -----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, special-token strings in it included as their single ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes one string, got {type(text).__name__}.")
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (a list, or any 1-D sequence of ints such as a tensor row).

        Ids outside the tokenizer's vocabulary (a model's padded embedding rows, e.g. Dream's
        151667..152063) have no text and are left out, as Hugging Face does.
        """
        id_list = [int(token_id) for token_id in ids]
        negative = [token_id for token_id in id_list if token_id < 0]
        if negative:
            raise ValueError(f"token ids must be >= 0, found {negative[:5]}.")
        return self.backend.decode(id_list, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of one token string (a vocabulary entry, not text), or None if unknown."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of one id, or None if the id is outside the vocabulary."""
        return self.backend.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added tokens included (may be < the model's)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    # ----- special tokens ---------------------------------------------------------------------

    @property
    def special_tokens(self) -> dict[str, str]:
        """Named special-token strings of the config files, e.g. {'eos_token': '<|endoftext|>'}."""
        return dict(self.config.special_tokens)

    def _named_token_id(self, name: str) -> int | None:
        token = self.config.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    def _first_known_id(self, tokens: Sequence[str]) -> int | None:
        for token in tokens:
            token_id = self.backend.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    @property
    def bos_token_id(self) -> int | None:
        return self._named_token_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._named_token_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._named_token_id("pad_token")

    @property
    def mask_token_id(self) -> int | None:
        """The config's `mask_token`, else the first known of `<|mdm_mask|>` / `<|mask|>`."""
        named = self._named_token_id("mask_token")
        return named if named is not None else self._first_known_id(MASK_TOKENS)

    @property
    def eot_token_id(self) -> int | None:
        """End of a chat turn: `<|eot_id|>` (LLaDA) or `<|im_end|>` (Dream), when present."""
        return self._first_known_id(END_OF_TURN_TOKENS)

    # ----- chat -------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return self.config.chat_template is not None

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text for `messages` ([{'role': 'user', 'content': '...'}, ...]).

        Encode the result with `encode`: the template already wrote any BOS token.
        """
        if self.config.chat_template is None:
            raise ValueError(
                "this tokenizer has no chat template (no 'chat_template' in tokenizer_config.json "
                "and no chat_template.jinja); pass a plain text prompt instead, or use the "
                "tokenizer files of an instruct model."
            )
        return render_chat_template(
            self.config.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            **self.config.special_tokens,
        )

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, eos_token_id={self.eos_token_id}, "
            f"mask_token_id={self.mask_token_id}, chat_template={self.has_chat_template})"
        )


def _load_tokenizer_json(path: Path) -> BackendTokenizer:
    try:
        return BackendTokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for every parse failure
        raise ValueError(
            f"{path} could not be read as a tokenizers file ({error}); restore it from the "
            "original checkpoint."
        ) from error


def _register_added_tokens(
    backend: BackendTokenizer, specs: Sequence[AddedTokenSpec], folder: Path
) -> None:
    """Add each token of `added_tokens_decoder` and check it lands on its declared id.

    `tokenizers` gives a new token the next free id, so the ids only match when the table
    continues the vocabulary without gaps (Dream: vocab 0..151642, added 151643..151666); a
    token already in the vocabulary keeps its id and is only marked to be matched whole.
    """
    for spec in specs:
        token = AddedToken(
            spec.content,
            single_word=spec.single_word,
            lstrip=spec.lstrip,
            rstrip=spec.rstrip,
            normalized=spec.normalized,
            special=spec.special,
        )
        if spec.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        actual_id = backend.token_to_id(spec.content)
        if actual_id != spec.token_id:
            raise ValueError(
                f"{folder}: the added-token table (tokenizer_config.json / added_tokens.json) "
                f"declares {spec.content!r} as id {spec.token_id}, but the vocabulary files give "
                f"it id {actual_id}; the config and the vocabulary come from different tokenizers."
            )
