"""The package layering docs/architecture.md promises, read from every module's imports.

Each package of dyllm may import only the packages below it (table `ALLOWED`); an entry may name
one module of a package (policies see only the generation package's step type). Imports inside
functions count too: a dependency hidden in a function body is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "dyllm"

APPLICATIONS = (
    "dyllm",
    "dyllm.__main__",
    "dyllm.api",
    "dyllm.cli",
    "dyllm.bench",
    "dyllm.eval",
    "dyllm.reference",
    "dyllm.serve",
)
"""The top: the public API, the command line (and `python -m dyllm`), the benchmark, the lm-eval
adapter, the reference models' tooling and the HTTP server may use anything."""

ALLOWED: dict[str, tuple[str, ...]] = {
    "dyllm.json_files": (),
    "dyllm.prompt_files": (),
    "dyllm.kernels": (),
    "dyllm.tokenizer": ("dyllm.json_files",),
    "dyllm.models": ("dyllm.kernels", "dyllm.tokenizer", "dyllm.json_files"),
    "dyllm.generation": ("dyllm.kernels",),
    "dyllm.policies": ("dyllm.kernels", "dyllm.generation.step"),
    "dyllm.cache": ("dyllm.models",),
    "dyllm.engine": (
        "dyllm.cache",
        "dyllm.policies",
        "dyllm.generation",
        "dyllm.models",
        "dyllm.kernels",
        "dyllm.tokenizer",
        "dyllm.json_files",
    ),
    "dyllm.distributed": (
        "dyllm.engine",
        "dyllm.cache",
        "dyllm.policies",
        "dyllm.generation",
        "dyllm.models",
        "dyllm.kernels",
        "dyllm.tokenizer",
        "dyllm.json_files",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """`dyllm.<first component>`, or `dyllm` for the package's own __init__."""
    return ".".join(module.split(".")[:2])


def dyllm_imports(path: Path) -> set[str]:
    """Every absolute `dyllm...` module a file imports, at any depth of its syntax tree."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; dyllm uses absolute imports only")
    return {name for name in found if name == "dyllm" or name.startswith("dyllm.")}


def allows(allowed: tuple[str, ...], imported: str) -> bool:
    return any(imported == entry or imported.startswith(entry + ".") for entry in allowed)


MODULES = sorted(PACKAGE_ROOT.rglob("*.py"))


def test_every_package_is_in_the_table():
    packages = {package_of(module_name(path)) for path in MODULES}
    unknown = packages - set(ALLOWED) - set(APPLICATIONS)
    assert not unknown, f"add these packages to the layering table: {sorted(unknown)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path):
    module = module_name(path)
    package = package_of(module)
    if package in APPLICATIONS:
        return
    allowed = (*ALLOWED[package], package)
    wrong = sorted(name for name in dyllm_imports(path) if not allows(allowed, name))
    assert not wrong, f"{module} imports {wrong}; {package} may import only {list(allowed)}"


def test_the_table_has_no_cycle():
    def reaches(start: str, target: str, seen: frozenset[str] = frozenset()) -> bool:
        for entry in ALLOWED.get(start, ()):
            below = package_of(entry)
            if below == target or (below not in seen and reaches(below, target, seen | {below})):
                return True
        return False

    assert not [package for package in ALLOWED if reaches(package, package)]


def test_the_checker_catches_an_upward_import(tmp_path: Path):
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from dyllm.engine import generate\n")
    assert dyllm_imports(module) == {"dyllm.engine"}
    assert not allows(ALLOWED["dyllm.models"], "dyllm.engine")
    assert allows(ALLOWED["dyllm.policies"], "dyllm.generation.step")
    assert not allows(ALLOWED["dyllm.policies"], "dyllm.generation.run")
