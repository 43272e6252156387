"""What the rest of the platform needs from a running OpenAI-compatible model server, whatever starts it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Completion:
    """One choice of a /v1/completions answer.

    `tokens`, `token_logprobs` and `top_logprobs` are filled only when log-probs were asked for; `token_ids`
    only when the server returns them (vLLM does with `return_token_ids`).
    """

    text: str
    finish_reason: str | None
    token_ids: tuple[int, ...] = ()
    tokens: tuple[str, ...] = ()
    token_logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[dict[str, float], ...] = ()


@runtime_checkable
class CompletionEngine(Protocol):
    """A running server that speaks the OpenAI completions API (a vLLM server, or a stand-in in tests)."""

    @property
    def base_url(self) -> str:
        """The API root, e.g. `http://127.0.0.1:8000/v1`."""
        ...

    @property
    def completions_url(self) -> str:
        """The full `/v1/completions` URL (what lm-eval's `local-completions` wants)."""
        ...

    def models(self) -> list[str]:
        """The model names the server answers to (base and adapters)."""
        ...

    def complete(
        self,
        prompt: str | Sequence[str],
        *,
        model: str,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: int | None = None,
    ) -> list[Completion]:
        """One completion per prompt, in prompt order."""
        ...

    def stop(self) -> None:
        """Stop the server and everything it started; safe to call twice."""
        ...


@runtime_checkable
class LoraEngine(CompletionEngine, Protocol):
    """A server that can add and drop LoRA adapters while it runs."""

    def load_lora(self, name: str, path: Path) -> None: ...

    def unload_lora(self, name: str) -> None: ...
