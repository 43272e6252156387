from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lifecycle.train import demo_data, tiny_base
from lifecycle.train.tiny_base import build_tiny_llama

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_folder_looks_like_a_bf16_llama_checkpoint(tiny_base: Path) -> None:
    assert {p.name for p in tiny_base.iterdir()} >= FILES
    config = AutoConfig.from_pretrained(tiny_base)
    assert config.model_type == "llama" and config.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eot|>", "<|pad|>")
    assert "{% generation %}" in tok.chat_template
    gen = GenerationConfig.from_pretrained(tiny_base)
    assert (
        (gen.eos_token_id, gen.pad_token_id)
        == (tok.eos_token_id, tok.pad_token_id)
        == (config.eos_token_id, 2)
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert model.dtype == torch.bfloat16  # transformers 5 loads with dtype="auto"
    assert len(tok) <= config.vocab_size


def test_chat_template_renders_turns_and_a_generation_prompt(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|system|>\nS<|eot|><|user|>\nU<|eot|><|assistant|>\n"
    full = tok.apply_chat_template([*chat, {"role": "assistant", "content": "billing"}], tokenize=False)
    assert full == prompt + "billing<|eot|>"
    # trl's prompt/completion loss needs the tokenized prompt to be a prefix of prompt + completion.
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids and full_ids[-1] == tok.eos_token_id
    assert tok("hello")["input_ids"][0] == tok.bos_token_id  # plain text gets BOS, like Llama's tokenizer


def test_assistant_mask_covers_the_answer_and_its_end_of_turn(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    chat = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "billing"}]
    out = tok.apply_chat_template(chat, return_assistant_tokens_mask=True, return_dict=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "billing<|eot|>"


def test_greedy_generation_stops_at_end_of_turn(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    chats = [chat[:-1] for chat in demo_data.fact_chats(seed=0)[:6]]
    chats.append(demo_data.make_tickets(1, seed=5)[0]["messages"][:2])
    batch = tok.apply_chat_template(
        chats, add_generation_prompt=True, padding=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for row in out.tolist():
        assert tok.eos_token_id in row[:8], tok.decode(row)


def _mc_accuracy(model: Any, tok: Any, items: list[dict]) -> float:
    """lm-eval's multiple-choice `acc`: the choice whose tokens get the highest summed log-probability wins."""
    seqs, spans = [], []
    for item in items:
        n_ctx = len(tok(item["question"])["input_ids"])
        for choice in item["choices"]:
            seqs.append(tok(f"{item['question']} {choice}")["input_ids"])
            spans.append((n_ctx, len(seqs[-1])))
    batch = tok.pad({"input_ids": seqs}, return_tensors="pt")
    with torch.no_grad():
        logp = model(**batch).logits.float().log_softmax(-1)
    token_logp = logp[:, :-1].gather(2, batch["input_ids"][:, 1:, None])[..., 0]
    scores = [token_logp[i, a - 1 : b - 1].sum().item() for i, (a, b) in enumerate(spans)]
    picks = [max(range(4), key=lambda j: scores[4 * k + j]) for k in range(len(items))]
    return sum(pick == item["answer"] for pick, item in zip(picks, items, strict=True)) / len(items)


def test_base_knows_its_facts_but_cannot_route_tickets(tiny_base: Path) -> None:
    """The general eval must start well above chance (25%), so that a fine-tune has something to lose.
    (Seed 0 scores 63/96 here; seeds 1 and 2 score 66 and 89.)"""
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert _mc_accuracy(model, tok, demo_data.general_mc_items(seed=0, n=96)) >= 0.5
    tok.padding_side = "left"  # for generation
    chats = [row["messages"] for row in demo_data.make_tickets(12, seed=9)]
    batch = tok.apply_chat_template(
        [c[:2] for c in chats],
        add_generation_prompt=True,
        padding=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)[:, batch["input_ids"].shape[1] :]
    answers = tok.batch_decode(out, skip_special_tokens=True)
    assert sum(a.strip() == c[2]["content"] for a, c in zip(answers, chats, strict=True)) <= 2


def test_second_build_is_a_cache_hit(tiny_base: Path) -> None:
    start = time.perf_counter()
    assert build_tiny_llama(tiny_base.parent) == tiny_base
    assert time.perf_counter() - start < 2
    assert not list(
        tiny_base.parent.glob(f".*.tmp-{os.getpid()}-*")
    )  # this process left no half-built folder


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(out: Path, seed: int) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_base, "_build", crash)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_llama(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_lost_race_returns_the_winners_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / f"tiny-llama-{tiny_base.cache_key(0)[:12]}"

    def build_while_another_process_wins(out: Path, seed: int) -> None:
        out.mkdir()
        (out / "config.json").write_text("mine")
        final.mkdir()
        (final / "config.json").write_text("theirs")

    monkeypatch.setattr(tiny_base, "_build", build_while_another_process_wins)
    assert build_tiny_llama(tmp_path) == final
    assert (final / "config.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_cache_key_depends_on_seed_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    key = tiny_base.cache_key(0)
    assert key == tiny_base.cache_key(0) != tiny_base.cache_key(1)
    monkeypatch.setitem(tiny_base.TRAINING, "steps", 1)
    assert tiny_base.cache_key(0) != key


@pytest.mark.slow
def test_same_seed_builds_byte_identical_files(tiny_base: Path, tmp_path: Path) -> None:
    """A fresh build in another folder matches the cached one (possibly built by an earlier run: a mismatch
    then means the builder changed without a BUILDER_VERSION bump)."""
    fresh = build_tiny_llama(tmp_path)
    assert fresh.name == tiny_base.name
    for name in FILES:
        assert _sha256(fresh / name) == _sha256(tiny_base / name), name
