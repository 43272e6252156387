"""The quantize stage on the tiny fine-tune: real llmcompressor, compressed-tensors output, recorded provenance."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from lifecycle import manifest
from lifecycle.errors import MissingResultError, RecipeError, StageError
from lifecycle.quantize import llmc
from lifecycle.quantize.stage import Quantize, QuantizeResult, calibration_sample, config_hash
from lifecycle.quantize.target import ServeTarget
from lifecycle.recipe.load import load_recipe
from lifecycle.runner import OpenRun, run_stage
from lifecycle.runs import RunDir
from lifecycle.train.data import load_examples

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def copy_run(run: RunDir, target: Path, scheme: str) -> RunDir:
    """A copy of a trained run with another quantization scheme (results of later stages dropped)."""
    shutil.copytree(run.path, target, ignore=shutil.ignore_patterns("quantize", "chain", "gate", "engines"))
    copy = RunDir(target)
    for stage in ("quantize", "chain", "gate", "register"):
        (copy.results_dir / f"{stage}.json").unlink(missing_ok=True)
    (copy.results_dir / "target.json").unlink(missing_ok=True)  # the named scheme, not the resolved one
    train = json.loads((copy.results_dir / "train.json").read_text())
    text = re.sub(r"(?m)^(\s+scheme:) \S+$", rf"\1 {scheme}", copy.recipe_path.read_text())
    assert f"scheme: {scheme}" in text
    copy.recipe_path.write_text(text)
    (copy.results_dir / "train.json").write_text(json.dumps(train))
    return copy


def test_fp8_resolved_before_training_is_what_the_run_quantizes_with(lora_run: RunDir) -> None:
    target = lora_run.load("target", ServeTarget)  # the demo asks for 'FP8'; the probe decided the layout
    assert target.requested == "FP8" and target.scheme in ("FP8_DYNAMIC", "FP8_BLOCK")
    result = _quantize(lora_run)
    assert result.scheme == target.scheme
    config = json.loads(Path(result.model_dir, "config.json").read_text())["quantization_config"]
    group = next(iter(config["config_groups"].values()))
    assert group["weights"]["strategy"] == ("block" if target.scheme == "FP8_BLOCK" else "channel")


def test_fp8_without_a_resolved_target_is_refused(lora_run: RunDir, tmp_path: Path) -> None:
    run = copy_run(lora_run, tmp_path / "unresolved", "FP8")
    with pytest.raises(StageError, match="never resolved"):
        _quantize(run)
    assert not run.has("quantize")


def test_fp8_block_artifact_carries_its_compressed_tensors_config(lora_run: RunDir, tmp_path: Path) -> None:
    run = copy_run(lora_run, tmp_path / "block", "FP8_BLOCK")
    result = _quantize(run)
    config = json.loads(Path(result.model_dir, "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["format"] == "float-quantized"
    group = next(iter(config["config_groups"].values()))
    assert group["weights"]["type"] == "float" and group["weights"]["num_bits"] == 8
    assert group["weights"]["strategy"] == "block"
    assert "lm_head" in config["ignore"]
    assert result.config_sha256 == config_hash(config)
    assert result.calibration_ids == []  # no calibration
    assert result.bytes_after < result.bytes_before
    manifest.verify(Path(result.model_dir))
    assert run.load("quantize", QuantizeResult) == result


def test_fp8_dynamic_is_per_channel_weights_and_per_token_activations(
    lora_run: RunDir, tmp_path: Path
) -> None:
    run = copy_run(lora_run, tmp_path / "dynamic", "FP8_DYNAMIC")
    result = _quantize(run)
    config = json.loads(Path(result.model_dir, "config.json").read_text())["quantization_config"]
    group = next(iter(config["config_groups"].values()))
    assert group["weights"]["strategy"] == "channel" and group["weights"]["type"] == "float"
    assert group["input_activations"]["dynamic"] is True and group["input_activations"]["strategy"] == "token"
    assert result.scheme == "FP8_DYNAMIC"


def test_static_calibration_draws_from_the_recipes_training_data(lora_run: RunDir, tmp_path: Path) -> None:
    run = copy_run(lora_run, tmp_path / "static", "W8A8_STATIC")
    recipe = load_recipe(run.recipe_path).recipe
    result = _quantize(run)
    train_ids = {e.id for e in load_examples(recipe.data.train, recipe.data.format)}
    assert len(result.calibration_ids) == recipe.quantize.calibration_samples
    assert set(result.calibration_ids) <= train_ids
    config = json.loads(Path(result.model_dir, "config.json").read_text())["quantization_config"]
    group = next(iter(config["config_groups"].values()))
    assert group["input_activations"]["dynamic"] is False and group["input_activations"]["type"] == "int"
    # the same seed draws the same rows: a rerun calibrates identically
    rows = load_examples(recipe.data.train, recipe.data.format)
    again = calibration_sample(rows, recipe.quantize.calibration_samples, recipe.training.seed)
    assert [e.id for e in again] == result.calibration_ids


def test_scheme_arguments_are_what_llmcompressor_expects() -> None:
    assert llmc.modifier_kwargs("FP8_DYNAMIC", ["lm_head"]) == {
        "targets": "Linear",
        "scheme": "FP8_DYNAMIC",
        "ignore": ["lm_head"],
    }
    assert llmc.modifier_kwargs("FP8_STATIC", [])["scheme"] == "FP8"
    assert llmc.needs_calibration("FP8_STATIC") and llmc.needs_calibration("W8A8_STATIC")
    assert not llmc.needs_calibration("FP8_DYNAMIC") and not llmc.needs_calibration("W4A16")


def test_unknown_scheme_is_a_recipe_error_listing_the_allowed_ones() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(REPO / "recipes" / "demo.yaml", ["quantize.scheme=FP4"])
    assert "quantize.scheme" in info.value.problems[0] and "'FP8_DYNAMIC'" in info.value.problems[0]


def test_a_run_without_a_trained_model_is_refused(tmp_path: Path, lora_run: RunDir) -> None:
    run = copy_run(lora_run, tmp_path / "untrained", "FP8_DYNAMIC")
    (run.results_dir / "train.json").unlink()
    with pytest.raises(MissingResultError, match="no train result"):
        _quantize(run)


def _quantize(run: RunDir) -> QuantizeResult:
    """The quantize stage on `run`, recording nowhere (a copied run shares its MLflow run with the original)."""
    return run_stage(Quantize(), OpenRun.open(run, None))
