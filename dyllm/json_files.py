"""Reading the JSON files a checkpoint folder or a run leaves behind, with one kind of error.

Config, index, tokenizer and trace files are all JSON objects written by someone else's tool; a
damaged one should fail with the file named and what to do, never with a bare decoder traceback.
This module sits below every package of dyllm (it imports none of them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESTORE = "restore it from the original checkpoint"


def read_json(path: Path, error: type[ValueError] = ValueError, advice: str = RESTORE) -> Any:
    """The JSON value in `path`; `error` naming the file and `advice` when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path} is not valid JSON ({problem}); {advice}") from problem


def read_json_object(
    path: Path, error: type[ValueError] = ValueError, advice: str = RESTORE
) -> dict[str, Any]:
    """The JSON object in `path`; `error` when the file is not JSON or holds another value."""
    data = read_json(path, error, advice)
    if not isinstance(data, dict):
        raise error(f"{path} should hold a JSON object, found {type(data).__name__}; {advice}")
    return data
