"""Training data: read JSON lines, check every row against the recipe's format, hash, convert for trl.

Bad rows are reported all at once as `FILE:LINE: field: message`, before anything is trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import RecipeError
from lifecycle.manifest import sha256_file
from lifecycle.recipe.schema import DataFormat
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


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row); a line that is not JSON yields a ValueError in place of the row."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield lineno, ValueError(f"not valid JSON: {exc.msg}")


def load_examples(path: Path, fmt: DataFormat) -> list[Example]:
    """Read and check a data file; raises RecipeError listing the bad rows (up to 20)."""
    examples: list[Example] = []
    problems: list[str] = []
    for lineno, row in read_jsonl(path):
        try:
            if isinstance(row, ValueError):
                raise row
            examples.append(_convert(row, fmt, default_id=f"{path.stem}-{lineno}"))
        except ValueError as exc:
            problems.append(f"{path}:{lineno}: {exc}")
            if len(problems) >= _MAX_PROBLEMS:
                problems.append(f"{path}: stopped after {_MAX_PROBLEMS} bad rows")
                break
    if not examples and not problems:
        problems.append(f"{path}:1: the data file has no rows")
    if problems:
        raise RecipeError(problems)
    return examples


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
