"""A fake engine: a real HTTP server on 127.0.0.1 that speaks vLLM's OpenAI endpoints, answering from scripted
models, so tests of the chain check, the gate and the router run without starting vLLM.

Endpoints and shapes follow vLLM's (vllm/entrypoints/openai/{completion,models}/, serve/engine/protocol.py):
GET /health, GET /v1/models (adapters with their `parent`), POST /v1/completions (prompt as text, texts or token
ids; max_tokens, logprobs, echo, stop, return_token_ids), POST /v1/load_lora_adapter and /unload_lora_adapter
(plain-text success, `{"error": {...}}` failures), GET /metrics (a few of vLLM's counters). Decoding is always
greedy: temperature, seed and other sampling fields are accepted and ignored. Clients talk to it unchanged: our
`OpenAIClient`, lm-eval's `local-completions`. `fake_serve` makes the `Serve` factory the chain check takes.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from lifecycle.engines.base import Completion
from lifecycle.engines.client import OpenAIClient, Prompt
from lifecycle.engines.fake_model import FakeModel, Tokenizer, WordTokenizer
from lifecycle.engines.fake_protocol import completion_choice, error_body

__all__ = ["FakeEngine", "FakeServe", "fake_serve"]


class _ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class FakeEngine:
    """A running fake server: `models` maps each served name to its model; the first is the base, the rest are
    adapters named at start. `loadable` maps adapter paths to the models that `load_lora` may load. Implements
    `CompletionEngine` and `LoraEngine` through its own HTTP endpoints; a context manager that stops on exit."""

    def __init__(
        self,
        models: Mapping[str, FakeModel],
        *,
        tokenizer: Tokenizer | None = None,
        loadable: Mapping[str, FakeModel] | None = None,
        runtime_lora: bool = True,
        max_model_len: int = 2048,
        root: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("a fake engine serves at least one model")
        self.tokenizer: Tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
        self.base = next(iter(models))
        self.served: dict[str, FakeModel] = dict(models)
        self.loadable = {str(Path(k)): v for k, v in (loadable or {}).items()}
        self.runtime_lora = runtime_lora
        self.max_model_len = max_model_len
        self.root = root or self.base
        self.requests: list[dict[str, Any]] = []  # every completion request's body, in arrival order
        self.counts = {"requests": 0, "prompt_tokens": 0, "generation_tokens": 0}
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name="fake-engine", daemon=True)
        self._thread.start()
        self.client = OpenAIClient(f"http://127.0.0.1:{self.port}")

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def model(self) -> str:
        """The base model's served name."""
        return self.base

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def completions_url(self) -> str:
        return self.client.completions_url

    def models(self) -> list[str]:
        return self.client.models()

    def complete(
        self,
        prompt: Prompt | Sequence[Prompt],
        *,
        model: str,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: int | None = None,
    ) -> list[Completion]:
        """Through HTTP, as any client: see `OpenAIClient.complete`."""
        return self.client.complete(
            prompt, model=model, max_tokens=max_tokens, temperature=temperature, logprobs=logprobs
        )

    @property
    def root_url(self) -> str:
        return self.client.root_url

    def running(self) -> bool:
        return self._thread.is_alive()

    def load_lora(self, name: str, path: Path, *, inplace: bool = False) -> None:
        self.client.load_lora(name, path, inplace=inplace)

    def unload_lora(self, name: str) -> None:
        self.client.unload_lora(name)

    def stop(self) -> None:
        """Stop answering and close the socket; safe to call twice."""
        if self._thread.is_alive():
            self._http.shutdown()
            self._thread.join()
        self._http.server_close()
        self.client.close()

    def __enter__(self) -> FakeEngine:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- the server side: called from the HTTP handler's threads

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """The status and the body (JSON-able, or a str for plain text) of one request."""
        try:
            return 200, self._route(method, path.split("?", 1)[0], body)
        except _ApiError as exc:
            return exc.status, error_body(str(exc), exc.kind, exc.status)

    def _route(self, method: str, path: str, body: Any) -> Any:
        if (method, path) == ("GET", "/health"):
            return ""
        if (method, path) == ("GET", "/v1/models"):
            return self._model_list()
        if (method, path) == ("GET", "/metrics"):
            return self._metrics()
        if (method, path) == ("POST", "/v1/completions"):
            return self._completions(_object(body))
        if (
            method == "POST"
            and path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
            and self.runtime_lora
        ):
            name = _object(body).get("lora_name")
            if not name:
                raise _ApiError(400, "'lora_name' needs to be provided.", "InvalidUserInput")
            if path.endswith("/load_lora_adapter"):
                inplace = bool(_object(body).get("load_inplace"))
                return self._load(str(name), _object(body).get("lora_path"), inplace)
            return self._unload(str(name))
        raise _ApiError(404, "Not Found", "NotFoundError")

    def _model_list(self) -> dict[str, Any]:
        created = int(time.time())
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.root if name == self.base else name,
                "parent": None if name == self.base else self.base,
                "max_model_len": self.max_model_len,
                "permission": [],
            }
            for name in list(self.served)
        ]
        return {"object": "list", "data": data}

    def _completions(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("model") or self.base
        model = self.served.get(name)
        if model is None:
            raise _ApiError(404, f"The model `{name}` does not exist.", "NotFoundError")
        if body.get("stream"):
            raise _ApiError(400, "the fake engine does not stream")
        if int(body.get("n") or 1) != 1:
            raise _ApiError(400, "the fake engine answers n=1 only")
        prompts = _prompt_ids(body.get("prompt"), self.tokenizer)
        with self._lock:
            self.requests.append(body)
        choices, prompt_tokens, generated = [], 0, 0
        for index, ids in enumerate(prompts):
            if len(ids) > self.max_model_len:
                raise _ApiError(400, f"This model's maximum context length is {self.max_model_len} tokens.")
            choice = completion_choice(model, self.tokenizer, ids, body, index)
            prompt_tokens += len(ids)
            generated += len(choice["token_ids"] or ())
            if not body.get("return_token_ids"):
                choice["token_ids"] = choice["prompt_token_ids"] = None
            choices.append(choice)
        with self._lock:
            self.counts["requests"] += len(prompts)
            self.counts["prompt_tokens"] += prompt_tokens
            self.counts["generation_tokens"] += generated
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": generated}
        usage["total_tokens"] = prompt_tokens + generated
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": choices,
            "usage": {**usage, "prompt_tokens_details": None},
            "system_fingerprint": None,
            "kv_transfer_params": None,
        }

    def _load(self, name: str, path: Any, inplace: bool = False) -> str:
        if not path:
            raise _ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.served and not inplace:
            raise _ApiError(
                400, f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
                "in place, set 'load_inplace' to True.", "InvalidUserInput",
            )  # fmt: skip
        model = self.loadable.get(str(Path(str(path))))
        if model is None:
            raise _ApiError(
                400, f"Loading lora {name} failed: No adapter found for {path}", "BadRequestError"
            )
        with self._lock:
            self.served[name] = model
        return f"Success: LoRA adapter '{name}' added successfully."

    def _unload(self, name: str) -> str:
        if name not in self.served or name == self.base:
            raise _ApiError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        with self._lock:
            del self.served[name]
        return f"Success: LoRA adapter '{name}' removed successfully."

    def _metrics(self) -> str:
        label = f'model_name="{self.base}"'
        return "".join(
            f"vllm:{metric}{{{label}}} {float(self.counts[key])}\n"
            for metric, key in (
                ("request_success_total", "requests"),
                ("prompt_tokens_total", "prompt_tokens"),
                ("generation_tokens_total", "generation_tokens"),
            )
        )


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _ApiError(400, "the request body must be a JSON object")
    return body


