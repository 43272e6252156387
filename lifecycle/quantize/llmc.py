"""llmcompressor: the one module that imports it. Turns a merged model folder into a compressed-tensors folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lifecycle.recipe.schema import QuantScheme

# Our scheme names -> what llmcompressor is given. Static schemes calibrate activation scales on real data.
PRESETS: dict[str, str] = {
    "FP8_DYNAMIC": "FP8_DYNAMIC",
    "FP8_BLOCK": "FP8_BLOCK",
    "FP8_STATIC": "FP8",
    "W8A8": "W8A8",
    "W4A16": "W4A16",
}
CALIBRATED = frozenset({"FP8_STATIC", "W8A8_STATIC"})


def needs_calibration(scheme: QuantScheme) -> bool:
    return scheme in CALIBRATED


def modifier_kwargs(scheme: QuantScheme, ignore: list[str]) -> dict[str, Any]:
    """Arguments of llmcompressor's QuantizationModifier for a scheme (pure, so it is testable and hashable)."""
    if scheme == "W8A8_STATIC":
        # int8 weights per channel, int8 activations per tensor with scales fixed by calibration
        group = {
            "targets": ["Linear"],
            "weights": {
                "num_bits": 8,
                "type": "int",
                "symmetric": True,
                "strategy": "channel",
                "dynamic": False,
            },
            "input_activations": {
                "num_bits": 8,
                "type": "int",
                "symmetric": True,
                "strategy": "tensor",
                "dynamic": False,
            },
        }
        return {"config_groups": {"group_0": group}, "ignore": list(ignore)}
    return {"targets": "Linear", "scheme": PRESETS[scheme], "ignore": list(ignore)}


def quantize(
    model_dir: Path,
    out_dir: Path,
    scheme: QuantScheme,
    ignore: list[str],
    calibration_texts: list[str] | None,
    max_length: int,
) -> None:
    """Run oneshot on `model_dir` and save the compressed model (and tokenizer) to `out_dir`."""
    import torch
    from datasets import Dataset
    from llmcompressor import LoggerConfig, configure_logger, oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    configure_logger(
        LoggerConfig(console_log_level="WARNING")
    )  # its INFO stream drowns the stage's own output
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    modifier = QuantizationModifier(**modifier_kwargs(scheme, ignore))
    kwargs: dict[str, Any] = {}
    if calibration_texts:
        encoded = tokenizer(
            calibration_texts, truncation=True, max_length=max_length, add_special_tokens=False
        )
        kwargs = {
            "dataset": Dataset.from_dict(dict(encoded)),
            "num_calibration_samples": len(calibration_texts),
            "max_seq_length": max_length,
            "shuffle_calibration_samples": False,  # the sample is already drawn, seeded, by the stage
        }
    with torch.no_grad():
        oneshot(model=model, recipe=modifier, **kwargs)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, out_dir / "generation_config.json")
