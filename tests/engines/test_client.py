"""The OpenAI-compatible client against a transport stub: the requests it sends, the answers it reads, the
errors it raises. No sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lifecycle.engines.client import OpenAIClient, TransportError
from lifecycle.errors import EngineError


class Stub:
    """Answers each (method, path) from a table and records every request."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, str, Any, float]] = []

    def __call__(self, method: str, url: str, body: Any, timeout_s: float) -> tuple[int, str]:
        self.sent.append((method, url, body, timeout_s))
        status, answer = self.answers[(method, url.removeprefix("http://server:8000"))]
        if isinstance(answer, Exception):
            raise answer
        return status, answer if isinstance(answer, str) else json.dumps(answer)


# As vLLM answers: generated tokens, logprobs=1 (the chosen token and the best alternative).
COMPLETIONS = {
    "id": "cmpl-1",
    "object": "text_completion",
    "model": "tiny",
    "choices": [
        {
            "index": 1,
            "text": " no",
            "logprobs": None,
            "finish_reason": "stop",
            "token_ids": [7],
        },
        {
            "index": 0,
            "text": " Paris",
            "logprobs": {
                "text_offset": [0, 3],
                "token_logprobs": [-0.5, -0.25],
                "tokens": [" Pa", "ris"],
                "top_logprobs": [{" Pa": -0.5, " Lo": -1.5}, {"ris": -0.25}],
            },
            "finish_reason": "length",
            "token_ids": [11, 12],
        },
    ],
    "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
}


def client(answers: dict[tuple[str, str], tuple[int, Any]]) -> tuple[OpenAIClient, Stub]:
    stub = Stub(answers)
    return OpenAIClient("http://server:8000/", transport=stub), stub


def test_urls() -> None:
    c, _ = client({})
    assert (c.root_url, c.base_url) == ("http://server:8000", "http://server:8000/v1")
    assert c.completions_url == "http://server:8000/v1/completions"


def test_models_lists_base_and_adapters() -> None:
    data = [{"id": "tiny", "parent": None}, {"id": "alpha", "parent": "tiny"}]
    c, stub = client({("GET", "/v1/models"): (200, {"object": "list", "data": data})})
    assert c.models() == ["tiny", "alpha"]
    assert c.model_entries()[1]["parent"] == "tiny"
    assert stub.sent[0][2] is None  # a GET has no body


def test_complete_sends_vllms_fields_and_reads_choices_in_prompt_order() -> None:
    c, stub = client({("POST", "/v1/completions"): (200, COMPLETIONS)})
    first, second = c.complete(["a", "b"], model="tiny", max_tokens=2, logprobs=1, stop=["\n"], timeout_s=9)

    _, url, body, timeout = stub.sent[0]
    assert url == "http://server:8000/v1/completions" and timeout == 9
    assert body == {
        "model": "tiny",
        "prompt": ["a", "b"],
        "max_tokens": 2,
        "temperature": 0.0,
        "return_token_ids": True,
        "repetition_penalty": 1.0,
        "logprobs": 1,
        "stop": ["\n"],
    }
    assert (first.text, first.finish_reason, first.token_ids) == (" Paris", "length", (11, 12))
    assert first.tokens == (" Pa", "ris") and first.token_logprobs == (-0.5, -0.25)
    assert first.top_logprobs == ({" Pa": -0.5, " Lo": -1.5}, {"ris": -0.25})
    assert (second.text, second.token_ids, second.tokens) == (" no", (7,), ())


@pytest.mark.parametrize(
    ("prompt", "sent"),
    [
        ("one", ["one"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        (("x", "y"), ["x", "y"]),
    ],
)
def test_prompt_forms(prompt: Any, sent: list[Any]) -> None:
    c, stub = client({("POST", "/v1/completions"): (200, {"choices": []})})
    c.complete(prompt, model="m", max_tokens=1, echo=True, ignore_eos=True)
    body = stub.sent[0][2]
    assert body["prompt"] == sent and body["echo"] is True and body["ignore_eos"] is True


def test_an_echoed_prompts_null_first_logprob_is_left_out() -> None:
    choice = {
        "index": 0,
        "text": "",
        "finish_reason": "length",
        "logprobs": {
            "tokens": ["a", "b"],
            "token_logprobs": [None, -1.0],
            "top_logprobs": [None, {"b": -1.0}],
        },
    }
    c, _ = client({("POST", "/v1/completions"): (200, {"choices": [choice]})})
    (result,) = c.complete([1, 2], model="m", max_tokens=0, logprobs=0, echo=True)
    assert result.tokens == ("a", "b") and result.token_logprobs == (-1.0,)
    assert result.top_logprobs == ({"b": -1.0},)


def test_lora_endpoints_take_plain_text_answers(tmp_path: Path) -> None:
    c, stub = client(
        {
            ("POST", "/v1/load_lora_adapter"): (200, "Success: LoRA adapter 'a' added successfully."),
            ("POST", "/v1/unload_lora_adapter"): (200, "Success: LoRA adapter 'a' removed successfully."),
        }
    )
    c.load_lora("a", Path("adapters/a"))
    c.unload_lora("a")
    assert stub.sent[0][2] == {"lora_name": "a", "lora_path": str(Path("adapters/a").absolute())}
    assert stub.sent[1][2] == {"lora_name": "a"}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404}},
            "HTTP 404: The model `x` does not exist.",
        ),
        ({"detail": "Not Found"}, "HTTP 404: Not Found"),
        ("<html>proxy error</html>", "HTTP 404: <html>proxy error</html>"),
    ],
)
def test_errors_quote_the_servers_message(answer: Any, message: str) -> None:
    c, _ = client({("POST", "/v1/completions"): (404, answer)})
    with pytest.raises(EngineError, match=message.replace("(", r"\(")):
        c.complete("x", model="x", max_tokens=1)


def test_a_failed_connection_says_what_the_caller_knows() -> None:
    stub = Stub({("GET", "/v1/models"): (0, TransportError("connection refused"))})
    c = OpenAIClient("http://server:8000", transport=stub, describe=lambda: "the server has exited")
    with pytest.raises(
        EngineError, match="GET .*/v1/models failed \\(connection refused\\); the server has exited"
    ):
        c.models()


def test_health_is_false_while_nobody_answers() -> None:
    c, _ = client({("GET", "/health"): (0, TransportError("refused"))})
    assert not c.healthy()
    c, _ = client({("GET", "/health"): (200, "")})
    assert c.healthy()
