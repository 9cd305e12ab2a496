"""The policy registry: the one place a policy becomes nameable.

`register_policy(name, builder)`, or `@register_policy(name)` above a class or function, makes a
policy available as `dyllm generate --policy NAME`, `dyllm bench --method NAME` and
`build_policy(NAME, ...)`. The built-ins at the bottom of this file register the same way a
user's module does (loaded with `--plugin FILE.py` or `DYLLM_PLUGINS`, see
`dyllm.policies.plugins`); nothing else in dyllm lists a policy or its parameters.

A builder is a `SaliencyPolicy` subclass or a function that returns one. Its signature is the
policy's parameters: text from the command line is read through the type hints
(`dyllm.policies.arguments`), and an unknown or missing parameter gets a ValueError that names
the valid ones. Four parameter names are filled by the caller instead (`BuildContext`): `family`
(the model family), `model`, `prompts` (the prompts being generated, or the benchmark's
calibration prompts) and `generation_options` (the run's sampler options), for builders that
calibrate on the model. `adaptive` is such a builder; `dyllm.engine.calibration` registers it,
because policies/ may not import the engine. `defaults_by_family` gives a parameter a default per
model family (DyLLM's tau: LLaDA 0.99, Dream 0.995).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from dyllm.policies.arguments import EMPTY, describe_hint, format_value, hint_label, parse_value
from dyllm.policies.base import SaliencyPolicy
from dyllm.policies.cosine import DEFAULT_TAU, CosineThreshold
from dyllm.policies.dense import Dense
from dyllm.policies.dllm_cache import DLLMCache
from dyllm.policies.fast_dllm import DualCache, PrefixCache
from dyllm.policies.topk import TopK

CONTEXT_NAMES = ("family", "model", "prompts", "generation_options")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

Builder = TypeVar("Builder", bound=Callable[..., SaliencyPolicy])


@dataclass(frozen=True)
class BuildContext:
    """What the caller knows that a builder may ask for by parameter name (never user-set)."""

    family: str | None = None
    """The model family ("llada", "dream"): selects `defaults_by_family`."""
    model: Any = None
    """The loaded `DiffusionTransformer` (typed loosely: policies/ sits below models/)."""
    prompts: Any = None
    """Prompts to calibrate on: the ones being generated, or the benchmark's calibration set."""
    generation_options: Mapping[str, Any] | None = None
    """The sampler options of the run (gen_length, steps, block_length, ...)."""


@dataclass(frozen=True)
class PolicyParameter:
    """One parameter a user may set: its name, type hint and default."""

    name: str
    hint: Any
    default: Any
    """`inspect.Parameter.empty` when the parameter is required."""
    family_defaults: Mapping[str, Any] = field(default_factory=dict)

    def read(self, value: Any) -> Any:
        """Text read through the type hint; any other value is passed on as it is."""
        if not isinstance(value, str) or self.hint is str:
            return value
        try:
            return parse_value(value, self.hint, self.default)
        except ValueError:
            expected = describe_hint(self.hint) if self.hint is not EMPTY else "a value"
            raise ValueError(f"{self.name} must be {expected}, got {value!r}") from None
        except TypeError as error:
            raise ValueError(f"{self.name} cannot be given as text: {error}") from None

    def describe(self) -> str:
        """`tau: float = 0.99 (llada 0.99, dream 0.995)`."""
        text = self.name if self.hint is EMPTY else f"{self.name}: {hint_label(self.hint)}"
        if self.default is not EMPTY:
            text += f" = {format_value(self.default)}"
        if self.family_defaults:
            by_family = ", ".join(f"{f} {format_value(v)}" for f, v in self.family_defaults.items())
            text += f" ({by_family})"
        return text


