"""Held-out exact-match accuracy by greedy generation: a quick, honest signal that the fine-tune learned.

The gate measures the served artifact properly later; this number goes on the training run so a failed
fine-tune is visible before anything is quantized or served.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.train.data import Example

MAX_ITEMS = 200


def generation_accuracy(model_dir: Path, examples: list[Example], max_items: int = MAX_ITEMS) -> float | None:
    """Fraction of examples whose greedy completion equals the target (whitespace-stripped); None for plain text."""
    items = [e for e in examples if e.target is not None][:max_items]
    if not items:
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    prompts = [prompt_text(tokenizer, e) for e in items]
    max_new = max(len(tokenizer(e.target or "").input_ids) for e in items) + 4
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(prompts), 32):
            batch = tokenizer(
                prompts[start : start + 32], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            out = model.generate(  # type: ignore[misc]
                **batch, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            texts = tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
            for text, example in zip(texts, items[start : start + 32], strict=True):
                correct += int(text.strip() == (example.target or "").strip())
    return correct / len(items)


def prompt_text(tokenizer: object, example: Example) -> str:
    """The prompt exactly as the model saw it in training: chat template plus generation prompt, or raw text."""
    if example.prompt_messages is not None:
        return tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            example.prompt_messages, tokenize=False, add_generation_prompt=True
        )
    return example.prompt_text or ""
