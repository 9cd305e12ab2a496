"""The open policy registry: a user's policy in their own file runs from `dyllm generate` and
`dyllm bench` without any edit to dyllm, and every policy's options come from its signature.

The user's policy is the one docs/custom-policy.md shows: the test reads that page's code block
and writes it to a file, so the page and what runs cannot drift apart.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import pytest

from dyllm.cli import main
from dyllm.policies import (
    CosineThreshold,
    Dense,
    LayerAdaptive,
    SaliencyPolicy,
    TopK,
    build_policy,
    load_plugins,
    policy_names,
    register_policy,
    unregister_policy,
)
from dyllm.policies.arguments import format_value, parse_policy_text, parse_value
from dyllm.policies.plugins import PLUGINS_VARIABLE, plugin_sources
from dyllm.policies.registry import BuildContext, make_policy, registered_policy
from tests.checkpoints import write_tiny_checkpoint, write_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
DOCS_PAGE = REPO / "docs" / "custom-policy.md"
USER_POLICY = "still-masked"
FAST = ["--gen-length", "8", "--steps", "8", "--no-progress"]


def docs_policy_code() -> str:
    """The one Python block of docs/custom-policy.md that registers the example policy."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS_PAGE.read_text(), flags=re.DOTALL)
    (code,) = [block for block in blocks if f'@register_policy("{USER_POLICY}")' in block]
    return code


@pytest.fixture(scope="module")
def user_policy_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("user") / "still_masked.py"
    path.write_text(docs_policy_code())
    yield path
    unregister_policy(USER_POLICY)


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llada")
    write_tiny_checkpoint("llada", folder)
    write_tiny_tokenizer(folder)
    return folder


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------ the user's policy, end to end


def test_the_docs_policy_runs_from_dyllm_generate(
    capsys, user_policy_file: Path, llada_dir: Path
) -> None:
    argv = ["generate", "--model", str(llada_dir), "--plugin", str(user_policy_file)]
    argv += ["--policy", USER_POLICY, "--policy-arg", "warmup_steps=3", "--json", "add 12 ="]
    code, out, err = _run(capsys, *argv, *FAST)
    assert code == 0, err
    extra = json.loads(out)["stats"]["extra"]
    assert extra["policy"]["name"] == USER_POLICY
    assert extra["dense_steps"] == 3 and extra["sparse_steps"] == 5  # warmup_steps=3 arrived
    assert 0 < extra["computed_token_ratio"] < 1


def test_the_docs_policy_runs_from_dyllm_bench(
    capsys, tmp_path: Path, user_policy_file: Path
) -> None:
    argv = ["bench", "--plugin", str(user_policy_file), "--method", f"{USER_POLICY}:warmup_steps=3"]
    argv += ["--tokens-per-step", "1", "--threshold", "--tasks", "mul3", "--problems-per-task", "2"]
    argv += [
        "--batch-size",
        "2",
        "--repeats",
        "1",
        "--no-plot",
        "--quiet",
        "--out-dir",
        str(tmp_path),
    ]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    report = json.loads((tmp_path / "llada-ref-cpu.json").read_text())
    dense, mine = report["runs"]
    assert dense["method"]["label"] == "dense"
    assert mine["method"] == {
        "label": f"{USER_POLICY} warmup_steps=3",
        "policy": USER_POLICY,
        "params": {"warmup_steps": 3},
    }
    assert mine["policy"]["name"] == USER_POLICY
    assert mine["sparse_steps"] > 0 and 0 < mine["computed_token_ratio"] < 1
    assert f"{USER_POLICY} warmup_steps=3" in out


def test_the_docs_python_usage_runs(capsys, monkeypatch, user_policy_file: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS_PAGE.read_text(), flags=re.DOTALL)
    (usage,) = [block for block in blocks if "from still_masked import StillMasked" in block]
    monkeypatch.syspath_prepend(str(user_policy_file.parent))
    monkeypatch.delitem(sys.modules, "still_masked", raising=False)
    exec(compile(usage, str(DOCS_PAGE), "exec"), {})
    assert 0 < float(capsys.readouterr().out) < 1


def test_plugins_from_the_environment_are_listed_with_their_parameters(
    capsys, monkeypatch, user_policy_file: Path
) -> None:
    monkeypatch.setenv(PLUGINS_VARIABLE, str(user_policy_file))
    code, out, _ = _run(capsys, "policies")
    assert code == 0
    assert f"{USER_POLICY}: Dense warm-up steps" in out
    assert "    warmup_steps: int = 2" in out
    assert "    tau: float = 0.99 (llada 0.99, dream 0.995)" in out


def test_loading_the_same_plugin_again_is_harmless(user_policy_file: Path) -> None:
    load_plugins([str(user_policy_file), str(user_policy_file)])
    assert policy_names().count(USER_POLICY) == 1
    assert build_policy(USER_POLICY, {"warmup_steps": "5"}).warmup_steps == 5


