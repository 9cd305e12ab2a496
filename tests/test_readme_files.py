"""The README's file tree stays true: every path it lists exists, and every module of the
package is listed (itself or through a folder entry such as `dyllm/bench/`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listed_paths() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Files\n\n```\n(.*?)```", readme, flags=re.DOTALL)
    assert block, "README.md has no '## Files' code block"
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip()]


def test_every_listed_path_exists():
    missing = [p for p in listed_paths() if not list(ROOT.glob(p.rstrip("/")))]
    assert not missing, f"README lists paths that do not exist: {missing}"


def test_every_module_is_listed():
    entries = listed_paths()
    folders = [entry for entry in entries if entry.endswith("/")]
    unlisted = []
    for module in sorted((ROOT / "dyllm").rglob("*.py")):
        relative = module.relative_to(ROOT).as_posix()
        if module.name == "__init__.py" and relative != "dyllm/__init__.py":
            continue
        if relative in entries or any(relative.startswith(folder) for folder in folders):
            continue
        unlisted.append(relative)
    assert not unlisted, f"README's file tree lacks: {unlisted}"