def _prompt_ids(prompt: Any, tokenizer: Tokenizer) -> list[list[int]]:
    """vLLM's `prompt` forms: a text, a list of texts, a list of token ids, a list of token-id lists."""
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(x, int) for x in prompt):
            return [list(prompt)]
        if all(isinstance(x, str) for x in prompt):
            return [tokenizer.encode(x) for x in prompt]
        if all(isinstance(x, list) and x and all(isinstance(i, int) for i in x) for x in prompt):
            return [list(x) for x in prompt]
    raise _ApiError(400, "prompt must be a string, a list of strings, or (lists of) token ids")


def _handler(engine: FakeEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn: clients reuse connections
        disable_nagle_algorithm = True  # else headers and body, written apart, wait ~40 ms for a delayed ACK

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                status, answer = 400, error_body("the request body is not JSON", "BadRequestError", 400)
            else:
                status, answer = engine.answer(method, self.path, body)
            if isinstance(answer, str):
                data, kind = answer.encode(), "text/plain; charset=utf-8"
            else:
                data, kind = json.dumps(answer).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
            pass

    return Handler


class FakeServe:
    """A `Serve` factory (lifecycle.quantize.chain): `serve(model_dir, loras)` starts a `FakeEngine` serving the
    model folder under its name, as vLLM does, and each adapter under its name. Models are looked up by path
    (as given or resolved), then by folder name. `starts` lists every (model_dir, loras) started."""

    def __init__(self, models: Mapping[str | Path, FakeModel], *, tokenizer: Tokenizer | None = None) -> None:
        self.models = {str(k): v for k, v in models.items()}
        self.tokenizer: Tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
        self.starts: list[tuple[Path, dict[str, Path]]] = []

    def __call__(self, model_dir: Path, loras: dict[str, Path]) -> FakeEngine:
        served = {Path(model_dir).name: self.model_for(model_dir)}
        served.update({name: self.model_for(path) for name, path in loras.items()})
        self.starts.append((Path(model_dir), dict(loras)))
        return FakeEngine(served, tokenizer=self.tokenizer, loadable=self._by_path(), root=str(model_dir))

    def model_for(self, path: Path) -> FakeModel:
        """The model scripted for a model or adapter folder; KeyError naming what is scripted if none is."""
        path = Path(path)
        for key in (str(path), str(path.resolve()), path.name):
            if key in self.models:
                return self.models[key]
        raise KeyError(f"no fake model for {path} (scripted: {sorted(self.models)})")

    def _by_path(self) -> dict[str, FakeModel]:
        return {k: v for k, v in self.models.items() if Path(k).is_absolute()}


def fake_serve(models: Mapping[str | Path, FakeModel], *, tokenizer: Tokenizer | None = None) -> FakeServe:
    """The factory to pass where a real server factory goes (see `FakeServe`); its `.starts` counts starts."""
    return FakeServe(models, tokenizer=tokenizer)