def test_plugin_sources_read_the_environment_first() -> None:
    environ = {PLUGINS_VARIABLE: "a.py:my_pkg.policies::"}
    assert plugin_sources(["b.py"], environ) == ["a.py", "my_pkg.policies", "b.py"]


# ------------------------------------------------------------------ plugins that go wrong

BROKEN_PLUGIN = """\
from dyllm.policies import Dense, register_policy

register_policy("half-done", Dense)


def helper():
    return undefined_thing


helper()
"""


def test_a_plugin_that_fails_to_import_gets_one_line_and_registers_nothing(
    capsys, tmp_path: Path
) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN_PLUGIN)
    code, _, err = _run(capsys, "policies", "--plugin", str(plugin))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "broken.py failed to import: NameError: name 'undefined_thing' is not defined" in err
    assert "(broken.py, line 7)" in err
    assert "half-done" not in policy_names()


def test_a_plugin_may_not_take_a_builtin_name(tmp_path: Path) -> None:
    plugin = tmp_path / "thief.py"
    plugin.write_text("from dyllm.policies import Dense, register_policy\n")
    plugin.write_text(plugin.read_text() + "register_policy('dyllm', Dense)\n")
    with pytest.raises(ValueError, match="policy name 'dyllm' is already registered by "):
        load_plugins([str(plugin)])
    assert isinstance(build_policy("dyllm"), CosineThreshold)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{tmp}/nowhere.py", "plugin file {tmp}/nowhere.py does not exist"),
        ("no_such_plugin_module", "plugin module 'no_such_plugin_module' not found"),
        ("{tmp}/syntax.py", "SyntaxError"),
    ],
)
def test_plugin_errors_name_the_plugin(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "syntax.py").write_text("def (:\n")
    with pytest.raises(ValueError, match=re.escape(message.format(tmp=tmp_path))):
        load_plugins([source.format(tmp=tmp_path)])


