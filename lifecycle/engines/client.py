"""An OpenAI-compatible HTTP client for the endpoints our engines serve: models, completions, LoRA adapters.

The wire is a `Transport`, a callable `(method, url, json_body, timeout_s) -> (status, body_text)`, so tests can
answer from a stub without sockets; the default one is a `requests.Session`. Errors are `EngineError`s that quote
the server's own message (vLLM: `{"error": {"message": ...}}`), and a `describe` callback adds what the caller
knows about the server (is the process still running, where is its log).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from lifecycle.engines.base import Completion
from lifecycle.errors import EngineError

Prompt = str | Sequence[int]
"""A prompt: raw text (no chat template), or token ids (what lm-eval's local-completions sends)."""


class TransportError(Exception):
    """The request did not get an HTTP answer (connection refused or reset, timeout)."""


class Transport(Protocol):
    def __call__(self, method: str, url: str, body: Any, timeout_s: float) -> tuple[int, str]:
        """Send `body` as JSON (None: no body); the HTTP status and the body's text."""
        ...


class RequestsTransport:
    """The default transport: one `requests.Session` (connection reuse), closed with the client."""

    def __init__(self) -> None:
        import requests

        self._requests = requests
        self._session = requests.Session()

    def __call__(self, method: str, url: str, body: Any, timeout_s: float) -> tuple[int, str]:
        try:
            response = self._session.request(method, url, json=body, timeout=timeout_s)
        except self._requests.RequestException as exc:
            raise TransportError(str(exc)) from exc
        return response.status_code, response.text

    def close(self) -> None:
        self._session.close()


class OpenAIClient:
    """Talks to one server at `root_url` (`http://host:port`, without `/v1`)."""

    def __init__(
        self,
        root_url: str,
        *,
        transport: Transport | None = None,
        describe: Callable[[], str] | None = None,
    ) -> None:
        self.root_url = root_url.rstrip("/")
        self._transport: Transport = transport if transport is not None else RequestsTransport()
        self._describe = describe

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/completions"

    def healthy(self, timeout_s: float = 5.0) -> bool:
        """Whether GET /health answers 200 now (False while the server starts, or if nobody listens)."""
        try:
            status, _ = self._transport("GET", self.root_url + "/health", None, timeout_s)
        except TransportError:
            return False
        return status == 200

    def model_entries(self) -> list[dict[str, Any]]:
        """GET /v1/models's entries: `id`, and for an adapter its `parent` (the base model's name)."""
        return list(self.request("GET", "/v1/models")["data"])

    def models(self) -> list[str]:
        """The names the server answers to: the base model and every loaded adapter."""
        return [entry["id"] for entry in self.model_entries()]

    def complete(
        self,
        prompt: Prompt | Sequence[Prompt],
        *,
        model: str,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        timeout_s: float = 300.0,
    ) -> list[Completion]:
        """Complete prompts (raw text or token ids; no chat template); one result per prompt, in prompt order.

        `logprobs=N` adds each token's log-prob and the top N alternatives (0: the chosen token only); `echo`
        puts the prompt's tokens in front of the answer's, with the log-prob of each given the ones before it.
        vLLM reports raw log-probs, before temperature and penalties: what comparing two models needs.
        """
        body: dict[str, Any] = {
            "model": model,
            "prompt": _prompts(prompt),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "return_token_ids": True,  # vLLM extension: the generated token ids of each choice
            "repetition_penalty": 1.0,  # override a default the model's generation_config.json may set
        }
        if logprobs is not None:
            body["logprobs"] = logprobs
        if echo:
            body["echo"] = True
        if stop:
            body["stop"] = list(stop)
        if ignore_eos:
            body["ignore_eos"] = True  # vLLM extension: exactly max_tokens tokens (speed measurements)
        answer = self.request("POST", "/v1/completions", body, timeout_s=timeout_s)
        return [completion(choice) for choice in sorted(answer["choices"], key=lambda c: c["index"])]

    def load_lora(self, name: str, path: Path, *, inplace: bool = False) -> None:
        """Hot-load an adapter under `name` (vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING); `inplace` replaces
        the weights of an adapter already loaded under that name."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": os.path.abspath(path)}
        if inplace:
            body["load_inplace"] = True
        self.request("POST", "/v1/load_lora_adapter", body)

    def unload_lora(self, name: str) -> None:
        """Drop a loaded adapter; requests naming it then fail with HTTP 404."""
        self.request("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def request(self, method: str, path: str, body: Any = None, *, timeout_s: float = 60.0) -> Any:
        """One request; the JSON answer (or the text, for endpoints that answer plain text)."""
        url = self.root_url + path
        try:
            status, text = self._transport(method, url, body, timeout_s)
        except TransportError as exc:
            more = f"; {self._describe()}" if self._describe is not None else ""
            raise EngineError(f"{method} {url} failed ({exc}){more}") from exc
        if status >= 400:
            raise EngineError(f"{method} {url} answered HTTP {status}: {error_message(text)}")
        try:
            return json.loads(text)
        except ValueError:
            return text  # vLLM's LoRA endpoints answer plain text

    def close(self) -> None:
        close = getattr(self._transport, "close", None)
        if callable(close):
            close()


def completion(choice: Mapping[str, Any]) -> Completion:
    """One choice of a /v1/completions answer. An echoed prompt's first token has no log-prob (null): it is
    left out of `token_logprobs`, so they align with `tokens[1:]` then."""
    logprobs = choice.get("logprobs") or {}
    return Completion(
        text=choice.get("text") or "",
        finish_reason=choice.get("finish_reason"),
        token_ids=tuple(choice.get("token_ids") or ()),
        tokens=tuple(logprobs.get("tokens") or ()),
        token_logprobs=tuple(float(x) for x in logprobs.get("token_logprobs") or () if x is not None),
        top_logprobs=tuple(dict(top) for top in logprobs.get("top_logprobs") or () if top is not None),
    )


def error_message(text: str) -> str:
    """The message in an error body: OpenAI's `{"error": {"message": ...}}`, FastAPI's `{"detail": ...}`, or
    the text itself."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(error)
    return str(body)


def _prompts(prompt: Prompt | Sequence[Prompt]) -> list[Any]:
    """The `prompt` field: always a list of prompts (one text, one token-id list, or several)."""
    if isinstance(prompt, str):
        return [prompt]
    items = list(prompt)
    if items and all(isinstance(x, int) for x in items):
        return [items]  # a single prompt of token ids
    return [p if isinstance(p, str) else list(cast(Sequence[int], p)) for p in items]
