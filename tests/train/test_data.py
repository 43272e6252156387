"""Data files: every bad row is reported as `FILE:LINE: message`, by `check_data` (for validation) and by
`load_examples` (before training) alike, and text that is not UTF-8 says so instead of raising."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.errors import RecipeError
from lifecycle.recipe.schema import DataSpec
from lifecycle.train.data import check_data, load_examples

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "billing"}]}
LINE = json.dumps(ROW) + "\n"
SAVE = "save the file as UTF-8"


def spec(train: Path, eval: Path | None = None, fmt: str = "messages") -> DataSpec:
    values = {"train": train, "eval": eval, "format": fmt}
    return DataSpec.model_validate(values, context={"skip_file_checks": True})


def test_good_files_have_no_problems(tmp_path: Path) -> None:
    train, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text(LINE * 3)
    held_out.write_text(LINE)
    assert check_data(spec(train, held_out)) == []
    assert len(load_examples(train, "messages")) == 3


def test_every_bad_row_of_every_file_at_once(tmp_path: Path) -> None:
    train, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text(
        LINE
        + "not json\n"
        + '{"messages": [{"role": "user", "content": "hi"}]}\n'
        + "\n"  # blank lines are skipped, not counted as rows
        + "[1, 2]\n"
        + LINE
        + '{"messages": [{"role": "user", "content": "cut off'  # a truncated last line
    )
    held_out.write_text('{"prompt": "a", "completion": "b"}\n')
    expected = [
        f"{train}:2: not valid JSON: Expecting value",
        f"{train}:3: messages: the last turn must be the assistant's answer (it is what is learned)",
        f"{train}:5: expected a JSON object per line",
        f"{train}:7: not valid JSON: Unterminated string starting at",
        f"{held_out}:1: messages: expected a non-empty list of {{role, content}} turns (format 'messages')",
    ]
    assert check_data(spec(train, held_out)) == expected
    with pytest.raises(RecipeError) as info:
        load_examples(train, "messages")
    assert info.value.problems == expected[:4]


def test_the_declared_format_is_checked(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(LINE)
    assert check_data(spec(train, fmt="text")) == [
        f"{train}:1: text: expected a non-empty string (format 'text')"
    ]


def test_cp1252_text_names_the_byte_and_column(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    row = {"messages": [{"role": "user", "content": "café “hi”"}, {"role": "assistant", "content": "b"}]}
    train.write_bytes((LINE + json.dumps(row, ensure_ascii=False) + "\n").encode("cp1252"))
    column = json.dumps(row, ensure_ascii=False).index("é") + 1
    expected = [f"{train}:2: not UTF-8 text (byte 0xe9 at column {column}); {SAVE}"]
    assert check_data(spec(train)) == expected
    with pytest.raises(RecipeError) as info:
        load_examples(train, "messages")
    assert info.value.problems == expected


def test_column_counts_characters_not_bytes(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_bytes('{"text": "ü"} '.encode() + b"\x92\n")  # ü is two bytes, one column
    assert check_data(spec(train, fmt="text")) == [
        f"{train}:1: not UTF-8 text (byte 0x92 at column 15); {SAVE}"
    ]


@pytest.mark.parametrize(
    ("encoding", "name"),
    [("utf-16", "UTF-16"), ("utf-16-be", None), ("utf-32", "UTF-32")],
)
def test_wide_encodings_are_named(tmp_path: Path, encoding: str, name: str | None) -> None:
    train = tmp_path / "train.jsonl"
    data = (LINE * 2).encode(encoding)
    if name == "UTF-16":
        assert data.startswith(b"\xff\xfe")  # Python writes the little-endian byte-order mark, as Excel does
    train.write_bytes(data)
    found = check_data(spec(train))
    if name is None:  # no byte-order mark: the NUL bytes give it away, on every line
        assert found == [
            f"{train}:{n}: not UTF-8 text (NUL bytes: it looks like UTF-16); {SAVE}" for n in (1, 2)
        ]
    else:
        assert found == [
            f"{train}:1: not UTF-8 text: the file is {name} (it starts with a {name} byte-order mark); {SAVE}"
        ]


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_bytes((LINE * 2).encode("utf-8-sig"))
    assert check_data(spec(train)) == []
    assert len(load_examples(train, "messages")) == 2


def test_empty_missing_and_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert check_data(spec(empty)) == [f"{empty}:1: the data file has no rows"]
    missing = tmp_path / "missing.jsonl"
    assert check_data(spec(missing)) == [f"{missing}: the data file does not exist"]
    assert check_data(spec(tmp_path)) == [f"{tmp_path}: is a folder, not a data file"]


def test_many_bad_rows_show_twenty_and_count_the_rest(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("[]\n" * 50 + LINE)
    found = check_data(spec(train))
    assert found[:20] == [f"{train}:{n}: expected a JSON object per line" for n in range(1, 21)]
    assert found[20:] == [f"{train}: 30 more bad rows not shown (50 in all)"]


def test_cli_train_reports_non_utf8_data_and_writes_nothing(tmp_path: Path) -> None:
    # a sky launch: `lifecycle train` checks the data before it contacts anything
    (tmp_path / "train.jsonl").write_bytes((LINE + LINE.replace("hi", "caf\u00e9")).encode("cp1252"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\nmodel:\n  base: builtin:tiny-llama\ndata:\n  train: train.jsonl\n  format: messages\n"
        "method:\n  kind: lora\ntraining:\n  max_steps: 1\nlaunch:\n  kind: sky\n  accelerators: H100:1\n"
        "register:\n  model_name: t\n"
    )
    home = tmp_path / "home"
    env = {**os.environ, "LIFECYCLE_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle.cli.app", "train", str(recipe)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    column = LINE.index("hi") + 4
    assert (
        f"{tmp_path / 'train.jsonl'}:2: not UTF-8 text (byte 0xe9 at column {column}); {SAVE}" in done.stderr
    )
    assert "Traceback" not in done.stdout + done.stderr
    assert not (home / "runs").exists()  # no run was prepared