def test_a_plugin_may_be_a_module_name(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "my_team_policies.py").write_text(
        "from dyllm.policies import Dense, register_policy\nregister_policy('team-dense', Dense)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        load_plugins(["my_team_policies"])
        assert isinstance(build_policy("team-dense"), Dense)
    finally:
        unregister_policy("team-dense")


# ------------------------------------------------------------------ registering


class Knobs(SaliencyPolicy):
    """A policy with one parameter of each kind the command line reads."""

    name = "knobs"

    def __init__(
        self,
        rows: int,
        share: float = 0.5,
        exact: bool = False,
        mode: Literal["fast", "slow"] = "fast",
        size: int | float = 1,
        taus: Sequence[float] | None = None,
        label: str = "x",
        untyped=3,
    ) -> None:
        self.values = dict(
            rows=rows,
            share=share,
            exact=exact,
            mode=mode,
            size=size,
            taus=taus,
            label=label,
            untyped=untyped,
        )

    def plan(self, step):
        raise NotImplementedError

    def select(self, layer, signals):
        raise NotImplementedError


@pytest.fixture
def knobs() -> Iterator[str]:
    register_policy("knobs", Knobs)
    yield "knobs"
    unregister_policy("knobs")


def test_text_is_read_through_the_constructor_type_hints(knobs: str) -> None:
    text = "knobs:rows=3,share=0.25,exact=yes,mode=slow,size=0.5,taus=0.9,0.95,label=hi,untyped=7"
    name, params = parse_policy_text(text)
    policy = build_policy(name, params)
    assert policy.values == {
        "rows": 3,
        "share": 0.25,
        "exact": True,
        "mode": "slow",
        "size": 0.5,
        "taus": [0.9, 0.95],
        "label": "hi",
        "untyped": 7,
    }
    assert build_policy(knobs, {"rows": "1", "size": "4", "taus": "none"}).values["size"] == 4
    assert build_policy(knobs, {"rows": 1, "taus": (0.5,)}).values["taus"] == (0.5,)  # values pass


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"rows": "2.5"}, "the knobs policy's rows must be an integer, got '2.5'"),
        ({"rows": "1", "share": "half"}, "share must be a number, got 'half'"),
        ({"rows": "1", "exact": "maybe"}, "exact must be true or false, got 'maybe'"),
        ({"rows": "1", "mode": "medium"}, "mode must be one of 'fast', 'slow', got 'medium'"),
        ({"rows": "1", "size": "big"}, "size must be a number, got 'big'"),
        ({"rows": "1", "taus": "0.9:x"}, "taus must be numbers separated by ':' or ',' or none"),
        ({"share": "0.5"}, "the knobs policy needs rows (an integer), e.g. rows=VALUE"),
        (
            {"rows": "1", "speed": "9"},
            "the knobs policy takes no speed; its parameters: rows: int,",
        ),
        ({"rows": "1", "family": "llada"}, "takes no family"),
    ],
)
def test_bad_parameters_name_the_parameter_and_what_it_takes(
    knobs: str, params: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_policy(knobs, params)


def test_a_taken_name_is_refused_and_the_same_class_defined_again_replaces_it(knobs: str) -> None:
    with pytest.raises(ValueError, match=r"'knobs' is already registered by .*Knobs; register"):
        register_policy("knobs", Dense)
    # what a module reloaded or a notebook cell run twice makes: the same class, a new object
    again = type("Knobs", (Knobs,), {"__module__": Knobs.__module__, "__qualname__": "Knobs"})
    register_policy("knobs", again)
    assert registered_policy("knobs").builder is again


def test_family_defaults_must_name_a_parameter() -> None:
    with pytest.raises(ValueError, match=r"names taus, which .*TopK does not take"):
        register_policy("topk-by-family", TopK, defaults_by_family={"taus": {"llada": 0.5}})
    assert "topk-by-family" not in policy_names()


@pytest.mark.parametrize("name", ["", "a b", "a:b", "a,b", "a=b", "-a"])
def test_names_must_be_writable_on_the_command_line(name: str) -> None:
    with pytest.raises(ValueError, match="must start with a letter or digit"):
        register_policy(name, Dense)


def test_a_builder_function_gets_the_context_it_asks_for() -> None:
    seen = {}

    @register_policy("context-probe")
    def probe(family: str, model: object, prompts: list, generation_options: dict, k: int = 2):
        """A probe."""
        seen.update(family=family, model=model, prompts=prompts, options=generation_options)
        return TopK(k=k)

    try:
        context = BuildContext("dream", model="M", prompts=["p"], generation_options={"steps": 4})
        policy = build_policy("context-probe", {"k": "3"}, context)
        assert policy.k == 3
        assert seen == {"family": "dream", "model": "M", "prompts": ["p"], "options": {"steps": 4}}
        assert [p.name for p in registered_policy("context-probe").parameters] == ["k"]
        with pytest.raises(ValueError, match="built from the run's family, model and prompts"):
            build_policy("context-probe", {}, BuildContext(generation_options={}))
    finally:
        unregister_policy("context-probe")


def test_a_builder_must_return_a_policy() -> None:
    register_policy("not-a-policy", lambda: "text")
    try:
        with pytest.raises(ValueError, match="returned a str, not a SaliencyPolicy"):
            build_policy("not-a-policy")
    finally:
        unregister_policy("not-a-policy")


# ------------------------------------------------------------------ the built-ins


def test_dyllm_takes_the_family_tau_unless_one_is_given() -> None:
    assert make_policy("dyllm", "llada").tau == 0.99
    assert make_policy("dyllm", "dream").tau == 0.995
    assert make_policy("dyllm", "dream", tau=0.9).tau == 0.9
    assert make_policy("dyllm").tau == 0.99  # no family: the constructor's default


def test_every_builtin_is_registered_by_its_name() -> None:
    for name in ("dense", "dyllm", "topk", "adaptive", "fast-prefix", "fast-dual", "dllm-cache"):
        assert name in policy_names()
    for name in ("dense", "dyllm", "fast-prefix", "fast-dual", "dllm-cache"):
        assert build_policy(name).describe()["name"] == name
    assert build_policy("topk", {"k": "4"}).k == 4
    assert isinstance(build_policy("adaptive", {"budgets": "0.5:0.25"}), LayerAdaptive)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "the adaptive policy needs one of target_fraction"),
        ({"target_fraction": "0.2", "taus": "0.9"}, "got target_fraction and taus"),
        ({"target_fraction": "0.2"}, "calibrates on a model and prompts"),
    ],
)
def test_adaptive_needs_exactly_one_way_to_set_its_thresholds(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_policy("adaptive", params)


def test_values_format_as_text_that_reads_back() -> None:
    for value, hint in ((0.25, float), (3, int), (True, bool), ([0.9, 0.95], Sequence[float])):
        assert parse_value(format_value(value), hint) == value


def test_policy_text_takes_lists_with_colons_or_commas_and_refuses_the_malformed() -> None:
    assert parse_policy_text("adaptive:taus=0.9,0.95,warmup_steps=2", ["attention=frozen"]) == (
        "adaptive",
        {"taus": "0.9,0.95", "warmup_steps": "2", "attention": "frozen"},
    )
    assert parse_policy_text(" dense ") == ("dense", {})
    for bad in (":tau=1", "dyllm:tau", "dyllm:=1", "dyllm:tau="):
        with pytest.raises(ValueError):
            parse_policy_text(bad)


def test_the_command_line_names_no_policy_and_no_policy_parameter() -> None:
    """Policies and their options live in the registry alone (dense is the flag's default;
    dyllm is also the program's name)."""
    names = set(policy_names()) - {"dense", "dyllm"}
    params = {p.name for n in policy_names() for p in registered_policy(n).parameters}
    tree = ast.parse((REPO / "dyllm" / "cli.py").read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert not strings & (names | params)
