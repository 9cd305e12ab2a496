"""Chat templates rendered with jinja2 the way Hugging Face transformers renders them.

A model's `tokenizer_config.json` carries its chat format as a jinja template; a prompt only
matches what the model was trained on when the template is rendered with the same jinja
settings and the same variables as transformers' `apply_chat_template`. Those are:

- an `ImmutableSandboxedEnvironment` (templates from the Hub are untrusted code) with
  `trim_blocks=True`, `lstrip_blocks=True` and the `loopcontrols` extension (`break`/`continue`);
- a `tojson` filter that is plain `json.dumps(..., ensure_ascii=False)` (jinja's own escapes
  `<`, `>` and `&` for HTML, which would change tool schemas);
- globals `raise_exception(message)` and `strftime_now(format)`;
- variables `messages`, `add_generation_prompt`, `tools=None`, `documents=None` and the named
  special-token strings (`bos_token`, `eos_token`, ...);
- message keys whose value is None are dropped first (transformers does this because templates
  test `message.tool_calls` with `is defined`).

Tests compare the output with transformers' own rendering of the real LLaDA and Dream templates.

A template is code from whoever published the checkpoint, so beyond the sandbox (no attribute
escapes, no mutation) its work and size are bounded, each bound failing with a
`ChatTemplateError` that names it:

- work: at most `MAX_STEPS` executed template lines (loop iterations count) and `MAX_SECONDS`
  of wall time, counted by a trace function on the template's own frames;
- size: no string or list it builds (operators `+ * % ** ~`, filters, method calls) may exceed
  `MAX_CHARS` items, they may build `MAX_BUILT_CHARS` in all, numbers stay below `MAX_INT_BITS`
  bits, and the output stops at `MAX_CHARS` characters; operations whose result size follows
  from their arguments (`'a' * n`, `center(n)`, `replace`, `join`, format widths) are refused
  before they run;
- `{% include %}`, `{% import %}` and `{% extends %}` are refused when the template is compiled:
  a chat template has no other templates to load.
"""

from __future__ import annotations

import contextvars
import functools
import json
import operator
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from types import FrameType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_STEPS = 1_000_000
"""Template lines one render may execute (a loop's every iteration counts)."""
MAX_SECONDS = 10.0
"""Wall time one render may take."""
MAX_CHARS = 4_000_000
"""Longest string or list a template may build, and the longest prompt it may render (no model
here reads more than 131,072 tokens)."""
MAX_BUILT_CHARS = 32_000_000
"""Characters (or list items) all the strings and lists one render builds may hold together."""
MAX_INT_BITS = 100_000
"""Largest integer a template may compute, in bits."""
_LARGE_WIDTH = re.compile(r"\d{7,}")
"""A number of seven digits or more in a format string: a width or precision of >= 1,000,000."""


class ChatTemplateError(ValueError):
    """A chat template failed to compile or to render, or rejected the conversation."""


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    **special_tokens: Any,
) -> str:
    """Render `messages` (dicts with at least `role` and `content`) through `template`.

    `special_tokens` become template variables, normally the strings of `bos_token`,
    `eos_token`, `pad_token`, ...; `tools` or `documents` may be passed the same way.
    """
    if isinstance(messages, (str, Mapping)) or len(messages) == 0:
        raise ValueError(
            "messages should be a non-empty list of dicts such as "
            "[{'role': 'user', 'content': 'Hello'}]."
        )
    cleaned_messages = []
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(
                f"message {position} should be a dict with 'role' and 'content', "
                f"found {type(message).__name__}: {message!r}."
            )
        cleaned_messages.append({key: value for key, value in message.items() if value is not None})

    compiled = _compile(template)
    variables: dict[str, Any] = {"tools": None, "documents": None, **special_tokens}
    budget = _Budget()
    token = _BUDGET.set(budget)
    previous_trace = sys.gettrace()
    sys.settrace(budget.trace_calls)
    try:
        pieces: list[str] = []
        length = 0
        for piece in compiled.generate(
            messages=cleaned_messages, add_generation_prompt=add_generation_prompt, **variables
        ):
            length += len(piece)
            if length > MAX_CHARS:
                raise ChatTemplateError(
                    f"the chat template's output passed {MAX_CHARS:,} characters, more than any "
                    "prompt a model here can read; the template (or a message) is too large"
                )
            pieces.append(piece)
        return "".join(pieces)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as error:
        raise ChatTemplateError(
            f"the chat template failed while rendering this conversation: {error}. "
            "Check that every message has the keys the template reads ('role', 'content')."
        ) from error
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as error:
        raise ChatTemplateError(
            f"the chat template failed while rendering this conversation: "
            f"{type(error).__name__}: {error}"
        ) from error
    except (RecursionError, MemoryError) as error:
        resource = "stack" if isinstance(error, RecursionError) else "memory"
        raise ChatTemplateError(
            f"the chat template ran out of {resource} while rendering (a runaway recursion or "
            "an oversized value)"
        ) from error
    finally:
        sys.settrace(previous_trace)
        _BUDGET.reset(token)


