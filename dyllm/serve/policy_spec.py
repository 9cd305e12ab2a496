"""The caching policy a request runs with, by registered name, checked before it is queued.

A request names a policy the way the command line does (`"dyllm"`, `"dyllm:tau=0.995"`) and may
add `policy_args` as a JSON object; without either it gets the server's (`dyllm serve --policy`).
`PolicySpec` holds the name and the parameters read through the registry
(`dyllm.policies.registry`): an unknown policy or parameter, or a value of the wrong type, is a
ValueError of one line naming the valid ones, which the app answers with a 400.

A policy object keeps per-generation state, so the worker builds a fresh one for each batch
(`build`). Requests whose specs are equal (`key`) may share a batch. A builder that calibrates on
the prompts (`adaptive:target_fraction=...`) makes a policy that depends on the batch, so such
requests run alone (`runs_alone`). A parameter typed as a path is refused in a request: requests
never name files on the server.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyllm.policies import SaliencyPolicy
from dyllm.policies.arguments import parse_policy_text
from dyllm.policies.registry import BuildContext, RegisteredPolicy, registered_policy


@dataclass(frozen=True)
class PolicySpec:
    """A registered policy's name and its checked parameters (values read from text)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    runs_alone: bool = False
    """The builder reads the prompts (it calibrates on them): no batch-mates."""

    @property
    def key(self) -> tuple[Any, ...]:
        """Hashable identity: equal keys build equal policies."""
        return (
            self.name,
            tuple(sorted((name, repr(value)) for name, value in self.params.items())),
        )

    @property
    def label(self) -> str:
        """`name` or `name:key=value,...`, for logs and metric labels."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))

    def build(
        self,
        family: str,
        model: Any = None,
        prompts: Sequence[Sequence[int]] | None = None,
        generation_options: Mapping[str, Any] | None = None,
    ) -> SaliencyPolicy:
        """A fresh policy; a calibrating builder gets the model, the batch's prompts and options."""
        context = BuildContext(
            family=family, model=model, prompts=prompts, generation_options=generation_options
        )
        try:
            return registered_policy(self.name).build(dict(self.params), context)
        except TypeError as error:
            raise ValueError(f"the {self.name} policy refused its parameters: {error}") from None


def parse_policy_spec(
    text: str,
    assignments: Sequence[str] = (),
    json_args: Mapping[str, Any] | None = None,
    *,
    family: str,
    from_request: bool,
) -> PolicySpec:
    """`NAME[:KEY=VALUE,...]`, `--policy-arg` items and a request's `policy_args` -> a spec.

    The policy is built once here (unless it calibrates on prompts) so that the constructor's
    own checks (a tau outside (0, 1], ...) fail now, not inside the worker.
    """
    name, texts = parse_policy_text(text, assignments)
    for key, value in (json_args or {}).items():
        if key in texts:
            raise ValueError(f"policy parameter {key} is given twice ({texts[key]!r}, {value!r})")
        texts[key] = _as_text(key, value)
    entry = registered_policy(name)
    if from_request:
        _refuse_paths(entry, texts)
    params = entry.arguments(texts)
    spec = PolicySpec(name, params, runs_alone="prompts" in entry.context_names)
    if not spec.runs_alone and "model" not in entry.context_names:
        spec.build(family)
    return spec


def with_arguments(spec: PolicySpec, json_args: Mapping[str, Any], *, family: str) -> PolicySpec:
    """The server's policy with a request's `policy_args` laid over its parameters."""
    entry = registered_policy(spec.name)
    texts = {key: _as_text(key, value) for key, value in json_args.items()}
    _refuse_paths(entry, texts)
    params = {**spec.params, **entry.arguments(texts)}
    merged = PolicySpec(spec.name, params, spec.runs_alone)
    if not merged.runs_alone and "model" not in entry.context_names:
        merged.build(family)
    return merged


def _as_text(key: str, value: Any) -> str:
    """A JSON value as the command line's text, so the registry reads it through the type hint."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, list) and all(
        isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
    ):
        return ":".join(_as_text(key, item) for item in value)
    raise ValueError(
        f"policy parameter {key} must be a number, true/false, text or a list of numbers; "
        f"got {value!r}"
    )


def _refuse_paths(entry: RegisteredPolicy, texts: Mapping[str, str]) -> None:
    for parameter in entry.parameters:
        if parameter.name in texts and _mentions_path(parameter.hint):
            raise ValueError(
                f"the {entry.name} policy's {parameter.name} names a file, which a request may "
                "not do; set it when starting the server (dyllm serve --policy)"
            )


def _mentions_path(hint: Any) -> bool:
    if hint is Path:
        return True
    return any(_mentions_path(arg) for arg in typing.get_args(hint))
