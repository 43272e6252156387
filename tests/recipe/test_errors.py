"""What a person sees for bad recipe input, through the real `lifecycle validate`: one `FILE:LINE: field: message`
line per problem (or `FILE: override 'k=v': field: message`), exit code 2, no traceback."""

from __future__ import annotations

import enum
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError
from ruamel.yaml.comments import CommentedMap

from lifecycle.errors import RecipeError
from lifecycle.recipe.load import apply_overrides, load_model_file, load_recipe
from lifecycle.recipe.schema import RegisterSpec

GOOD = """\
name: t
model:
  base: builtin:tiny-llama
data:
  train: train.jsonl
  format: messages
method:
  kind: lora
training:
  max_steps: 10
  gradient_checkpointing: auto
launch:
  kind: local
quantize:
  scheme: FP8_DYNAMIC
gate:
  tasks:
    - task: x
      rules:
        - kind: improve
          metric: acc
register:
  model_name: t
  alias: candidate
"""
ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "billing"}]}\n'

# name: (text replaced in GOOD, replacement, the line `lifecycle validate` must print after "FILE:")
CASES = {
    "format-typo": (
        "format: messages",
        "format: mesages",
        "6: data.format: unknown value 'mesages'; did you mean 'messages'? "
        "(allowed: 'messages', 'prompt_completion', 'text')",
    ),
    "format-unknown": (
        "format: messages",
        "format: chatml",
        "6: data.format: unknown value 'chatml' (allowed: 'messages', 'prompt_completion', 'text')",
    ),
    "launch-kind": (
        "kind: local",
        "kind: lokal",
        "13: launch.kind: unknown kind 'lokal'; did you mean 'local'? (allowed: 'local', 'sky')",
    ),
    "method-kind": (
        "kind: lora",
        "kind: lorra",
        "8: method.kind: unknown kind 'lorra'; did you mean 'lora'? (allowed: 'lora', 'qlora', 'full')",
    ),
    "rule-kind-in-a-list": (
        "kind: improve",
        "kind: improv",
        "20: gate.tasks.0.rules.0.kind: unknown kind 'improv'; did you mean 'improve'? "
        "(allowed: 'improve', 'no_regress')",
    ),
    "literal-or-bool": (
        "gradient_checkpointing: auto",
        "gradient_checkpointing: atuo",
        "11: training.gradient_checkpointing: unknown value 'atuo'; did you mean 'auto'? (allowed: 'auto', or a bool)",
    ),
    "empty-model-name": ("model_name: t", 'model_name: ""', "23: register.model_name: must not be empty"),
    "model-name-slash": (
        "model_name: t",
        "model_name: team/t",
        "23: register.model_name: 'team/t': MLflow model names cannot contain '/'",
    ),
    "model-name-spaces": (
        "model_name: t",
        'model_name: " t"',
        "23: register.model_name: ' t' has spaces at the start or end; remove them",
    ),
    "reserved-alias": (
        "alias: candidate",
        "alias: latest",
        "24: register.alias: 'latest': MLflow reserves 'latest' and version aliases like 'v3'",
    ),
    "alias-characters": (
        "alias: candidate",
        "alias: 'release 1'",
        "24: register.alias: 'release 1': MLflow aliases may only contain letters, digits, '_' and '-'",
    ),
}
# the allowed schemes change as the platform learns new ones; the suggestion must not
SCHEME_CASES = {"scheme-typo": "FP8_DYNAMC", "scheme-case": "fp8_dynamic"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("recipes")
    (folder / "train.jsonl").write_text(ROW)
    (folder / "good.yaml").write_text(GOOD)
    return folder


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    cli = [sys.executable, "-m", "lifecycle.cli.app", "validate", *args]
    return subprocess.run(cli, capture_output=True, text=True)


@pytest.fixture(scope="module")
def validated(folder: Path) -> subprocess.CompletedProcess[str]:
    """One `lifecycle validate` over every bad file (it reports each file's problems and goes on)."""
    for name, (old, new, _) in CASES.items():
        assert GOOD.count(old) == 1, old
        (folder / f"{name}.yaml").write_text(GOOD.replace(old, new))
    for name, scheme in SCHEME_CASES.items():
        (folder / f"{name}.yaml").write_text(GOOD.replace("scheme: FP8_DYNAMIC", f"scheme: {scheme}"))
    return validate(*(str(folder / f"{name}.yaml") for name in [*CASES, *SCHEME_CASES]))


def lines_of(done: subprocess.CompletedProcess[str], path: Path) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith(f"{path}:")]


def test_validate_exits_2_without_a_traceback(validated: subprocess.CompletedProcess[str]) -> None:
    assert validated.returncode == 2, validated.stderr
    assert "Traceback" not in validated.stdout + validated.stderr


@pytest.mark.parametrize("name", CASES)
def test_each_bad_value_is_one_exact_line(
    folder: Path, validated: subprocess.CompletedProcess[str], name: str
) -> None:
    path = folder / f"{name}.yaml"
    assert lines_of(validated, path) == [f"{path}:{CASES[name][2]}"], validated.stderr