class _Budget:
    """The work and size one render may still spend; its trace function counts template lines."""

    def __init__(self) -> None:
        self.steps_left = MAX_STEPS
        self.deadline = time.monotonic() + MAX_SECONDS
        self.built = 0

    def trace_calls(self, frame: FrameType, event: str, arg: Any) -> Any:
        """Global trace function: trace the lines of template code only."""
        return self.trace_lines if frame.f_code.co_filename == "<template>" else None

    def trace_lines(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.steps_left -= 1
            if self.steps_left <= 0:
                raise ChatTemplateError(
                    f"the chat template ran more than {MAX_STEPS:,} steps (lines and loop "
                    "iterations) without finishing; it loops too long to be a chat format"
                )
            if self.steps_left % 4096 == 0 and time.monotonic() > self.deadline:
                raise ChatTemplateError(
                    f"the chat template ran for more than {MAX_SECONDS:g} s without finishing"
                )
        return self.trace_lines

    def spend(self, size: int) -> None:
        self.built += size
        if self.built > MAX_BUILT_CHARS:
            raise ChatTemplateError(
                f"the chat template built more than {MAX_BUILT_CHARS:,} characters of strings "
                "and lists while rendering; it is not a chat format"
            )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "chat_template_budget", default=None
)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


def _check_built(what: str, value: Any) -> Any:
    """Count a value the template built against the render's budget; refuse an oversized one."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise ChatTemplateError(f"{what} made a number of more than {MAX_INT_BITS:,} bits")
    size = _size(value)
    if size > MAX_CHARS:
        raise ChatTemplateError(
            f"{what} built a value of {size:,} characters or items (at most {MAX_CHARS:,})"
        )
    budget = _BUDGET.get()
    if budget is not None and size:
        budget.spend(size)
    return value


def _refuse_large(what: str, expected: int) -> None:
    if expected > MAX_CHARS:
        raise ChatTemplateError(
            f"{what} would build at least {expected:,} characters or items (at most {MAX_CHARS:,})"
        )


def _check_arguments(what: str, arguments: Sequence[Any], keywords: Mapping[str, Any]) -> None:
    """Refuse integer arguments (widths, counts) and format strings that would build more than
    the limit before the call allocates it."""
    for value in (*arguments, *keywords.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise ChatTemplateError(
                f"{what} was given {value:,}, more than {MAX_CHARS:,}; refused before it builds "
                "a value that large"
            )


def _check_format_string(what: str, text: Any) -> None:
    if isinstance(text, str) and _LARGE_WIDTH.search(text):
        raise ChatTemplateError(f"{what} has a width or precision of a million or more")


def _expected_size(name: str, subject: Any, arguments: Sequence[Any]) -> int:
    """What `subject.replace(old, new)` or `separator.join(items)` will hold at least (counted
    until it passes the limit), 0 when unknown."""
    if name == "replace" and isinstance(subject, str) and len(arguments) >= 2:
        old, new = str(arguments[0]), str(arguments[1])
        return len(subject) + subject.count(old) * max(len(new) - len(old), 0)
    if name == "join" and arguments and isinstance(arguments[0], (list, tuple)):
        separator = len(subject) if isinstance(subject, str) else 0
        total = 0
        for item in arguments[0]:
            total += (_size(item) or 1) + separator
            if total > MAX_CHARS:
                break
        return total
    return 0


def _binary(symbol: str, function: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """An operator with its result size checked first where it follows from the operands."""

    def guarded(left: Any, right: Any) -> Any:
        what = f"the operator {symbol}"
        if symbol == "*":
            for sized, count in ((left, right), (right, left)):
                if _size(sized) and isinstance(count, int):
                    _refuse_large(what, _size(sized) * count)
            integers = all(isinstance(v, int) for v in (left, right))
            if integers and abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
                raise ChatTemplateError(f"{what} would make a number too large to hold")
        elif symbol == "**" and all(isinstance(v, int) for v in (left, right)):
            if right > 0 and abs(left).bit_length() * right > MAX_INT_BITS:
                raise ChatTemplateError(f"{what} would make a number too large to hold")
        elif symbol == "+" and _size(left) and _size(right):
            _refuse_large(what, _size(left) + _size(right))
        elif symbol == "%" and isinstance(left, str):
            _check_format_string(f"a format string ({what})", left)
            _check_arguments(what, right if isinstance(right, tuple) else (right,), {})
        return _check_built(what, function(left, right))

    return guarded


def _guard_callable(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter with its arguments and result checked (`pass_context` and the like kept)."""
    skip = 1 + (getattr(function, "jinja_pass_arg", None) is not None)

    @functools.wraps(function)
    def guarded(*arguments: Any, **keywords: Any) -> Any:
        what = f"the filter {name!r}"
        value, parameters = arguments[skip - 1 : skip], arguments[skip:]
        _check_arguments(what, parameters, keywords)
        if name == "format" and value:
            _check_format_string(what, value[0])
        if name in ("replace", "join") and value:
            subject, rest = value[0], list(parameters)
            if name == "join":  # join(items, separator): the subject is the separator
                subject, rest = (rest[0] if rest else ""), [value[0]]
            _refuse_large(what, _expected_size(name, subject, rest))
        return _check_built(what, function(*arguments, **keywords))

    return guarded


