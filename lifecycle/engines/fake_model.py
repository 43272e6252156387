"""Scripted language models for the fake engine: what it answers, token by token, and how sure it is.

A `FakeModel` works on token ids through a `Tokenizer` the engine hands it: `generate` continues a prompt
greedily, `score` gives each prompt token's log-prob given the tokens before it (what lm-eval's log-likelihood
requests read back through `echo`). `TableModel` is the deterministic default: a table of prompt -> answer, and
`with_answers` scripts a "broken" variant that answers some prompts differently. `WordTokenizer` needs no
files; `HfTokenizer` uses a model folder's tokenizer, for clients that send token ids made with it (lm-eval).
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Tokenizer(Protocol):
    @property
    def eos(self) -> int:
        """The end-of-sequence token: a model's answer ends with it, as a real model's does."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` (special tokens included, as written)."""
        ...


class WordTokenizer:
    """A token is a word with the whitespace before it. Ids are a hash of the text, so every engine in a test
    gives the same text the same ids (the chain check compares ids across servers)."""

    _PIECE = re.compile(r"\s*\S+|\s+")
    EOS = 0

    def __init__(self) -> None:
        self._pieces: dict[int, str] = {self.EOS: "<eos>"}
        self._lock = threading.Lock()

    @property
    def eos(self) -> int:
        return self.EOS

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self._PIECE.findall(text):
            token = zlib.crc32(piece.encode()) & 0x7FFFFFFF
            with self._lock:
                self._pieces.setdefault(token, piece)
            ids.append(token)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return "".join(self._pieces[i] for i in ids)
        except KeyError as exc:
            raise ValueError(f"token id {exc.args[0]} was never produced by this tokenizer") from None


class HfTokenizer:
    """A Hugging Face tokenizer from a model folder (transformers is imported on first use)."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
        if self._tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer in {model_dir} has no EOS token")

    @property
    def eos(self) -> int:
        return int(self._tokenizer.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids)))


@dataclass(frozen=True)
class Step:
    """One token of an answer or a scored prompt: its log-prob, and the most likely tokens there (id -> log-prob,
    the chosen one included), as a real model's top log-probs."""

    token: int
    logprob: float
    top: Mapping[int, float] = field(default_factory=dict)


class FakeModel(Protocol):
    def generate(self, prompt: Sequence[int], max_tokens: int, tokenizer: Tokenizer) -> list[Step]:
        """The greedy answer to `prompt`, at most `max_tokens` steps; one that ends says so with `tokenizer.eos`
        (as a real model, whose EOS token is generated, counted and scored, though not in the text)."""
        ...

    def score(self, prompt: Sequence[int], tokenizer: Tokenizer) -> list[Step | None]:
        """One entry per prompt token: its log-prob given the ones before; None for the first token."""
        ...


@dataclass(frozen=True)
class TableModel:
    """Answers from a table: a context that ends with a key, plus the start of its answer, continues that answer.

    Matching is on text, so it works for any tokenization and whatever comes before the key (BOS, few-shot
    examples). Each token of the expected answer gets `confident`; any other token there gets `unlikely`, and
    the expected one stays the top alternative. A context that matches no key gets `unsure` for every token and
    an empty answer (EOS at once). `shift` is added to every log-prob (to script a small numeric drift).
    """

    answers: Mapping[str, str]
    confident: float = -0.05
    unlikely: float = -6.0
    unsure: float = -3.0
    shift: float = 0.0

    def with_answers(self, changed: Mapping[str, str], *, shift: float | None = None) -> TableModel:
        """The same model answering some keys differently (and with another shift): a "broken" variant."""
        answers = {**self.answers, **changed}
        return TableModel(
            answers, self.confident, self.unlikely, self.unsure, self.shift if shift is None else shift
        )

    def expected(self, context: str) -> str | None:
        """What the model still has to say after `context`; None when no key matches."""
        best: tuple[int, str] | None = None
        for key, answer in self.answers.items():
            for said in range(len(answer), -1, -1):  # the longest match first
                if context.endswith(key + answer[:said]):
                    if best is None or len(key) + said > best[0]:
                        best = (len(key) + said, answer[said:])
                    break
        return None if best is None else best[1]

    def generate(self, prompt: Sequence[int], max_tokens: int, tokenizer: Tokenizer) -> list[Step]:
        rest = self.expected(tokenizer.decode(prompt))
        logprob = (self.unsure if rest is None else self.confident) + self.shift
        tokens = [*tokenizer.encode(rest or ""), tokenizer.eos]
        return [Step(token, logprob, {token: logprob}) for token in tokens[:max_tokens]]

    def score(self, prompt: Sequence[int], tokenizer: Tokenizer) -> list[Step | None]:
        steps: list[Step | None] = [None] if prompt else []
        for i in range(1, len(prompt)):
            before = tokenizer.decode(prompt[:i])
            piece = tokenizer.decode(prompt[: i + 1])[len(before) :]
            rest = self.expected(before)
            token = prompt[i]
            if rest is None:
                logprob = self.unsure + self.shift
                steps.append(Step(token, logprob, {token: logprob}))
            elif piece and rest.startswith(piece):
                logprob = self.confident + self.shift
                steps.append(Step(token, logprob, {token: logprob}))
            else:
                logprob = self.unlikely + self.shift
                top = {token: logprob}
                best = tokenizer.encode(rest)[:1] if rest else []
                if best and best[0] != token:
                    top = {best[0]: self.confident + self.shift, **top}
                steps.append(Step(token, logprob, top))
        return steps
