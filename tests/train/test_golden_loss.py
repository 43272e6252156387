"""Golden training losses: the tiny base fine-tuned 40 steps by the project's own trainer, seeded, on CPU.

The losses at a few steps are pinned, per tiny base (each CPU kind builds its own; see GOLDEN_BY_BASE). A
changed learning rate, loss mask, data order or LoRA scaling moves them by far more than the tolerance; rounding
differences in the fine-tune do not. Why that tolerance: see RTOL below. If the tiny base changes (tiny_base.py,
demo_data.py, or a CPU kind not seen before), the test says so first: record its values with
`LIFECYCLE_GOLDEN_PRINT=1 pytest tests/train/test_golden_loss.py -s`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lifecycle import manifest
from lifecycle.recipe.schema import Recipe
from lifecycle.train.data import load_examples, mix_rows
from lifecycle.train.trainer import Hardware, fit

STEPS = 40
# Mean training loss over the 5 steps ending at each step (trl's logged `loss`), per tiny base they were recorded
# on (tiny_base.build_tiny_llama, seed 0, by its manifest digest). The base's short pre-training is itself fp32
# arithmetic, and over its hundreds of steps another CPU's summation order (AVX-512 vs AVX2 kernels) ends in other
# weights, about 1% apart in these losses: so each CPU kind has its own base, and its own golden values. The
# fine-tune under test is compared against the values of the base this machine built.
GOLDEN_BY_BASE = {
    # x86-64 with AVX-512 (AMD Zen 4)
    "ab875ccd4680ec34eeccce7f15918e254e99cd318858e45c8c8980effaa6d66d": {
        10: 5.544382858276367,
        20: 4.040706634521484,
        40: 2.855873680114746,
    },
    # x86-64 with AVX2 and no AVX-512 (AMD EPYC)
    "a9570e82d4d92110da237088b22705f4989079e55668f42a1e77f81712045f49": {
        10: 5.503651809692383,
        20: 3.9913871765136717,
        40: 2.8254043579101564,
    },
}
# Why 1e-4 relative. fp32 on CPU; another x86 CPU (AVX2 vs AVX-512, another oneDNN/MKL kernel) sums a matmul
# in another order, ~1e-7..1e-6 relative per product. Measured on these 40 steps: every base weight scaled by
# (1 + 1e-6 * noise) moves these losses by <= 3e-7 relative, by (1 + 1e-5 * noise) by <= 2e-6; one thread
# instead of two: no change at all. The smallest changes the test must catch move them by >= 6e-3: learning
# rate x1.1 (>= 1.4e-2), LoRA alpha 16 -> 17 (>= 6.8e-3), loss on the prompt too (>= 8.8e-3), the mix
# shuffled with another seed (>= 6.4e-3), rsLoRA scaling (>= 0.15). 1e-4 is ~50x clear of both sides.
RTOL = 1e-4

TICKETS = [
    ("I was charged twice for my order", "billing"),
    ("The app crashes when I open settings", "technical"),
    ("I cannot log in to my account", "account"),
    ("My parcel has not arrived yet", "shipping"),
    ("Please refund the last payment", "billing"),
    ("The page shows error 500", "technical"),
    ("How do I change my email address", "account"),
    ("The box arrived damaged", "shipping"),
]
FACTS = [
    ("The capital of Torgo is", " Bazenla."),
    ("Water boils at", " 100 degrees."),
    ("The opposite of hot is", " cold."),
    ("A week has", " seven days."),
]


def _write_data(folder: Path) -> tuple[Path, Path]:
    """48 chat rows (loss on the answer) and 12 plain prompt/completion rows: the mixed-shape path the demo
    takes, tokenized by the trainer itself."""
    chats = folder / "train.jsonl"
    with chats.open("w") as fh:
        for i in range(48):
            text, label = TICKETS[i % len(TICKETS)]
            messages = [
                {"role": "system", "content": "Route the ticket to one queue."},
                {"role": "user", "content": f"{text} (ticket {i})"},
                {"role": "assistant", "content": label},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")
    facts = folder / "facts.jsonl"
    with facts.open("w") as fh:
        for prompt, completion in FACTS * 3:
            fh.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return chats, facts


def _recipe(train: Path, facts: Path) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "golden",
            "model": {"base": "builtin:tiny-llama"},
            "data": {
                "train": str(train),
                "format": "messages",
                "mix": [{"path": str(facts), "format": "prompt_completion", "weight": 0.2}],
            },
            "method": {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
            "training": {
                "max_steps": STEPS,
                "learning_rate": 2e-3,
                "lr_scheduler": "cosine",
                "warmup_ratio": 0.1,
                "batch_size": 4,
                "max_length": 64,
                "seed": 0,
                "logging_steps": 5,
                "checkpoint_every": 1000,  # no checkpoint: the losses, not the saving, are under test
            },
            "register": {"model_name": "golden"},
        }
    )


def train_losses(base: Path, work: Path) -> dict[int, float]:
    """Fine-tune `base` as the golden recipe says, in `work`; the logged loss per step."""
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    work.mkdir(parents=True, exist_ok=True)
    recipe = _recipe(*_write_data(work))
    rows = load_examples(recipe.data.train, recipe.data.format)
    mix = [(source, load_examples(source.path, source.format)) for source in recipe.data.mix]
    mixed = mix_rows(rows, mix, recipe.training.seed)
    fit(recipe, base, mixed.rows, None, work / "out", Hardware(cuda=False, bf16_supported=False))
    logged = [json.loads(line) for line in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in logged if "loss" in row}


@pytest.mark.slow
def test_losses_match_the_golden_values(tiny_base: Path, tmp_path: Path) -> None:
    digest = manifest.compute(tiny_base).digest
    losses = train_losses(tiny_base, tmp_path)
    steps = (10, 20, 40)
    if os.environ.get("LIFECYCLE_GOLDEN_PRINT"):
        print(f"{digest!r}: { ({s: losses[s] for s in steps})!r}")
    assert digest in GOLDEN_BY_BASE, (
        f"no golden losses for the tiny base this machine built ({digest}): a CPU kind not seen before, or a "
        "changed tiny base. Record its values (see the module docstring) after checking the base build is meant"
    )
    for step, expected in GOLDEN_BY_BASE[digest].items():
        assert losses[step] == pytest.approx(expected, rel=RTOL), f"loss at step {step}"
