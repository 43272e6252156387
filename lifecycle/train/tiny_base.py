"""The built-in base model: a tiny Llama built locally from seeded data, our stand-in for a real checkpoint.

No model hub is reachable here, so tests and the demo need a base model they can make themselves. The folder
this writes looks like any Llama/Qwen checkpoint on disk (bf16 safetensors, a fast BPE tokenizer with a chat
template, a generation config), so every later stage treats it as a real model. It is pre-trained for a few
seconds on `demo_data.pretraining_corpus`, because LoRA cannot learn on a random base. Builds are
deterministic and cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lifecycle.train import demo_data

# Bump when the build changes in a way the settings below do not capture: it invalidates every cache entry.
BUILDER_VERSION = 1

BOS, EOT, PAD = "<|bos|>", "<|eot|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# ChatML-like. Each turn ends with EOT, which is also the EOS token, so generation stops right after the
# answer. The assistant turn sits in generation markers, so trl's assistant_only_loss can mask it as well.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|eot|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|eot|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

ARCH: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,  # head_dim 64: a size every attention kernel (vLLM CPU included) supports
    "num_key_value_heads": 2,  # grouped-query attention, like current Llama and Qwen checkpoints
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
}
TRAINING: dict[str, Any] = {
    "vocab_size": 1536,
    "block": 128,
    "batch": 8,
    "steps": 200,
    "lr": 3e-3,
    "warmup": 30,
}


def _sources(seed: int) -> tuple[list[str], list[list[dict[str, str]]], list[str]]:
    """Pre-training text, pre-training chats, and extra text the tokenizer alone sees (the demo tickets)."""
    tickets = [row["messages"][1]["content"] for row in demo_data.make_tickets(500, seed)]
    extra = [*tickets, demo_data.SYSTEM_PROMPT, *demo_data.LABELS]
    return demo_data.pretraining_corpus(seed), demo_data.fact_chats(seed), extra


def cache_key(seed: int = 0) -> str:
    """Hash of all the weights depend on: builder version, seed, architecture, training settings, corpus."""
    corpus = hashlib.sha256(json.dumps([_sources(seed), CHAT_TEMPLATE]).encode()).hexdigest()
    spec = {"version": BUILDER_VERSION, "seed": seed, "arch": ARCH, "training": TRAINING, "corpus": corpus}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def build_tiny_llama(cache_root: Path, seed: int = 0) -> Path:
    """Return the folder of the tiny base for `seed`, building it (~30 s on 2 cores) unless already cached.

    The model is built in a hidden sibling folder and renamed into place, so a folder at the returned path is
    always complete; concurrent builders race harmlessly (the first rename wins, the other drops its copy).
    """
    cache_root = Path(cache_root)
    final = cache_root / f"tiny-llama-{cache_key(seed)[:12]}"
    if (final / "config.json").is_file():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _build(tmp, seed)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _train_tokenizer(texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINING["vocab_size"],
        special_tokens=[BOS, EOT, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Plain `tokenizer(text)` prepends BOS like Llama's does; the chat template writes its own BOS instead.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=ARCH["max_position_embeddings"],
    )


@contextmanager
def _deterministic_torch(seed: int) -> Any:
    """One thread and fixed seeds: the same weights, bit for bit, on every run and whatever the core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        yield
    finally:
        torch.set_num_threads(threads)


def _blocks(tokenizer: Any, texts: list[str], chats: list[list[dict[str, str]]], seed: int) -> Any:
    """Pack documents (BOS text EOT, and rendered chats) into one stream cut into fixed-size blocks."""
    import torch

    docs = [BOS + text + EOT for text in texts]
    docs += [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    random.Random(f"pack-{seed}").shuffle(docs)
    ids = [i for ids in tokenizer(docs, add_special_tokens=False)["input_ids"] for i in ids]
    block = TRAINING["block"]
    return torch.tensor(ids[: len(ids) // block * block]).view(-1, block)


def _pretrain(model: Any, blocks: Any, seed: int) -> None:
    import torch

    steps, batch, lr, warmup = TRAINING["steps"], TRAINING["batch"], TRAINING["lr"], TRAINING["warmup"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)

    def schedule(step: int) -> float:  # linear warm-up, cosine decay to a tenth
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(blocks), generator=gen), 0
    model.train()
    for _ in range(steps):
        if pos + batch > len(blocks):  # next epoch, in a fresh seeded order
            order, pos = torch.randperm(len(blocks), generator=gen), 0
        x = blocks[order[pos : pos + batch]]
        pos += batch
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def _build(out: Path, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    texts, chats, extra = _sources(seed)
    tokenizer = _train_tokenizer([*texts, *extra])
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    ids["pad_token_id"] = tokenizer.pad_token_id
    config = LlamaConfig(vocab_size=-(-len(tokenizer) // 64) * 64, **ARCH, **ids)
    with _deterministic_torch(seed):
        model: Any = LlamaForCausalLM(config)
        _pretrain(model, _blocks(tokenizer, texts, chats, seed), seed)
    model.generation_config = GenerationConfig(**ids)
    model.to(torch.bfloat16).save_pretrained(out)  # bf16 on disk, as real checkpoints ship
    # The chat template goes inside tokenizer_config.json (the older layout), which every reader understands.
    tokenizer.save_pretrained(out, save_jinja_files=False)
