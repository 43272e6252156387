"""Mixing replay or general data into training: the recipe's `data.mix`, its checks, the seeded draw, and rows of
different formats tokenized exactly as trl tokenizes each on its own."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from lifecycle.errors import RecipeError
from lifecycle.recipe.load import load_recipe
from lifecycle.recipe.schema import DataSpec, MixSource
from lifecycle.train.data import Example, check_data, load_examples, load_mix, mix_rows

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "billing"}]}
RECIPE = """\
name: t
model:
  base: builtin:tiny-llama
data:
  train: train.jsonl
  format: messages
  mix:
    - path: replay/facts.jsonl
      format: prompt_completion
      weight: 0.2
    - path: text.jsonl
      format: text
      weight: 0.1
      name: prose
method:
  kind: lora
training:
  max_steps: 10
register:
  model_name: t
"""


def _write(path: Path, rows: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _write(tmp_path / "train.jsonl", [CHAT] * 4)
    _write(tmp_path / "replay" / "facts.jsonl", [{"prompt": "The sky is", "completion": " blue."}])
    _write(tmp_path / "text.jsonl", [{"text": "Some prose."}])
    return tmp_path


def _problems(folder: Path, text: str) -> list[str]:
    path = folder / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return info.value.problems


# ----------------------------------------------------------------------------------------------- recipe


def test_mix_paths_resolve_against_the_recipe(folder: Path) -> None:
    path = folder / "r.yaml"
    path.write_text(RECIPE)
    data = load_recipe(path).recipe.data
    assert [(s.path, s.format, s.weight, s.label) for s in data.mix] == [
        (folder / "replay" / "facts.jsonl", "prompt_completion", 0.2, "facts"),
        (folder / "text.jsonl", "text", 0.1, "prose"),
    ]
    assert load_recipe(path, ["data.mix=[]"]).recipe.data.mix == []


def test_bad_mix_entries_name_their_line(folder: Path) -> None:
    text = RECIPE.replace("weight: 0.2", "weight: 0.95").replace("format: text", "format: txt")
    text = text.replace("      name: prose\n", "      name: prose\n      wieght: 1\n")
    found = _problems(folder, text)
    assert found == [
        f"{folder / 'r.yaml'}:12: data.mix.1.format: unknown value 'txt'; did you mean 'text'? "
        "(allowed: 'messages', 'prompt_completion', 'text')",
        f"{folder / 'r.yaml'}:15: data.mix.1.wieght: unknown field 'wieght'; did you mean 'weight'? "
        "(allowed: format, name, path, weight)",
    ]
    # fixing those leaves the weights: 0.95 + 0.1 of the rows would leave train less than nothing
    found = _problems(folder, RECIPE.replace("weight: 0.2", "weight: 0.95"))
    assert len(found) == 1 and found[0].startswith(f"{folder / 'r.yaml'}:7: data.mix: ")
    assert "add up to 1.05" in found[0]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("weight: 0.2", "weight: 0", "data.mix.0.weight: Input should be greater than 0"),
        ("replay/facts.jsonl", "replay/nope.jsonl", "data.mix.0.path: data file "),
        ("name: prose", "name: facts", "mix source names must be unique and not 'train' or 'eval': facts"),
        ("name: prose", "name: train", "must be unique and not 'train' or 'eval': train"),
        ("name: prose", "name: Prose Text", "data.mix.1.name: String should match pattern"),
    ],
)
def test_mix_field_errors(folder: Path, old: str, new: str, expected: str) -> None:
    found = _problems(folder, RECIPE.replace(old, new))
    assert len(found) == 1 and expected in found[0], found


# ----------------------------------------------------------------------------------------------- checks


def _spec(folder: Path, **mix: tuple[str, float, str]) -> DataSpec:
    sources = [{"path": folder / p, "format": f, "weight": w, "name": n} for n, (p, w, f) in mix.items()]
    values = {"train": folder / "train.jsonl", "format": "messages", "mix": sources}
    return DataSpec.model_validate(values, context={"skip_file_checks": True})


def test_every_bad_row_of_every_mix_file_is_reported_in_its_own_format(folder: Path) -> None:
    facts = _write(folder / "facts.jsonl", [{"prompt": "a", "completion": "b"}, CHAT, "x"])
    prose = _write(folder / "prose.jsonl", [{"text": "ok"}, {"text": ""}])
    spec = _spec(folder, facts=("facts.jsonl", 0.2, "prompt_completion"), prose=("prose.jsonl", 0.1, "text"))
    expected = [
        f"{facts}:2: prompt, completion: expected two strings (format 'prompt_completion')",
        f"{facts}:3: expected a JSON object per line",
        f"{prose}:2: text: expected a non-empty string (format 'text')",
    ]
    assert check_data(spec) == expected
    with pytest.raises(RecipeError) as info:
        load_mix(spec)
    assert info.value.problems == expected  # all sources at once, before anything trains


def test_missing_and_empty_mix_files(folder: Path) -> None:
    (folder / "empty.jsonl").write_text("\n")
    spec = _spec(folder, gone=("gone.jsonl", 0.1, "text"), empty=("empty.jsonl", 0.1, "text"))
    assert check_data(spec) == [
        f"{folder / 'gone.jsonl'}: the data file does not exist",
        f"{folder / 'empty.jsonl'}:1: the data file has no rows",
    ]


# ----------------------------------------------------------------------------------------------- the draw


def _rows(prefix: str, n: int) -> list[Example]:
    return [Example(f"{prefix}{i}", {"text": f"{prefix}{i}"}, None, None, None) for i in range(n)]


def _source(name: str, weight: float) -> MixSource:
    values = {"path": Path(f"/data/{name}.jsonl"), "format": "text", "weight": weight}
    return MixSource.model_validate(values, context={"skip_file_checks": True})


def test_shares_follow_the_weights_and_are_recorded() -> None:
    train = _rows("t", 400)
    sources = [(_source("facts", 0.2), _rows("f", 108)), (_source("prose", 0.1), _rows("p", 30))]
    mixed = mix_rows(train, sources, seed=0, train_path="/data/train.jsonl")
    # 400 train rows are 70% of 571.4: round(571.4 * 0.2) = 114, round(571.4 * 0.1) = 57
    assert [(c.source, c.path, c.rows, c.drawn) for c in mixed.counts] == [
        ("train", "/data/train.jsonl", 400, 400),
        ("facts", "/data/facts.jsonl", 108, 114),
        ("prose", "/data/prose.jsonl", 30, 57),
    ]
    assert [c.weight for c in mixed.counts] == pytest.approx([0.7, 0.2, 0.1])
    by_source = Counter(e.id[0] for e in mixed.rows)
    assert by_source == {"t": 400, "f": 114, "p": 57}
    assert Counter(e.id for e in mixed.rows if e.id[0] == "t") == Counter(e.id for e in train)


def test_a_source_is_drawn_in_whole_passes_before_any_row_repeats() -> None:
    mixed = mix_rows(_rows("t", 400), [(_source("facts", 0.2), _rows("f", 30))], seed=0)
    counts = Counter(e.id for e in mixed.rows if e.id[0] == "f")
    assert sum(counts.values()) == 100 and len(counts) == 30
    assert set(counts.values()) == {3, 4}  # 100 = 3 passes of 30, then 10 rows a fourth time


def test_order_is_seeded_and_shuffled_through() -> None:
    train, sources = _rows("t", 200), [(_source("facts", 0.25), _rows("f", 108))]
    first, again = mix_rows(train, sources, seed=0), mix_rows(train, sources, seed=0)
    assert [e.id for e in first.rows] == [e.id for e in again.rows]  # a resumed run sees the same order
    other = mix_rows(train, sources, seed=1)
    assert [e.id for e in first.rows] != [e.id for e in other.rows]
    # replay rows are spread through the list, not appended: a quarter in each half, give or take
    half = len(first.rows) // 2
    assert 25 <= sum(e.id[0] == "f" for e in first.rows[:half]) <= 42


def test_without_a_mix_the_train_rows_are_untouched() -> None:
    train = _rows("t", 50)
    mixed = mix_rows(train, [], seed=3, train_path="t.jsonl")
    assert mixed.rows == train
    assert [(c.source, c.weight, c.rows, c.drawn) for c in mixed.counts] == [("train", 1.0, 50, 50)]


def test_the_shipped_demo_mix_loads(folder: Path) -> None:
    repo = Path(__file__).parents[2]
    data = load_recipe(repo / "recipes" / "demo.yaml").recipe.data
    assert check_data(data) == []
    train = load_examples(data.train, data.format)
    mixed = mix_rows(train, load_mix(data), seed=0)
    assert [c.source for c in mixed.counts] == ["train", *(s.label for s in data.mix)]
    assert sum(c.drawn for c in mixed.counts) == len(mixed.rows)


# ----------------------------------------------------------------------------------------------- tokenizing


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion", "text"])
def test_mixed_rows_are_tokenized_exactly_as_trl_tokenizes_each_format(
    tiny_base: Path, tmp_path: Path, fmt: str
) -> None:
    """trl prepares a dataset of one shape; a mix of shapes is tokenized by us, and must come out the same."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from lifecycle.train import demo_data
    from lifecycle.train.trainer import tokenize_row

    rows = {
        "messages": demo_data.make_tickets(6, seed=2),
        "prompt_completion": [
            {"id": f"fact-{i}", "prompt": f"The capital of Torgo {i} is", "completion": f" Bazenla {i}."}
            for i in range(6)
        ],
        "text": [{"text": line} for line in demo_data.pretraining_corpus(seed=0)[:6]],
    }[fmt]
    examples = load_examples(_write(tmp_path / "rows.jsonl", rows), fmt)  # type: ignore[arg-type]
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    config = SFTConfig(output_dir=str(tmp_path / "out"), max_length=4096, report_to="none", use_cpu=True)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_base),
        args=config,
        train_dataset=Dataset.from_list([e.sft for e in examples]),
        processing_class=tokenizer,
    )
    theirs = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in trainer.train_dataset]  # type: ignore[union-attr]
    assert [tokenize_row(tokenizer, e.sft) for e in examples] == theirs


def test_rows_of_one_shape_go_to_trl_as_they_are(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    from lifecycle.train.trainer import training_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    chat = Example(
        "c", {"prompt": CHAT["messages"][:1], "completion": CHAT["messages"][1:]}, None, None, None
    )
    plain = Example("p", {"prompt": "The sky is", "completion": " blue."}, None, None, None)
    assert training_rows([plain, plain], tokenizer) == [plain.sft, plain.sft]
    mixed = training_rows([chat, plain], tokenizer)
    assert all(set(row) == {"input_ids", "labels"} for row in mixed)
    sky = tokenizer("The sky is")["input_ids"]
    assert mixed[1]["labels"][: len(sky)] == [-100] * len(sky)  # loss on " blue." and the end token only
    assert tokenizer.decode([t for t in mixed[1]["labels"] if t != -100]) == " blue.<|eot|>"