def _guarded_join(pieces: Any) -> str:
    """`~` concatenation (jinja's `str_join`) with its result counted."""
    return _check_built("the operator ~", "".join(map(str, pieces)))


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with every operator, filter and call that can build a large value checked."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.binop_table = {
            **self.binop_table,
            "*": _binary("*", operator.mul),
            "**": _binary("**", operator.pow),
            "+": _binary("+", operator.add),
            "%": _binary("%", operator.mod),
        }

    def guard_filters(self) -> None:
        self.filters = {name: _guard_callable(name, f) for name, f in self.filters.items()}

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(__obj, "__name__", type(__obj).__name__)
        what = f"the call {name}()"
        _check_arguments(what, args, kwargs)
        _refuse_large(what, _expected_size(name, getattr(__obj, "__self__", None), args))
        return _check_built(what, super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format_string("a format string (str.format)", getattr(value, "__self__", ""))
        return wrapped


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    """One compiled template per template string (compiling the Dream template takes ~5 ms)."""
    environment = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.guard_filters()
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    try:
        loads = next(
            environment.parse(template).find_all(
                (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
            ),
            None,
        )
        if loads is not None:
            tag = {"FromImport": "import"}.get(type(loads).__name__, type(loads).__name__.lower())
            raise ChatTemplateError(
                f"the chat template uses {{% {tag} %}} (line {loads.lineno}); a chat template "
                "must stand alone (there are no other templates to load): inline what it loads "
                "into the 'chat_template' entry of tokenizer_config.json"
            )
        compiled = environment.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(
            f"the chat template is not valid jinja (line {error.lineno}: {error.message}); "
            "fix the 'chat_template' entry of tokenizer_config.json."
        ) from error
    namespace = compiled.root_render_func.__globals__
    namespace["str_join"] = _guarded_join
    return compiled


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template rejected the conversation: {message}")


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)
