"""Chain check: the pure comparison, and the real thing through vLLM on an honest and a deliberately wrong merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.engines.base import Completion
from lifecycle.quantize.chain import ChainReport, compare, judge, run_chain
from lifecycle.recipe.schema import ChainCheckSpec
from lifecycle.runs import RunDir, TrainResult


def c(text: str, ids: tuple[int, ...], lps: tuple[float, ...]) -> Completion:
    return Completion(text=text, finish_reason="stop", token_ids=ids, token_logprobs=lps)


def test_compare_counts_agreement_and_drift_on_the_shared_prefix() -> None:
    a = [c("billing", (1, 2), (-0.1, -0.2)), c("refund", (3, 4), (-0.5, -0.5))]
    b = [c("billing", (1, 2), (-0.15, -0.2)), c("shipping", (3, 9), (-0.7, -3.0))]
    stats = compare("adapter", "merged", a, b)
    assert stats.agreement == 0.5
    assert stats.disagreeing == [1]
    # drift over tokens 1,2 of the first and token 3 of the second (they diverge after it)
    assert stats.max_abs_logprob_drift == pytest.approx(0.2)
    assert stats.mean_abs_logprob_drift == pytest.approx((0.05 + 0.0 + 0.2) / 3)


def test_judge_fails_a_merge_beyond_tolerance_but_not_quantization_noise() -> None:
    spec = ChainCheckSpec(max_merge_disagreement=0.1)
    same = [c("x", (1,), (-0.1,))] * 10
    off = [c("y", (2,), (-0.1,))] * 3 + [c("x", (1,), (-0.1,))] * 7
    merge_bug = judge([compare("adapter", "merged", same, off)], spec)
    assert len(merge_bug) == 1 and "the merge is wrong" in merge_bug[0]
    assert judge([compare("merged", "quantized", same, off)], spec) == []  # default quant tolerance: 100%
    assert judge([compare("adapter", "merged", same, same)], spec) == []


@pytest.mark.vllm
@pytest.mark.slow
def test_chain_fails_a_wrong_merge(lora_run: RunDir, tmp_path: Path, serve_factory) -> None:  # type: ignore[no-untyped-def]
    """The wrong merge applies the adapter at twice its scaling: exactly the bug users meet."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lifecycle.quantize.stage import chain_prompts
    from lifecycle.recipe.load import load_recipe

    trained = lora_run.load("train", TrainResult)
    assert trained.adapter_dir is not None
    wrong_adapter = tmp_path / "wrong-adapter"
    import shutil

    shutil.copytree(trained.adapter_dir, wrong_adapter)
    cfg_path = wrong_adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["lora_alpha"] = cfg["lora_alpha"] * 2
    cfg_path.write_text(json.dumps(cfg))
    base = AutoModelForCausalLM.from_pretrained(trained.base_model_dir, dtype=torch.float32)
    wrong = PeftModel.from_pretrained(base, wrong_adapter).merge_and_unload().to(torch.bfloat16)
    wrong_dir = tmp_path / "wrong-merged"
    wrong.save_pretrained(wrong_dir)
    AutoTokenizer.from_pretrained(trained.model_dir).save_pretrained(wrong_dir)

    recipe = load_recipe(lora_run.recipe_path).recipe
    spec = recipe.quantize.chain_check
    prompts = chain_prompts(recipe, Path(trained.model_dir), spec.prompts)
    broken = run_chain(
        prompts,
        spec,
        serve=serve_factory(tmp_path / "engines"),
        base_dir=Path(trained.base_model_dir),
        adapter_dir=Path(trained.adapter_dir),
        merged_dir=wrong_dir,
        quantized_dir=None,
    )
    assert not broken.passed
    assert "the merge is wrong" in broken.problems[0]
    assert isinstance(broken, ChainReport)
    # the honest merge of the same adapter passes: asserted on the real pipeline in tests/test_pipeline.py
