"""Recipe validation: every malformed case names the file, the line, the field, and exits 2 from the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.errors import RecipeError
from lifecycle.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))

GOOD = """\
name: t
model:
  base: builtin:tiny-llama
data:
  train: train.jsonl
  eval: eval.jsonl
  format: messages
method:
  kind: lora
  r: 8
training:
  max_steps: 10
  learning_rate: 1.0e-3
register:
  model_name: t
"""
ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "billing"}]}\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "train.jsonl").write_text(ROW)
    (tmp_path / "eval.jsonl").write_text(ROW)
    return tmp_path


def problems_of(folder: Path, text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    path = folder / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.problems


def test_good_recipe_loads(folder: Path) -> None:
    (folder / "r.yaml").write_text(GOOD)
    loaded = load_recipe(folder / "r.yaml")
    assert loaded.recipe.method.kind == "lora"
    assert loaded.recipe.data.train == (folder / "train.jsonl").resolve()
    assert loaded.recipe.registry.model_name == "t"
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        ("learning_rate: 1.0e-3", "learning_rate: -1", 13, "training.learning_rate", "greater than 0"),
        ("learning_rate: 1.0e-3", "learning_rate: fast", 13, "training.learning_rate", "number"),
        ("kind: lora", "kind: lorra", 9, "method.kind", "'lora', 'qlora', 'full'"),
        ("  r: 8", "  r: 8\n  alpah: 8", 11, "method.alpah", "did you mean 'alpha'"),
        ("  r: 8", "  rank: 8", 10, "method.rank", "allowed: alpha, dropout, kind, r, target_modules"),
        ("max_steps: 10", "max_step: 10", 12, "training.max_step", "did you mean 'max_steps'"),
        ("train: train.jsonl", "train: nope.jsonl", 5, "data.train", "does not exist"),
        ("format: messages", "format: chat", 7, "data.format", "'messages', 'prompt_completion', 'text'"),
        ("base: builtin:tiny-llama", "base: builtin:huge", 3, "model.base", "allowed: tiny-llama"),
        ("base: builtin:tiny-llama", "base: ./no/such/dir", 3, "model.base", "does not exist"),
        ("name: t", "name: Not A Slug", 1, "name", "pattern"),
        ("  r: 8", "  r: 8\n  dropout: 1.5", 11, "method.dropout", "less than 1"),
    ],
)
def test_each_bad_field_names_line_and_field(
    folder: Path, old: str, new: str, line: int, field: str, words: str
) -> None:
    found = problems_of(folder, GOOD.replace(old, new))
    assert len(found) == 1, found
    assert found[0].startswith(f"{folder / 'r.yaml'}:{line}: {field}: "), found[0]
    assert words in found[0]


def test_every_error_is_reported_at_once(folder: Path) -> None:
    text = GOOD.replace("learning_rate: 1.0e-3", "learning_rate: -1").replace("kind: lora", "kind: x")
    text = text.replace("train: train.jsonl", "train: missing.jsonl")
    found = problems_of(folder, text)
    assert [p.split(": ")[1] for p in found] == ["data.train", "method.kind", "training.learning_rate"]


def test_missing_required_and_exactly_one_length(folder: Path) -> None:
    text = GOOD.replace("register:\n  model_name: t\n", "").replace("  max_steps: 10\n", "")
    found = problems_of(folder, text)
    assert any(": register: required field is missing" in p for p in found)
    assert any(":11: training: set exactly one of max_steps and epochs" in p for p in found)


def test_unreadable_yaml_and_wrong_top_level(folder: Path) -> None:
    found = problems_of(folder, "name: t\nmodel: [unclosed\n")
    assert found[0].startswith(f"{folder / 'r.yaml'}:") and "invalid YAML" in found[0]
    assert "expected a mapping" in problems_of(folder, "- a\n- b\n")[0]
    assert "empty" in problems_of(folder, "")[0]
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(folder / "absent.yaml")


def test_overrides_apply_and_errors_name_the_override(folder: Path) -> None:
    (folder / "r.yaml").write_text(GOOD)
    loaded = load_recipe(folder / "r.yaml", ["training.learning_rate=5e-4", "method.r=4"])
    assert loaded.recipe.training.learning_rate == 5e-4
    assert loaded.recipe.method.r == 4  # type: ignore[union-attr]
    found = problems_of(folder, GOOD, ("training.learning_rate=-1", "oops"))
    assert any("override 'training.learning_rate=-1'" in p and "greater than 0" in p for p in found)
    assert any("expected key.path=value" in p for p in found)


def test_sky_launch_needs_accelerators(folder: Path) -> None:
    found = problems_of(folder, GOOD + "launch:\n  kind: sky\n  nodes: 0\n")
    assert any(":16: launch.accelerators: required field is missing" in p for p in found)
    assert any(":18: launch.nodes: " in p and "greater than or equal to 1" in p for p in found)


def test_qlora_on_cpu_is_refused(folder: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    found = problems_of(folder, GOOD.replace("kind: lora", "kind: qlora"))
    assert found[0].startswith(f"{folder / 'r.yaml'}:9: method.kind: ") and "CUDA" in found[0]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_validates(path: Path) -> None:
    assert path.read_text().startswith("#"), "a shipped recipe starts with a comment saying what it is for"
    load_recipe(path)


# What `validate` needs beyond the schema to say ok: a gate (nothing is registered without one), and a serving
# target whose schemes are known without probing this host (a GPU kind from the table).
RUNNABLE = """\
gate:
  tasks:
    - task: support-tickets
      rules: [{kind: improve, metric: exact_match}]
quantize:
  serve_on: H100
"""


def test_cli_validate_exit_codes(folder: Path) -> None:
    bad = folder / "bad.yaml"
    bad.write_text(GOOD.replace("learning_rate: 1.0e-3", "learning_rate: -1") + RUNNABLE)
    good = folder / "good.yaml"
    good.write_text(GOOD + RUNNABLE)
    cli = [sys.executable, "-m", "lifecycle.cli.app", "validate"]
    ok = subprocess.run([*cli, str(good)], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([*cli, str(good), str(bad)], capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 2
    assert f"{bad}:13: training.learning_rate:" in failed.stderr
    assert "Traceback" not in failed.stderr + failed.stdout
