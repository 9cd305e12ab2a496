"""Plugins: a user's module that registers policies, loaded without editing dyllm.

A plugin is a Python file or an importable module that calls `register_policy` (usually as a
decorator) when imported. `dyllm generate`, `dyllm bench` and `dyllm policies` load the plugins
named by `--plugin` (repeatable) and by the `DYLLM_PLUGINS` environment variable (entries
separated by `os.pathsep`, ":" on Linux and macOS); each entry is a `.py` path or a module name.
In Python, importing the module is enough.

A file is imported under a module name made from its resolved path, so loading the same file
again re-runs it in place and its policies register again as the same ones (no "already
registered" error). A plugin that fails to import is a ValueError of one line: the plugin, the
exception and the plugin's line that raised it; whatever it registered before failing is
forgotten.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

from dyllm.policies.registry import policy_names, unregister_policy

PLUGINS_VARIABLE = "DYLLM_PLUGINS"


def plugin_sources(
    explicit: Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> list[str]:
    """The `DYLLM_PLUGINS` entries, then `explicit` (e.g. the `--plugin` flags)."""
    environ = os.environ if environ is None else environ
    listed = environ.get(PLUGINS_VARIABLE, "").split(os.pathsep)
    return [entry.strip() for entry in listed if entry.strip()] + list(explicit)


def load_plugins(sources: Iterable[str]) -> list[ModuleType]:
    """Import every plugin (a `.py` path or a module name), in order."""
    return [load_plugin(source) for source in sources]


def load_plugin(source: str) -> ModuleType:
    """Import one plugin; a ValueError names the plugin and what went wrong."""
    before = set(policy_names())
    try:
        if source.endswith(".py") or os.sep in source or "/" in source:
            return _load_file(source)
        return _load_module(source)
    except Exception:
        for name in set(policy_names()) - before:
            unregister_policy(name)
        raise


def _load_file(source: str) -> ModuleType:
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"plugin file {source} does not exist")
    if path.suffix != ".py":
        raise ValueError(f"plugin {source} is not a .py file; give a Python file or a module name")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"dyllm_plugin_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"plugin {source} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and type hints look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ValueError(f"plugin {source} failed to import: {_explain(error, path)}") from error
    return module


def _load_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name + ".").startswith(error.name + "."):
            raise ValueError(
                f"plugin module {name!r} not found; give a .py file path or a module on the "
                "Python path"
            ) from None
        raise ValueError(f"plugin {name} failed to import: {_explain(error, None)}") from error
    except Exception as error:
        raise ValueError(f"plugin {name} failed to import: {_explain(error, None)}") from error


def _explain(error: BaseException, path: Path | None) -> str:
    """`NameError: name 'x' is not defined (my_policy.py, line 12)`, on one line."""
    message = " ".join(str(error).split())
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    where = None
    if isinstance(error, SyntaxError) and error.lineno is not None:
        where = (Path(error.filename or "?").name, error.lineno)
    else:
        frames = traceback.extract_tb(error.__traceback__)
        own = [f for f in frames if path is None or Path(f.filename) == path] or frames[-1:]
        if own:
            where = (Path(own[-1].filename).name, own[-1].lineno)
    return text if where is None else f"{text} ({where[0]}, line {where[1]})"
