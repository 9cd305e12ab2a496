"""Qwen2's byte-level BPE built from `vocab.json` + `merges.txt` with the `tokenizers` library.

Dream ships no `tokenizer.json`, only the GPT-2 style pair of files, and Hugging Face assembles
the tokenizer in code (its `Qwen2Tokenizer`). This module assembles the same pipeline so that the
ids equal Hugging Face's on the same files (checked against a fixture in tests/):

    NFC normaliser
    -> Split on the Qwen2 pattern (isolated: every match and every gap is its own piece)
    -> ByteLevel (bytes to the printable GPT-2 alphabet; no prefix space, no second regex)
    -> BPE with the merges in file order (rank = line number), no unknown token
    decoder: ByteLevel (back to bytes, then UTF-8); no post-processor (no BOS/EOS added).

The pattern differs from GPT-2's in two ways that change ids: digits are split one by one
(`\\p{N}` alone), and a letter run may take one leading non-letter (`[^\\r\\n\\p{L}\\p{N}]?`).
Added/special tokens are not this module's business: `tokenizer.py` adds them with their ids.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE

from dyllm.json_files import read_json

QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


def build_qwen2_bpe(vocab_path: str | Path, merges_path: str | Path) -> BackendTokenizer:
    """The Qwen2 byte-level BPE tokenizer of these two files, without added tokens."""
    vocab = read_vocab(Path(vocab_path))
    merges = read_merges(Path(merges_path))
    _check_merges_in_vocab(merges, vocab, Path(merges_path), Path(vocab_path))
    model = BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    tokenizer = BackendTokenizer(model)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def read_vocab(path: Path) -> dict[str, int]:
    """`vocab.json`: one JSON object mapping each byte-level token string to its id."""
    vocab = read_json(path)
    if not isinstance(vocab, dict) or not all(
        isinstance(token_id, int) and token_id >= 0 for token_id in vocab.values()
    ):
        raise ValueError(
            f"{path} should map token strings to non-negative integer ids; "
            "restore it from the original checkpoint."
        )
    return vocab


def read_merges(path: Path) -> list[tuple[str, str]]:
    """`merges.txt`: an optional `#version` line, then one `left right` pair per line."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}).") from error
    merges = []
    for line_number, line in enumerate(lines, start=1):
        if not line or (line_number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(
                f"{path}, line {line_number}: expected two tokens separated by one space, "
                f"found {line!r}; restore the file from the original checkpoint."
            )
        merges.append((parts[0], parts[1]))
    return merges


def _check_merges_in_vocab(
    merges: list[tuple[str, str]], vocab: dict[str, int], merges_path: Path, vocab_path: Path
) -> None:
    """Each merge's two parts and its result must be vocabulary tokens.

    `tokenizers` would otherwise fail deep in Rust (a panic for a missing result), so a pair of
    files from two different checkpoints is caught here with a message naming both.
    """
    for rank, (left, right) in enumerate(merges):
        for token in (left, right, left + right):
            if token not in vocab:
                raise ValueError(
                    f"{merges_path}: merge #{rank + 1} ({left!r} {right!r}) uses {token!r}, which "
                    f"{vocab_path} does not contain; the two files must come from the same "
                    "checkpoint."
                )
