"""llmcompressor: the one module that imports it. Turns a merged model folder into a compressed-tensors folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from lifecycle.recipe.schema import ConcreteScheme

# Our scheme names -> what llmcompressor is given. Static schemes calibrate activation scales on real data.
PRESETS: dict[str, str] = {
    "FP8_DYNAMIC": "FP8_DYNAMIC",
    "FP8_BLOCK": "FP8_BLOCK",
    "FP8_STATIC": "FP8",
    "W8A8": "W8A8",
    "W4A16": "W4A16",
}
CALIBRATED = frozenset({"FP8_STATIC", "W8A8_STATIC"})


def needs_calibration(scheme: ConcreteScheme) -> bool:
    return scheme in CALIBRATED


def modifier_kwargs(scheme: ConcreteScheme, ignore: list[str]) -> dict[str, Any]:
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
    scheme: ConcreteScheme,
    ignore: list[str],
    calibration_texts: list[str] | None,
    max_length: int,
    log_path: Path | None = None,
) -> None:
    """Run oneshot on `model_dir` and save the compressed model (and tokenizer) to `out_dir`.

    llmcompressor's log and the libraries' warnings go to `log_path`, not the terminal: known-benign notes
    ("No accelerator available!" on a CPU host, "offloaded modules" on save) would bury the stage's own lines.
    """
    # its import already logs (device detection) before any configure call; only the environment reaches that
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    from llmcompressor import LoggerConfig, configure_logger

    logged = log_path is not None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    configure_logger(
        LoggerConfig(
            console_log_level="ERROR",
            log_file=str(log_path) if logged else None,
            log_file_level="INFO" if logged else None,
        )
    )
    sink = log_path.open("a") if log_path is not None else open(os.devnull, "w")  # noqa: SIM115
    # compressed-tensors draws its progress bars with disable=False whatever TQDM_DISABLE says: to the log
    with sink, contextlib.redirect_stderr(sink), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quantize(model_dir, out_dir, scheme, ignore, calibration_texts, max_length)
    if log_path is not None and caught:
        with log_path.open("a") as fh:
            fh.writelines(f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})\n" for w in caught)


def _quantize(
    model_dir: Path,
    out_dir: Path,
    scheme: ConcreteScheme,
    ignore: list[str],
    calibration_texts: list[str] | None,
    max_length: int,
) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
