"""Chain check: which servers a run starts, the pure comparison, and a deliberately wrong merge through vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle import manifest, measure
from lifecycle.engines.base import Completion
from lifecycle.errors import StageError
from lifecycle.quantize.chain import ChainCheck, chain_report, compare, judge
from lifecycle.recipe.schema import ChainCheckSpec
from lifecycle.results import Baseline, Cost, QuantizeResult, TrainResult
from lifecycle.runner import OpenRun, run_stage
from lifecycle.runs import RunDir


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


def _results(
    tmp_path: Path, *, adapter: bool = True, scheme: str = "FP8_DYNAMIC"
) -> tuple[TrainResult, QuantizeResult]:
    trained = TrainResult(
        model_dir=str(tmp_path / "merged"),
        manifest_digest="m",
        adapter_dir=str(tmp_path / "adapter") if adapter else None,
        base_model_dir=str(tmp_path / "base"),
        base_manifest_digest="b",
        method="lora" if adapter else "full",
        steps=1,
        resumed_from_step=None,
        final_loss=None,
        eval_accuracy=None,
        base_eval_accuracy=None,
        wall_s=0.0,
        data={},
        cost=Cost(),
        launch={},
    )
    quantized = QuantizeResult(
        model_dir=str(tmp_path / "quantized") if scheme != "none" else trained.model_dir,
        manifest_digest="q",
        scheme=scheme,
        quantization_config={},
        config_sha256="c",
        calibration_ids=[],
        source_dir=trained.model_dir,
        source_manifest_digest="m",
        bytes_before=2,
        bytes_after=1,
        wall_s=0.0,
    )
    return trained, quantized


def _asked(servers: list) -> list[tuple[str, list[str], dict[str, str], list[str]]]:  # type: ignore[type-arg]
    return [(s.model_dir.name, sorted(s.loras), s.chain, sorted(s.gate)) for s in servers]


def test_each_artifact_is_served_once_for_the_chain_check_and_the_gate(tmp_path: Path) -> None:
    trained, quantized = _results(tmp_path)
    servers = measure.plan(
        trained, quantized, chain=True, baseline=Baseline(kind="base", model_dir=str(tmp_path / "base"))
    )
    assert _asked(servers) == [
        ("base", ["adapter"], {"base": "", "adapter": "adapter"}, ["baseline"]),
        ("merged", [], {"merged": ""}, ["merged"]),
        ("quantized", [], {"quantized": ""}, ["candidate"]),
    ]


def test_a_gate_that_scores_prompts_gets_the_base_model_on_a_server_without_lora(tmp_path: Path) -> None:
    """vLLM cannot give prompt log-probs (multiple-choice tasks) from a LoRA-enabled server: measure.LORA_SCORES_PROMPTS."""
    trained, quantized = _results(tmp_path)
    base = Baseline(kind="base", model_dir=str(tmp_path / "base"))
    servers = measure.plan(trained, quantized, chain=True, baseline=base, scores_prompts=True)
    assert _asked(servers) == [
        ("base", ["adapter"], {"base": "", "adapter": "adapter"}, []),
        ("merged", [], {"merged": ""}, ["merged"]),
        ("quantized", [], {"quantized": ""}, ["candidate"]),
        ("base", [], {}, ["baseline"]),
    ]
    full, _ = _results(tmp_path, adapter=False)  # no adapter, no LoRA: the base serves both
    assert [
        s.model_dir.name
        for s in measure.plan(full, quantized, chain=True, baseline=base, scores_prompts=True)
    ] == [
        "base",
        "merged",
        "quantized",
    ]


def test_a_production_baseline_is_the_one_extra_server(tmp_path: Path) -> None:
    trained, quantized = _results(tmp_path)
    production = Baseline(kind="production", model_dir=str(tmp_path / "v3"), version="3")
    servers = measure.plan(trained, quantized, chain=True, baseline=production)
    assert [s.model_dir.name for s in servers] == ["base", "merged", "quantized", "v3"]
    assert servers[0].gate == {} and servers[3].gate == {"baseline": tmp_path / "v3"}


def test_scheme_none_serves_the_merged_model_as_the_candidate(tmp_path: Path) -> None:
    trained, quantized = _results(tmp_path, adapter=False, scheme="none")
    servers = measure.plan(
        trained, quantized, chain=True, baseline=Baseline(kind="base", model_dir=str(tmp_path / "base"))
    )
    assert _asked(servers) == [
        ("base", [], {"base": ""}, ["baseline"]),
        ("merged", [], {"merged": ""}, ["candidate"]),
    ]


def test_the_gate_alone_starts_only_the_servers_it_asks(tmp_path: Path) -> None:
    trained, quantized = _results(tmp_path)
    servers = measure.plan(
        trained, quantized, chain=False, baseline=Baseline(kind="base", model_dir=str(tmp_path / "base"))
    )
    assert [(s.model_dir.name, s.chain, sorted(s.gate)) for s in servers] == [
        ("base", {}, ["baseline"]),
        ("merged", {}, ["merged"]),
        ("quantized", {}, ["candidate"]),
    ]
    assert measure.plan(trained, quantized, chain=False, baseline=None) == []


def test_chain_report_compares_neighbours_on_the_first_prompts_and_scores_every_link() -> None:
    spec = ChainCheckSpec(prompts=2)
    right, wrong = c("billing", (1,), (-0.1,)), c("shipping", (2,), (-0.1,))
    links = {
        "base": [wrong, wrong, wrong],
        "adapter": [right, right, wrong],
        "merged": [right, right, right],
        "quantized": [right, wrong, right],
    }
    report = chain_report(["p1", "p2", "p3"], ["billing", "billing", "billing"], links, spec)
    assert [(p.left, p.right, p.agreement) for p in report.pairs] == [
        ("adapter", "merged", 1.0),  # the third prompt is past spec.prompts
        ("merged", "quantized", 0.5),
    ]
    assert report.accuracy == pytest.approx(
        {"base": 0.0, "adapter": 2 / 3, "merged": 1.0, "quantized": 2 / 3}
    )
    assert report.passed and report.n_prompts == 2


@pytest.mark.vllm
@pytest.mark.slow
def test_chain_fails_a_wrong_merge_before_serving_the_quantized_model(  # type: ignore[no-untyped-def]
    lora_run: RunDir, tmp_path: Path, serve_factory
) -> None:
    """The wrong merge applies the adapter at twice its scaling: exactly the bug users meet."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = lora_run.load("train", TrainResult)
    assert trained.adapter_dir is not None
    wrong_adapter = tmp_path / "wrong-adapter"
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
    manifest.write(wrong_dir)

    copy = RunDir(tmp_path / "run")
    shutil.copytree(
        lora_run.path, copy.path, ignore=shutil.ignore_patterns("engines", "chain", "gate", "train")
    )
    copy.save("train", trained.model_copy(update={"model_dir": str(wrong_dir)}))
    never_served = tmp_path / "quantized"  # stands in for the quantized artifact; it must not be reached
    shutil.copytree(wrong_dir, never_served)
    copy.save("quantize", _results(tmp_path)[1])
    for stage in ("chain", "gate", "register"):
        copy.discard(stage)
    started: list[Path] = []
    serve = serve_factory(tmp_path / "engines")

    def counting(model_dir: Path, loras: dict[str, Path]):  # type: ignore[no-untyped-def]
        started.append(model_dir)
        return serve(model_dir, loras)

    with pytest.raises(StageError, match="the merge is wrong"):
        run_stage(ChainCheck(counting), OpenRun.open(copy, None))
    assert started == [Path(trained.base_model_dir), wrong_dir]  # the quantized model was never served
