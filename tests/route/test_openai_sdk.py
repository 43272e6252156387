"""The official `openai` Python SDK against the router, unchanged: chat, completions, streaming, the model list,
and the router's refusals arriving as the SDK's own exception types."""

from __future__ import annotations

import openai
import pytest
from test_router_server import World, world  # noqa: F401  (the fixture: stand-ins, the router between them)


def sdk(world: World, key: str = "key-product") -> openai.OpenAI:  # noqa: F811
    return openai.OpenAI(base_url=f"{world.router.url}/v1", api_key=key, max_retries=0, timeout=10)


def test_chat_completions_and_models_through_the_sdk(world: World) -> None:  # noqa: F811
    client = sdk(world)
    chat = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello there"}])
    assert chat.choices[0].message.content == "echo hello there"
    assert chat.usage is not None and chat.usage.prompt_tokens > 0
    done = client.completions.create(model="chat", prompt="hello there", max_tokens=8)
    assert done.choices[0].text
    assert "chat" in {m.id for m in client.models.list()}


def test_a_stream_arrives_chunk_by_chunk_through_the_sdk(world: World) -> None:  # noqa: F811
    stream = sdk(world).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hello there"}], stream=True
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces).strip() == "echo hello there"


def test_refusals_are_the_sdks_own_errors(world: World) -> None:  # noqa: F811
    message = [{"role": "user", "content": "hello there"}]
    with pytest.raises(openai.AuthenticationError):
        sdk(world, key="not-a-key").chat.completions.create(model="chat", messages=message)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        sdk(world).chat.completions.create(model="no-such-route", messages=message)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):
        sdk(world, key="key-tight").chat.completions.create(model="chat", messages=message, max_tokens=500)  # type: ignore[arg-type]
