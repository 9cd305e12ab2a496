"""Tokenizers for LLaDA and Dream checkpoints, and their chat templates, without transformers.

`Tokenizer.from_pretrained(folder)` reads `tokenizer.json`, or Dream's `vocab.json` +
`merges.txt`, plus the special tokens and chat template of `tokenizer_config.json`; its ids and
rendered prompts equal Hugging Face's on the same files.
"""

from dyllm.tokenizer.chat_template import ChatTemplateError, render_chat_template
from dyllm.tokenizer.config_files import AddedTokenSpec, TokenizerConfig
from dyllm.tokenizer.qwen2_bpe import QWEN2_SPLIT_PATTERN, build_qwen2_bpe
from dyllm.tokenizer.tokenizer import Tokenizer

__all__ = [
    "QWEN2_SPLIT_PATTERN",
    "AddedTokenSpec",
    "ChatTemplateError",
    "Tokenizer",
    "TokenizerConfig",
    "build_qwen2_bpe",
    "render_chat_template",
]
