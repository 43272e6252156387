"""The fake engine's answers in vLLM's wire shapes: one completion choice, and an error body.

Shapes as vLLM 0.x writes them (vllm/entrypoints/openai/completion/serving.py, `_create_completion_logprobs`):
with `echo`, the prompt's tokens come first in `logprobs` (the first one with a null log-prob and null top
log-probs) and, unless `return_token_ids` is set, the prompt's text heads `text`; `top_logprobs` holds the chosen
token and the best `logprobs` alternatives; `token_ids` are the generated ids only, `prompt_token_ids` the
prompt's. A stop string ends the text before it (finish_reason "stop", `stop_reason` the string); running out of
`max_tokens` is finish_reason "length"; the EOS token ends an answer ("stop") and counts as generated, but
is not in the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lifecycle.engines.fake_model import FakeModel, Step, Tokenizer

DEFAULT_MAX_TOKENS = 16


def error_body(message: str, kind: str, status: int) -> dict[str, Any]:
    """vLLM's ErrorResponse."""
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def completion_choice(
    model: FakeModel, tokenizer: Tokenizer, prompt: Sequence[int], body: Mapping[str, Any], index: int
) -> dict[str, Any]:
    """One choice of a /v1/completions answer to `prompt` (token ids) under the request `body`."""
    max_tokens = body.get("max_tokens")
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens)
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else list(stops)
    steps = model.generate(prompt, max_tokens, tokenizer)[:max_tokens]
    prompt_text = tokenizer.decode(prompt)
    ended = bool(steps) and steps[-1].token == tokenizer.eos
    finish = "stop" if ended or len(steps) < max_tokens else "length"
    stop_reason: str | None = None
    words = [s.token for s in steps if s.token != tokenizer.eos]  # EOS is a special token: not in the text
    text = _text_after(tokenizer, prompt, words, prompt_text)
    for n in range(1, len(words) + 1):  # the first stop string to appear ends the answer
        so_far = _text_after(tokenizer, prompt, words[:n], prompt_text)
        hit = min(((so_far.find(s), s) for s in stops if s and s in so_far), default=None)
        if hit is not None:
            steps, text, finish, stop_reason = steps[:n], so_far[: hit[0]], "stop", hit[1]
            break
    generated = [s.token for s in steps]
    echo = bool(body.get("echo"))
    logprobs = body.get("logprobs")
    choice: dict[str, Any] = {
        "index": index,
        "text": (prompt_text if echo and not body.get("return_token_ids") else "") + text,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": stop_reason,
        "token_ids": generated,
        "prompt_logprobs": None,
        "prompt_token_ids": list(prompt),
    }
    if logprobs is not None:
        scored: list[Step | None] = [*(model.score(prompt, tokenizer) if echo else []), *steps]
        tokens = [*(prompt if echo else []), *generated]
        choice["logprobs"] = _logprobs(tokenizer, tokens, scored, int(logprobs))
    return choice


def _text_after(tokenizer: Tokenizer, prompt: Sequence[int], generated: list[int], prompt_text: str) -> str:
    """The generated text as it reads after the prompt (tokenizers join tokens differently at the start)."""
    full = tokenizer.decode([*prompt, *generated])
    return full[len(prompt_text) :] if full.startswith(prompt_text) else tokenizer.decode(generated)


def _logprobs(
    tokenizer: Tokenizer, tokens: list[int], steps: list[Step | None], top_n: int
) -> dict[str, Any]:
    """vLLM's CompletionLogProbs: a token's text is the decoding of that token alone."""
    out: dict[str, Any] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    offset = 0
    for token, step in zip(tokens, steps, strict=True):
        text = tokenizer.decode([token])
        out["text_offset"].append(offset)
        out["tokens"].append(text)
        offset += len(text)
        if step is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(max(step.logprob, -9999.0))
        best = sorted(step.top.items(), key=lambda item: -item[1])[:top_n]
        top = {text: max(step.logprob, -9999.0)}
        for alternative, logprob in best:
            top.setdefault(tokenizer.decode([alternative]), max(logprob, -9999.0))
        out["top_logprobs"].append(top)
    return out
