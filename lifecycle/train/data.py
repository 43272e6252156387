"""Training data: read JSON lines, check every row against the recipe's format, mix, hash, convert for trl.

Bad rows are reported all at once as `FILE:LINE: field: message`, before anything is trained. Mix sources
(`data.mix`: replay or general data) are checked the same way, each in its own format, and drawn seeded.
"""

from __future__ import annotations

import codecs
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import RecipeError
from lifecycle.manifest import sha256_file
from lifecycle.recipe.load import data_files
from lifecycle.recipe.schema import DataFormat, DataSpec, MixSource
from lifecycle.runs import DataStats

_MAX_PROBLEMS = 20
_ROLES = {"system", "user", "assistant", "tool"}


@dataclass(frozen=True)
class Example:
    """One row in the form trl trains on, plus what a held-out accuracy check needs."""

    id: str
    sft: dict[str, Any]  # {"prompt": ..., "completion": ...} or {"text": ...}
    prompt_messages: list[dict[str, str]] | None  # chat prompt, when the data is conversational
    prompt_text: str | None  # plain prompt, when it is prompt/completion text
    target: str | None  # the expected completion text


_SAVE_AS_UTF8 = "save the file as UTF-8"


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row); a line that is not UTF-8 text or not JSON yields a ValueError in place of the
    row. Raises OSError if the file cannot be opened."""
    with path.open("rb") as fh:
        head = fh.read(4)
        wide = _wide_encoding(head)
        if wide is not None:
            problem = f"not UTF-8 text: the file is {wide} (it starts with a {wide} byte-order mark)"
            yield 1, ValueError(f"{problem}; {_SAVE_AS_UTF8}")
            return
        fh.seek(len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0)  # some editors write one
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(raw[: exc.start].decode("utf-8")) + 1  # in characters, as an editor counts
                problem = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})"
                yield lineno, ValueError(f"{problem}; {_SAVE_AS_UTF8}")
                continue
            if not line.strip():
                continue
            if "\x00" in line:  # UTF-16 without a byte-order mark: every other byte of ASCII text is zero
                yield lineno, ValueError(f"not UTF-8 text (NUL bytes: it looks like UTF-16); {_SAVE_AS_UTF8}")
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, ValueError(f"not valid JSON: {exc.msg}")


def _wide_encoding(head: bytes) -> str | None:
    """'UTF-16' or 'UTF-32' when the file's first bytes are that encoding's byte-order mark."""
    # UTF-32 first: its little-endian mark begins with UTF-16's
    for bom, name in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if head.startswith(bom):
            return name
    return None


def load_examples(path: Path, fmt: DataFormat) -> list[Example]:
    """Read and check a data file; raises RecipeError listing every bad row (the first 20 in full)."""
    examples, problems = _read_examples(path, fmt)
    if problems:
        raise RecipeError(problems)
    return examples


def check_data(spec: DataSpec) -> list[str]:
    """Every problem in a recipe's data files (train and eval in the declared format, each mix source in its
    own) as `FILE:LINE: message`; empty when training can read them. The checks training makes before it starts.
    """
    files = [(path, spec.format) for path in data_files(spec).values()]
    files += [(source.path, source.format) for source in spec.mix]
    return [problem for path, fmt in files for problem in _read_examples(path, fmt)[1]]


# ----------------------------------------------------------------------------------------------- mixing


@dataclass(frozen=True)
class MixCount:
    """What one source put into the training rows."""

    source: str  # 'train' or the mix source's label
    path: str
    weight: float  # the fraction of training rows asked for
    rows: int  # rows in the file
    drawn: int  # rows in the mixed training list


@dataclass(frozen=True)
class Mixed:
    """The training rows, in order, and how many came from each source ('train' first)."""

    rows: list[Example]
    counts: list[MixCount]


def load_mix(spec: DataSpec) -> list[tuple[MixSource, list[Example]]]:
    """Read and check every mix source; raises RecipeError listing every bad row of every source at once."""
    loaded = [(source, *_read_examples(source.path, source.format)) for source in spec.mix]
    problems = [problem for _, _, found in loaded for problem in found]
    if problems:
        raise RecipeError(problems)
    return [(source, examples) for source, examples, _ in loaded]


def mix_rows(
    train: list[Example], sources: Sequence[tuple[MixSource, list[Example]]], seed: int, train_path: str = ""
) -> Mixed:
    """The training rows with each source's share added: source i supplies round(total * weight_i) rows of
    total = len(train) / (1 - sum of weights). A source is drawn in seeded passes (every row once before any
    row twice), and the whole list is shuffled, seeded. Without sources the train rows come back unchanged.
    Same rows and seed, same list: a resumed run sees the data in the same order."""
    weights = sum(source.weight for source, _ in sources)
    counts = [MixCount("train", train_path, 1.0 - weights, len(train), len(train))]
    if not sources:
        return Mixed(list(train), counts)
    total = len(train) / (1.0 - weights)
    rows = list(train)
    for source, examples in sources:
        if not examples:
            raise RecipeError([f"{source.path}: the mix source has no rows"])
        k = round(total * source.weight)
        rows += _draw(examples, k, random.Random(f"mix-{seed}-{source.label}"))
        counts.append(MixCount(source.label, str(source.path), source.weight, len(examples), k))
    random.Random(f"mix-order-{seed}").shuffle(rows)
    return Mixed(rows, counts)


def _draw(examples: list[Example], k: int, rng: random.Random) -> list[Example]:
    """k rows: whole shuffled passes over `examples`, then a sample of the rest without replacement."""
    out: list[Example] = []
    while len(out) + len(examples) <= k:
        out += rng.sample(examples, len(examples))
    return out + rng.sample(examples, k - len(out))


def _read_examples(path: Path, fmt: DataFormat) -> tuple[list[Example], list[str]]:
    """The rows that convert, and a problem for each bad row (the first 20; then how many more)."""
    examples: list[Example] = []
    problems: list[str] = []
    bad = 0
    try:
        for lineno, row in read_jsonl(path):
            try:
                if isinstance(row, ValueError):
                    raise row
                examples.append(_convert(row, fmt, default_id=f"{path.stem}-{lineno}"))
            except ValueError as exc:
                bad += 1
                if bad <= _MAX_PROBLEMS:
                    problems.append(f"{path}:{lineno}: {exc}")
    except FileNotFoundError:
        return [], [f"{path}: the data file does not exist"]
    except IsADirectoryError:
        return [], [f"{path}: is a folder, not a data file"]
    except OSError as exc:
        return [], [f"{path}: cannot be read: {exc.strerror or exc}"]
    if bad > _MAX_PROBLEMS:
        problems.append(f"{path}: {bad - _MAX_PROBLEMS} more bad rows not shown ({bad} in all)")
    if not examples and not problems:
        problems.append(f"{path}:1: the data file has no rows")
    return examples, problems


def _convert(row: Any, fmt: DataFormat, default_id: str) -> Example:
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object per line")
    row_id = str(row.get("id", default_id))
    if fmt == "messages":
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError(
                "messages: expected a non-empty list of {role, content} turns (format 'messages')"
            )
        for i, turn in enumerate(messages):
            if (
                not isinstance(turn, dict)
                or turn.get("role") not in _ROLES
                or not isinstance(turn.get("content"), str)
            ):
                raise ValueError(
                    f"messages.{i}: expected {{role: system|user|assistant|tool, content: text}}"
                )
        if messages[-1]["role"] != "assistant":
            raise ValueError("messages: the last turn must be the assistant's answer (it is what is learned)")
        prompt = [dict(t) for t in messages[:-1]]
        completion = [dict(messages[-1])]
        return Example(
            row_id, {"prompt": prompt, "completion": completion}, prompt, None, messages[-1]["content"]
        )
    if fmt == "prompt_completion":
        text_prompt, text_completion = row.get("prompt"), row.get("completion")
        if not isinstance(text_prompt, str) or not isinstance(text_completion, str):
            raise ValueError("prompt, completion: expected two strings (format 'prompt_completion')")
        return Example(
            row_id, {"prompt": text_prompt, "completion": text_completion}, None, text_prompt, text_completion
        )
    text = row.get("text")
    if not isinstance(text, str) or not text:
        raise ValueError("text: expected a non-empty string (format 'text')")
    return Example(row_id, {"text": text}, None, None, None)


def stats(path: Path, examples: list[Example]) -> DataStats:
    return DataStats(path=str(path), sha256=sha256_file(path), rows=len(examples))