@pytest.mark.parametrize("name", SCHEME_CASES)
def test_a_scheme_typo_echoes_the_value_and_suggests_the_nearest(
    folder: Path, validated: subprocess.CompletedProcess[str], name: str
) -> None:
    path = folder / f"{name}.yaml"
    [line] = lines_of(validated, path)
    expected = (
        f"{path}:15: quantize.scheme: unknown value {SCHEME_CASES[name]!r}; did you mean 'FP8_DYNAMIC'? ("
    )
    assert line.startswith(expected), line
    assert "allowed: " in line and "'FP8_DYNAMIC', " in line and "'none'" in line


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Palette(BaseModel):
    model_config = ConfigDict(extra="forbid")
    colour: Colour
    size: Literal[4, 8] = 4


def test_enum_and_non_string_literal_errors_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "palette.yaml"
    path.write_text("colour: gren\nsize: 6\n")
    with pytest.raises(RecipeError) as info:
        load_model_file(Palette, path)
    assert info.value.problems == [
        f"{path}:1: colour: unknown value 'gren'; did you mean 'green'? (allowed: 'red', 'green')",
        f"{path}:2: size: unknown value 6 (allowed: 4, 8)",
    ]


# ----------------------------------------------------------------------------------------------- register names


def mlflow_refuses_name(name: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.store.model_registry.file_store import _validate_model_name  # the stricter store ('%')

    try:
        _validate_model_name(name)
    except MlflowException:
        return True
    return False


def mlflow_refuses_alias(alias: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except MlflowException:
        return True
    return False


NAMES = ["t", "Team Model_1.v2", "a-b", "", "   ", "a/b", "a:b", "50%", ".", "..", "..a", "a..b", "ünï"]
ALIASES = ["candidate", "prod-2", "release_1", "", "a b", "a.b", "latest", "LATEST", "v3", "V12", "v", "ünï"]


@pytest.mark.parametrize("name", NAMES)
def test_model_names_follow_mlflow(name: str) -> None:
    assert _refused(RegisterSpec, model_name=name) == mlflow_refuses_name(name)


@pytest.mark.parametrize("alias", ALIASES)
def test_aliases_follow_mlflow(alias: str) -> None:
    assert _refused(RegisterSpec, model_name="t", alias=alias) == mlflow_refuses_alias(alias)


@pytest.mark.parametrize("field", ["model_name", "alias"])
def test_names_with_spaces_at_the_ends_are_refused(field: str) -> None:
    # MLflow would accept ' t' and register a name nobody can type back; we refuse it
    assert _refused(RegisterSpec, **{"model_name": "t", field: " t"})
    assert _refused(RegisterSpec, **{"model_name": "t", field: "t\t"})


def _refused(model: type[BaseModel], **values: str) -> bool:
    try:
        model.model_validate(values)
    except ValidationError:
        return True
    return False


# ----------------------------------------------------------------------------------------------- overrides


def test_bracket_and_dotted_overrides_reach_list_items(folder: Path) -> None:
    loaded = load_recipe(
        folder / "good.yaml",
        ["gate.tasks[0].task=y", "gate.tasks[0].rules[0].metric=f1", "gate.tasks.0.limit=5"],
    )
    [task] = loaded.recipe.gate.tasks
    assert (task.task, task.rules[0].metric, task.limit) == ("y", "f1", 5)


def test_nested_indexes() -> None:
    data = CommentedMap({"a": CommentedMap({"b": [[1, 2], [3]]})})
    origins: dict[tuple[str, ...], str] = {}
    assert apply_overrides(data, ["a.b[0][1]=9", "a.b.1.0=8"], origins) == []
    assert data["a"]["b"] == [[1, 9], [8]]
    assert origins == {("a", "b", "0", "1"): "a.b[0][1]=9", ("a", "b", "1", "0"): "a.b.1.0=8"}


OVERRIDE_PROBLEMS = {
    "gate.tasks[3].task=y": "gate.tasks[3]: index out of range (the list has 1 item)",
    "gate.tasks.3.task=y": "gate.tasks[3]: index out of range (the list has 1 item)",
    "method[0]=x": "method[0]: method is a mapping, not a list",
    "method.0=x": "method[0]: method is a mapping, not a list",
    "model.base[0]=x": "model.base[0]: model.base is the value 'builtin:tiny-llama', not a list",
    "gate.tasks[0].rules[0][1]=3": "gate.tasks[0].rules[0][1]: gate.tasks[0].rules[0] is a mapping, not a list",
    "quantize.ignore[0]=x": "quantize.ignore[0]: quantize.ignore is not in the recipe, so it has no items "
    "(set the whole list)",
    "gate.tasks[0.task=y": "'gate.tasks[0.task' is not a key path like 'a.b.c' or 'a.b[0].c'",
    "gate.tasks[0].limit=-1": "gate.tasks.0.limit: Input should be greater than 0",
    "gate.tasks[0].rules[0].kind=improv": "gate.tasks.0.rules.0.kind: unknown kind 'improv'; did you mean "
    "'improve'? (allowed: 'improve', 'no_regress')",
}


def test_override_problems_name_the_override_and_change_nothing(folder: Path) -> None:
    path = folder / "good.yaml"
    done = validate(str(path), *(arg for item in OVERRIDE_PROBLEMS for arg in ("--set", item)))
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    # one line each: a refused override leaves no half-made keys behind for validation to trip over
    assert sorted(done.stderr.splitlines()) == sorted(
        f"{path}: override {item!r}: {problem}" for item, problem in OVERRIDE_PROBLEMS.items()
    )
