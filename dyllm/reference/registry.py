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
    "llada-long": "LLaDA layout, trained on the long-answer suite (128-token chained answers)",
}

BUILTIN_SUITES: dict[str, str] = {"llada-ref": "short", "dream-ref": "short", "llada-long": "long"}
"""The task suite each built-in model was trained on: `short` is `dyllm.reference.tasks` (24-token
answers), `long` is `dyllm.reference.long_tasks` (128-token answers)."""

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
    """A built-in name becomes its shipped folder; anything else is returned as a path (an
    empty name is refused: it would silently mean the current folder)."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_MODELS:
        return builtin_model_path(name_or_path)
    if isinstance(name_or_path, str) and not name_or_path.strip():
        raise ValueError(
            f"the model name is empty; give a checkpoint folder or a built-in name "
            f"({', '.join(BUILTIN_MODELS)})"
        )
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(
            f"a model is a checkpoint folder or a built-in name, got {type(name_or_path).__name__}"
        )
    return Path(name_or_path)


def builtin_model_name(folder: Path) -> str | None:
    """The built-in name of a checkpoint folder that is one of the shipped models, else None."""
    try:
        resolved = folder.resolve()
    except OSError:
        return None
    for name in BUILTIN_MODELS:
        if resolved == (CHECKPOINTS_DIR / name).resolve():
            return name
    return None
