"""Built-in model names: the reference checkpoints shipped inside the package.

`resolve_model_path("llada-ref")` is the folder of the LLaDA-layout reference model; any other
string is taken as a path to a checkpoint folder, so the CLI's `--model` accepts either.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"

BUILTIN_MODELS: dict[str, str] = {
    "llada-ref": "LLaDA layout (multi-head attention, no biases), trained on the task suite",
    "dream-ref": "Dream layout (grouped-query attention, q/k/v biases, logit shift), same tasks",
}

DEFAULT_MODEL = "llada-ref"


def builtin_model_path(name: str) -> Path:
    """Folder of the built-in model `name`; FileNotFoundError if the package lacks its files."""
    if name not in BUILTIN_MODELS:
        raise ValueError(
            f"{name!r} is not a built-in model; built-ins: {', '.join(BUILTIN_MODELS)}"
        )
    folder = CHECKPOINTS_DIR / name
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in model {name!r} is missing from {folder}; reinstall dyllm or retrain it "
            "with `python -m dyllm.reference.train` (see docs/reference-models.md)"
        )
    return folder


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A built-in name becomes its shipped folder; anything else is returned as a path."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_MODELS:
        return builtin_model_path(name_or_path)
    return Path(name_or_path)
