"""Policy parameters written as text, read through the type hints of the policy's constructor.

The command line (`--policy NAME:KEY=VALUE,...`, `--policy-arg KEY=VALUE`) and the benchmark
(`--method NAME:KEY=VALUE,...`) give every parameter as text. `parse_value` turns it into what
the parameter's type hint asks for, so no policy carries parsing code of its own:

| type hint | text |
|---|---|
| `int`, `float`, `str` | `4`, `0.99`, `low` |
| `bool` | `true` or `false` (also `yes`/`no`, `on`/`off`, `1`/`0`) |
| `Literal["approximate", "frozen"]` | one of the choices |
| `X | None` | X, or `none` |
| `int | float` (any union) | the first member that reads it: bool, int, float, ..., text last |
| `Sequence[float]`, `list[int]`, `tuple[float, ...]` | items separated by `:` or `,` (`0.9:0.95`) |
| `pathlib.Path`, an `Enum` | a path; a member's name or value |
| none | the default's type; without a default, a number or true/false when it reads as one |

In `NAME:KEY=VALUE,...` commas separate parameters; an item without `=` continues the previous
value, so `adaptive:taus=0.9,0.95,warmup_steps=2` reads taus as two numbers (colons,
`taus=0.9:0.95`, say the same with no second reading).
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

LIST_SEPARATORS = (":", ",")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
EMPTY = inspect.Parameter.empty


def parse_policy_text(text: str, assignments: Sequence[str] = ()) -> tuple[str, dict[str, str]]:
    """`NAME[:KEY=VALUE,...]` and further `KEY=VALUE` items -> (name, {key: value text})."""
    name, _, rest = text.strip().partition(":")
    if not name.strip():
        raise ValueError(
            f"{text!r} names no policy; write NAME[:KEY=VALUE,...], e.g. dyllm:tau=0.99"
        )
    items: list[list[str]] = []
    for part in (part.strip() for part in rest.split(",")):
        if "=" in part or not items:
            items.append([part])
        elif part:
            items[-1].append(part)
    pairs = [_assignment(",".join(item), text) for item in items if item != [""]]
    pairs += [_assignment(item, item) for item in assignments]
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise ValueError(f"policy parameter {key} is given twice ({params[key]!r}, {value!r})")
        params[key] = value
    return name.strip(), params


def _assignment(item: str, where: str) -> tuple[str, str]:
    key, equals, value = item.partition("=")
    if not equals or not key.strip() or not value.strip():
        raise ValueError(
            f"{where!r}: policy parameters are KEY=VALUE (separated by commas after NAME:), "
            "e.g. dyllm:tau=0.99"
        )
    return key.strip(), value.strip()


def parse_value(text: str, hint: Any, default: Any = EMPTY) -> Any:
    """`text` read as `hint` asks; ValueError (message: `describe_hint(hint)`) when it cannot."""
    if hint is EMPTY or hint is Any or hint is object:
        if default is not EMPTY and default is not None and type(default) in _SCALARS:
            return parse_value(text, type(default))
        return _guess(text)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() == "none":
            return None
        for member in sorted((a for a in args if a is not type(None)), key=_union_rank):
            try:
                return parse_value(text, member)
            except ValueError:
                continue
        raise ValueError(describe_hint(hint))
    if origin is Literal:
        for choice in args:
            if text == str(choice) or (isinstance(choice, bool) and _bool_or_none(text) is choice):
                return choice
        raise ValueError(describe_hint(hint))
    if _is_sequence(hint):
        return _parse_list(text, hint)
    reader = _SCALARS.get(hint)
    if reader is not None:
        return reader(text)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        for member in hint:
            if text in (member.name, str(member.value)):
                return member
        raise ValueError(describe_hint(hint))
    if hint is Path:
        return Path(text)
    raise TypeError(
        f"a {hint_label(hint)} cannot be written as text; give the parameter a default, or use "
        "int, float, bool, str, a Literal, or a list of those"
    )


def _read_int(text: str) -> int:
    return int(text)


def _read_float(text: str) -> float:
    return float(text)


def _read_bool(text: str) -> bool:
    value = _bool_or_none(text)
    if value is None:
        raise ValueError("true or false")
    return value


def _read_str(text: str) -> str:
    return text


_SCALARS: dict[Any, Any] = {int: _read_int, float: _read_float, bool: _read_bool, str: _read_str}
_RANKS = {bool: 0, int: 1, float: 2, str: 9}


def _union_rank(member: Any) -> int:
    """Try bool before int before float (so `int | float` reads "4" as 4), text last."""
    if typing.get_origin(member) is Literal:
        return 3
    return _RANKS.get(member, 4 if _is_sequence(member) else 5)


def _bool_or_none(text: str) -> bool | None:
    word = text.strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def _guess(text: str) -> Any:
    for reader in (_read_int, _read_float, _read_bool):
        try:
            return reader(text)
        except ValueError:
            continue
    return text


def _is_sequence(hint: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    return isinstance(origin, type) and origin in (list, tuple, Sequence, typing.Sequence)


def _parse_list(text: str, hint: Any) -> list[Any] | tuple[Any, ...]:
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    for separator in LIST_SEPARATORS:
        text = text.replace(separator, LIST_SEPARATORS[0])
    items = [item.strip() for item in text.split(LIST_SEPARATORS[0])]
    if any(not item for item in items):
        raise ValueError(describe_hint(hint))
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(items) != len(args):
            raise ValueError(describe_hint(hint))
        return tuple(parse_value(item, arg) for item, arg in zip(items, args, strict=True))
    item_hint = args[0] if args else EMPTY
    values = [parse_value(item, item_hint) for item in items]
    return tuple(values) if origin is tuple else values


_PHRASES = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
_PLURALS = {int: "integers", float: "numbers", bool: "true/false values", str: "words"}


def describe_hint(hint: Any) -> str:
    """What a value of `hint` looks like as text: "a number", "one of 'approximate', 'frozen'"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if int in members and float in members:
            members.remove(int)
        phrases = [describe_hint(member) for member in members]
        if type(None) in args:
            phrases.append("none")
        return " or ".join(phrases)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if _is_sequence(hint):
        item = args[0] if args else EMPTY
        return f"{_PLURALS.get(item, 'values')} separated by ':' or ','"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(member.name for member in hint)
    if hint is Path:
        return "a path"
    return _PHRASES.get(hint, "a value")


def hint_label(hint: Any) -> str:
    """A type hint as a reader writes it: `int | float`, `Sequence[float] | None`."""
    if hint is EMPTY:
        return "any"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else hint_label(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(choice) for choice in args)
    if origin is not None and args:
        inner = ", ".join("..." if a is Ellipsis else hint_label(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return str(hint).replace("typing.", "")


def format_value(value: Any) -> str:
    """A parameter's value as text that `parse_value` reads back: 0.99, true, 0.9:0.95."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return LIST_SEPARATORS[0].join(format_value(item) for item in value)
    if isinstance(value, enum.Enum):
        return value.name
    if value is None:
        return "none"
    return str(value)
