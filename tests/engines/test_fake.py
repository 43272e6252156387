"""The fake engine: a real HTTP server in vLLM's shapes, answering from scripted models. Our client, the chain
check and lm-eval's `local-completions` (through the gate's `evaluate_server`) get the scripted answers from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

import lifecycle
from lifecycle.engines.base import CompletionEngine, LoraEngine
from lifecycle.engines.fake import FakeEngine, fake_serve
from lifecycle.engines.fake_model import HfTokenizer, TableModel, WordTokenizer
from lifecycle.errors import EngineError

REPO = Path(lifecycle.__file__).resolve().parent.parent
FACTS = REPO / "evals" / "data" / "general-facts.jsonl"
TABLE = TableModel({"The capital of France is": " Paris.", "Two and two make": " four"})

# The fields vLLM's CompletionResponse and CompletionResponseChoice write (vllm/entrypoints/openai/completion/).
RESPONSE_FIELDS = {
    "id",
    "object",
    "created",
    "model",
    "choices",
    "usage",
    "system_fingerprint",
    "kv_transfer_params",
}
CHOICE_FIELDS = {
    "index",
    "text",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "token_ids",
    "prompt_logprobs",
    "prompt_token_ids",
}


@pytest.fixture
def engine() -> FakeEngine:
    with FakeEngine({"tiny": TABLE, "alpha": TABLE.with_answers({"Two and two make": " five"})}) as running:
        yield running  # type: ignore[misc]


def test_it_is_an_engine_and_lists_base_and_adapters(engine: FakeEngine) -> None:
    assert isinstance(engine, CompletionEngine) and isinstance(engine, LoraEngine)
    assert engine.completions_url == f"http://127.0.0.1:{engine.port}/v1/completions"
    assert engine.models() == ["tiny", "alpha"]
    cards = engine.client.model_entries()
    assert (cards[0]["parent"], cards[1]["parent"], cards[1]["object"]) == (None, "tiny", "model")
    assert requests.get(engine.client.root_url + "/health", timeout=5).status_code == 200


def test_greedy_answers_from_the_table_with_logprobs_and_token_ids(engine: FakeEngine) -> None:
    paris, four, unknown = engine.complete(
        ["The capital of France is", "Two and two make", "Who knows"], model="tiny", max_tokens=5, logprobs=1
    )
    assert (paris.text, paris.finish_reason) == (" Paris.", "stop")
    # the answer ends with the EOS token, counted and scored but not in the text, as vLLM's
    assert paris.token_ids == (*WordTokenizer().encode(" Paris."), WordTokenizer.EOS)
    assert paris.tokens == (" Paris.", "<eos>") and paris.token_logprobs == (-0.05, -0.05)
    assert paris.top_logprobs == ({" Paris.": -0.05}, {"<eos>": -0.05})
    assert four.text == " four" and unknown.text == "" and unknown.finish_reason == "stop"
    # the adapter scripted to be wrong is
    assert engine.complete("Two and two make", model="alpha", max_tokens=5)[0].text == " five"


def test_max_tokens_and_stop_strings_end_an_answer(engine: FakeEngine) -> None:
    long = TableModel({"Count:": " one two three four"})
    with FakeEngine({"m": long}) as counting:
        (cut,) = counting.complete("Count:", model="m", max_tokens=2)
        assert (cut.text, cut.finish_reason, len(cut.token_ids)) == (" one two", "length", 2)
        (stopped,) = counting.client.complete("Count:", model="m", max_tokens=9, stop=[" three"])
        assert (stopped.text, stopped.finish_reason) == (" one two", "stop")
        raw = requests.post(
            counting.completions_url, json={"model": "m", "prompt": "Count:", "stop": " three"}, timeout=5
        ).json()
        assert raw["choices"][0]["stop_reason"] == " three"


def test_the_wire_shapes_are_vllms(engine: FakeEngine) -> None:
    body = {
        "model": "tiny",
        "prompt": "The capital of France is",
        "max_tokens": 2,
        "logprobs": 1,
        "echo": True,
    }
    answer = requests.post(engine.completions_url, json=body, timeout=5).json()
    assert set(answer) == RESPONSE_FIELDS and answer["object"] == "text_completion"
    (choice,) = answer["choices"]
    assert set(choice) == CHOICE_FIELDS
    # echo without return_token_ids: the prompt heads the text; its first token has no log-prob
    assert choice["text"] == "The capital of France is Paris."
    assert choice["logprobs"]["token_logprobs"][0] is None and choice["logprobs"]["top_logprobs"][0] is None
    assert choice["logprobs"]["tokens"][-2:] == [" Paris.", "<eos>"] and choice["token_ids"] is None
    assert answer["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": None,
    }
    missing = requests.post(engine.completions_url, json={"model": "x", "prompt": "a"}, timeout=5)
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "The model `x` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }
    assert "vllm:request_success_total" in requests.get(engine.client.root_url + "/metrics", timeout=5).text


def test_echo_scores_each_prompt_token_given_the_ones_before(engine: FakeEngine) -> None:
    right, wrong = engine.client.complete(
        ["The capital of France is Paris.", "The capital of France is Rome."],
        model="tiny",
        max_tokens=0,
        logprobs=1,
        echo=True,
    )
    assert right.token_logprobs[-1] == -0.05  # " Paris." after the key: the expected answer
    assert wrong.token_logprobs[-1] == -6.0 and wrong.top_logprobs[-1] == {" Rome.": -6.0, " Paris.": -0.05}


def test_adapters_load_and_unload_at_runtime(tmp_path: Path) -> None:
    path = tmp_path / "beta"
    with FakeEngine(
        {"tiny": TABLE}, loadable={str(path): TABLE.with_answers({"Two and two make": " 4"})}
    ) as e:
        e.load_lora("beta", path)
        assert e.models() == ["tiny", "beta"]
        assert e.complete("Two and two make", model="beta", max_tokens=3)[0].text == " 4"
        with pytest.raises(EngineError, match="HTTP 400: The lora adapter 'beta' has already been loaded"):
            e.load_lora("beta", path)
        e.unload_lora("beta")
        with pytest.raises(EngineError, match="HTTP 404: The model `beta` does not exist"):
            e.complete("x", model="beta", max_tokens=1)
        with pytest.raises(EngineError, match="HTTP 404: The lora adapter 'beta' cannot be found"):
            e.unload_lora("beta")
        with pytest.raises(EngineError, match="No adapter found"):
            e.load_lora("gamma", tmp_path / "gamma")


def test_fake_serve_stands_in_for_a_server_factory(tmp_path: Path) -> None:
    """What the chain check does with `serve(model_dir, loras)`: each link on its own server, one at a time."""
    base, adapter, merged, quantized = (
        tmp_path / name for name in ("base", "adapter", "merged", "quantized")
    )
    serve = fake_serve({adapter: TABLE, merged: TABLE.with_answers({}, shift=-0.01), base: TableModel({})})
    serve.models["quantized"] = TABLE.with_answers({"Two and two make": " three"})  # broken; found by name
    prompts = ["The capital of France is", "Two and two make"]

    answers = {}
    for link, (model_dir, loras) in {
        "adapter": (base, {"adapter": adapter}),
        "merged": (merged, {}),
        "quantized": (quantized, {}),
    }.items():
        with serve(model_dir, loras) as engine:
            assert isinstance(engine, CompletionEngine)
            name = "adapter" if loras else engine.models()[0]
            answers[link] = engine.complete(prompts, model=name, max_tokens=8, logprobs=0)
        assert engine.models and not engine._thread.is_alive()  # stopped on leaving the block

    assert len(serve.starts) == 3 and serve.starts[0] == (base, {"adapter": adapter})
    assert [a.token_ids for a in answers["adapter"]] == [m.token_ids for m in answers["merged"]]  # same ids
    drift = answers["merged"][0].token_logprobs[0] - answers["adapter"][0].token_logprobs[0]
    assert drift == pytest.approx(-0.01)
    assert [a.text for a in answers["quantized"]] == [" Paris.", " three"]
    with pytest.raises(KeyError, match="no fake model for"):
        serve(tmp_path / "other", {})


def test_lm_evals_local_completions_scores_the_scripted_answers(tiny_base: Path, tmp_path: Path) -> None:
    """general-facts through the gate's evaluate_server: lm-eval sends token ids (the tiny base's tokenizer) and
    asks for echoed log-probs; a model that knows the answers scores 1, one scripted to be wrong 0."""
    from lifecycle.gate.lmeval import evaluate_server, resolve_tasks

    items = [json.loads(line) for line in FACTS.read_text().splitlines()[:6]]
    knows = TableModel({row["question"]: " " + row["choices"][row["answer"]] for row in items})
    wrong = knows.with_answers(
        {items[0]["question"]: " " + items[0]["choices"][(items[0]["answer"] + 1) % 4]}
    )
    resolved = resolve_tasks(["general-facts"], REPO / "evals", tmp_path / "work")
    with FakeEngine({"good": knows, "bad": wrong}, tokenizer=HfTokenizer(tiny_base)) as engine:
        good, bad = (
            evaluate_server(
                resolved,
                completions_url=engine.completions_url,
                model_name=name,
                tokenizer_dir=tiny_base,
                limit=len(items),
                num_concurrent=1,
            )[0]
            for name in ("good", "bad")
        )
        assert engine.requests[0]["echo"] is True and isinstance(engine.requests[0]["prompt"][0], list)

    assert good.metrics["acc"] == {row["id"]: 1.0 for row in items}
    assert bad.metrics["acc"] == {**good.metrics["acc"], items[0]["id"]: 0.0}
