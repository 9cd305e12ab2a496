"""Prompts read from a file for `dyllm generate --prompts-file`: one per line, or JSON lines.

- `FILE.jsonl` (or `.ndjson`): each non-blank line is one JSON value: a string (a text prompt),
  a list of token ids, a list of messages (`{"role": ..., "content": ...}`, a conversation for a
  chat model), or an object holding one of these under `"prompt"` or `"messages"`.
- any other name: each non-blank line is one text prompt (trailing newline and carriage return
  removed, nothing else); with `--token-ids` each line is comma-separated ids (`5,17,300`).
- `-`: standard input, read the same way as a plain file.

Files are UTF-8. Every error names the file and the line. This module imports nothing of dyllm.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


def read_prompts_file(path: Path, *, token_ids: bool = False) -> list[Any]:
    """The prompts of `path` (`-`: standard input), in order; ValueError naming the line at
    fault, FileNotFoundError when the file does not exist."""
    name = "standard input" if str(path) == "-" else str(path)
    text = _read_text(path, name)
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), 1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{name} holds no prompt (every line is blank)")
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        return [_json_prompt(line, f"{name}, line {number}") for number, line in lines]
    if not token_ids:
        return [line for _, line in lines]
    prompts = []
    for number, line in lines:
        try:
            prompts.append([int(token) for token in line.split(",")])
        except ValueError:
            raise ValueError(
                f"{name}, line {number}: --token-ids lines look like 12,7,301, got {line[:40]!r}"
            ) from None
    return prompts


def _read_text(path: Path, name: str) -> str:
    if str(path) == "-":
        stream = getattr(sys.stdin, "buffer", None)
        data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
    else:
        if not path.exists():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        if path.is_dir():
            raise ValueError(f"prompts file {path} is a folder; give a file")
        data = path.read_bytes()  # a regular file, or a pipe such as <(command)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{name}, line {line}: byte {data[error.start]:#04x} is not UTF-8; convert the file "
            "to UTF-8"
        ) from None


def _json_prompt(line: str, where: str) -> Any:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not JSON ({error.msg}, column {error.colno})") from None
    if isinstance(value, dict):
        keys = [key for key in ("prompt", "messages") if key in value]
        if len(keys) != 1:
            raise ValueError(
                f"{where}: an object line holds its prompt under 'prompt' or 'messages' (one "
                f"of them), found keys {sorted(value)}"
            )
        value = value[keys[0]]
    if isinstance(value, (str, list)):
        return value
    raise ValueError(
        f"{where}: a prompt is a string, a list of token ids or a list of messages, got "
        f"{type(value).__name__}"
    )