@dataclass(frozen=True)
class RegisteredPolicy:
    """A name, the builder behind it, and the parameters read from the builder's signature."""

    name: str
    builder: Callable[..., SaliencyPolicy]
    defaults_by_family: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @cached_property
    def _signature(self) -> tuple[tuple[PolicyParameter, ...], dict[str, bool]]:
        """(user parameters, {context name: required}) from the builder's signature."""
        target = self.builder.__init__ if isinstance(self.builder, type) else self.builder
        try:
            hints = typing.get_type_hints(target) if target is not object.__init__ else {}
        except Exception as error:
            raise ValueError(
                f"cannot read the type hints of the {self.name} policy's builder "
                f"{_qualified_name(self.builder)}: {type(error).__name__}: {error}"
            ) from None
        parameters, context = [], {}
        for parameter in inspect.signature(self.builder).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if parameter.name in CONTEXT_NAMES:
                context[parameter.name] = parameter.default is EMPTY
                continue
            hint = hints.get(parameter.name, EMPTY)
            family = dict(self.defaults_by_family.get(parameter.name, {}))
            parameters.append(PolicyParameter(parameter.name, hint, parameter.default, family))
        return tuple(parameters), context

    @property
    def parameters(self) -> tuple[PolicyParameter, ...]:
        """The parameters a user sets (`--policy-arg`, `NAME:KEY=VALUE`), in signature order."""
        return self._signature[0]

    @property
    def context_names(self) -> tuple[str, ...]:
        """The `BuildContext` fields the builder asks for."""
        return tuple(self._signature[1])

    @property
    def summary(self) -> str:
        """The first paragraph of the builder's docstring, on one line."""
        doc = inspect.cleandoc(self.builder.__doc__ or "")  # its own, not a base class's
        return " ".join(doc.split("\n\n")[0].split())

    def arguments(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` checked against the signature and read through the type hints."""
        known = {parameter.name: parameter for parameter in self.parameters}
        unknown = [key for key in params if key not in known]
        if unknown:
            raise ValueError(f"the {self.name} policy takes no {', '.join(unknown)}{self._valid()}")
        try:
            return {key: known[key].read(value) for key, value in params.items()}
        except ValueError as error:
            raise ValueError(f"the {self.name} policy's {error}") from None

    def build(
        self, params: Mapping[str, Any] | None = None, context: BuildContext | None = None
    ) -> SaliencyPolicy:
        """The policy with `params` (text or values), defaults, and the context it asks for."""
        context = context or BuildContext()
        values = self.arguments(params or {})
        for parameter in self.parameters:
            if parameter.name in values:
                continue
            if context.family in parameter.family_defaults:
                values[parameter.name] = parameter.family_defaults[context.family]
            elif parameter.default is EMPTY:
                raise ValueError(
                    f"the {self.name} policy needs {parameter.name} "
                    f"({describe_hint(parameter.hint)}), e.g. {parameter.name}=VALUE{self._valid()}"
                )
        for name in self.context_names:
            if getattr(context, name) is not None:
                values[name] = getattr(context, name)
        missing = [
            name for name, required in self._signature[1].items() if required and name not in values
        ]
        if missing:
            listed = ", ".join(missing[:-1]) + " and " + missing[-1] if missing[1:] else missing[0]
            raise ValueError(
                f"the {self.name} policy is built from the run's {listed}; pass them in a "
                "BuildContext (dyllm generate and dyllm bench do)"
            )
        policy = self.builder(**values)
        if not isinstance(policy, SaliencyPolicy):
            raise ValueError(
                f"the builder registered as {self.name!r} ({_qualified_name(self.builder)}) "
                f"returned a {type(policy).__name__}, not a SaliencyPolicy"
            )
        return policy

    def _valid(self) -> str:
        """`; its parameters: ...`, to end an error message."""
        if not self.parameters:
            return ": it has no parameters"
        return "; its parameters: " + ", ".join(p.describe() for p in self.parameters)


_REGISTRY: dict[str, RegisteredPolicy] = {}


@typing.overload
def register_policy(
    name: str, builder: None = None, *, defaults_by_family: Mapping[str, Mapping[str, Any]] = ...
) -> Callable[[Builder], Builder]: ...


@typing.overload
def register_policy(
    name: str, builder: Builder, *, defaults_by_family: Mapping[str, Mapping[str, Any]] = ...
) -> Builder: ...


def register_policy(
    name: str,
    builder: Builder | None = None,
    *,
    defaults_by_family: Mapping[str, Mapping[str, Any]] | None = None,
) -> Builder | Callable[[Builder], Builder]:
    """Make `builder` (a SaliencyPolicy subclass or a function returning one) nameable as `name`.

    Used as `register_policy("mine", Mine)` or as a decorator, `@register_policy("mine")`.
    defaults_by_family: {parameter: {family: default}}, applied when the caller knows the family
    and the user gave no value (e.g. `{"tau": {"llada": 0.99, "dream": 0.995}}`).
    Registering a taken name is a ValueError, unless it is the same builder defined again (a
    module reloaded, a notebook cell run twice), which replaces the old one.
    """

    def register(target: Builder) -> Builder:
        if not callable(target):
            raise ValueError(f"register_policy({name!r}, ...) needs a class or function")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"policy name {name!r} must start with a letter or digit and hold only letters, "
                "digits and . _ + - (it is written as NAME:KEY=VALUE on the command line)"
            )
        stray = set(defaults_by_family or {}) - set(inspect.signature(target).parameters)
        if stray:
            raise ValueError(
                f"defaults_by_family for the {name} policy names {', '.join(sorted(stray))}, "
                f"which {_qualified_name(target)} does not take"
            )
        taken = _REGISTRY.get(name)
        if taken is not None and _identity(taken.builder) != _identity(target):
            raise ValueError(
                f"policy name {name!r} is already registered by "
                f"{_qualified_name(taken.builder)}; register {_qualified_name(target)} under "
                f"another name (or unregister_policy({name!r}) first)"
            )
        _REGISTRY[name] = RegisteredPolicy(name, target, dict(defaults_by_family or {}))
        return target

    return register if builder is None else register(builder)


def unregister_policy(name: str) -> None:
    """Forget `name` (no error when it is not registered)."""
    _REGISTRY.pop(name, None)


def policy_names() -> list[str]:
    """Every registered name, in the order of registration."""
    return list(_REGISTRY)


def registered_policy(name: str) -> RegisteredPolicy:
    """The registration behind `name`; a ValueError lists the registered names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r}; registered: {', '.join(_REGISTRY)} (a policy of your own: "
            "load its module with --plugin FILE.py or DYLLM_PLUGINS)"
        ) from None


def build_policy(
    name: str, params: Mapping[str, Any] | None = None, context: BuildContext | None = None
) -> SaliencyPolicy:
    """The policy registered as `name`, with `params` (text is read through the type hints)."""
    return registered_policy(name).build(params, context)


def make_policy(name: str, family: str | None = None, **params: Any) -> SaliencyPolicy:
    """`build_policy` for Python callers: parameters given as None take their defaults."""
    given = {key: value for key, value in params.items() if value is not None}
    return build_policy(name, given, BuildContext(family=family))


def _qualified_name(target: object) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"


def _identity(target: object) -> tuple[str, str]:
    """What makes two builders "the same one defined again": source file and qualified name."""
    try:
        source = inspect.getfile(target)  # type: ignore[arg-type]
    except TypeError:
        source = getattr(target, "__module__", "?")
    return source, getattr(target, "__qualname__", repr(target))


# The built-ins. `adaptive` (LayerAdaptive, given per-layer taus or budgets, or calibrated on the
# model to a target fraction) is registered by dyllm.engine.calibration.
register_policy("dense", Dense)
register_policy("dyllm", CosineThreshold, defaults_by_family={"tau": DEFAULT_TAU})
register_policy("topk", TopK)
register_policy("fast-prefix", PrefixCache)
register_policy("fast-dual", DualCache)
register_policy("dllm-cache", DLLMCache)
