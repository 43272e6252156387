"""The chain check and the gate on one server per artifact, against the fake engine (no vLLM): which servers a run
starts, what each is asked, what is kept for a resume, and the verdicts that come out.

The run is real (prepared from recipes/demo.yaml, its results saved as the stages would); its models are folders
with the tiny base's files, served by scripted models: the base knows the facts but not the tickets, the fine-tune
knows both (or, in one test, has forgotten facts, or was merged wrong).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lifecycle import manifest
from lifecycle.engines.fake import FakeServe, fake_serve
from lifecycle.engines.fake_model import HfTokenizer, TableModel
from lifecycle.errors import StageError
from lifecycle.gate.stage import Gate
from lifecycle.quantize.chain import ChainCheck
from lifecycle.recipe.load import load_recipe
from lifecycle.registry.tracking import Tracker
from lifecycle.results import Cost, QuantizeResult, TrainResult
from lifecycle.runner import OpenRun, run_stage
from lifecycle.runs import RunDir
from lifecycle.train import stage as train_stage
from lifecycle.train.accuracy import prompt_text
from lifecycle.train.data import load_examples

REPO = Path(__file__).parents[1]
FACTS = [
    json.loads(line) for line in (REPO / "evals" / "data" / "general-facts.jsonl").read_text().splitlines()
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A prepared demo run (no MLflow recording later: stages get no tracker)."""
    home = tmp_path_factory.mktemp("measure")
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts")
    loaded = load_recipe(REPO / "recipes" / "demo.yaml")
    return train_stage.prepare(loaded, home / "runs", tracker, REPO)


def _model_folder(tiny_base: Path, target: Path) -> Path:
    shutil.copytree(tiny_base, target)
    manifest.write(target)
    return target


@pytest.fixture
def run(prepared: RunDir, tiny_base: Path, tmp_path: Path) -> RunDir:
    """A copy of the prepared run, 'trained' and 'quantized': results pointing at model folders."""
    copy = RunDir(tmp_path / "run")
    shutil.copytree(prepared.path, copy.path)
    merged = _model_folder(tiny_base, tmp_path / "merged")
    quantized = _model_folder(tiny_base, tmp_path / "quantized")
    (tmp_path / "adapter").mkdir()
    copy.save(
        "train",
        TrainResult(
            model_dir=str(merged),
            manifest_digest=manifest.read(merged).digest,
            adapter_dir=str(tmp_path / "adapter"),
            base_model_dir=str(tiny_base),
            base_manifest_digest="-",
            method="lora",
            steps=1,
            resumed_from_step=None,
            final_loss=None,
            eval_accuracy=None,
            base_eval_accuracy=None,
            wall_s=0.0,
            data={},
            cost=Cost(),
            launch={},
        ),
    )
    copy.save(
        "quantize",
        QuantizeResult(
            model_dir=str(quantized),
            manifest_digest=manifest.read(quantized).digest,
            scheme="FP8_DYNAMIC",
            quantization_config={},
            config_sha256="-",
            calibration_ids=[],
            source_dir=str(merged),
            source_manifest_digest=manifest.read(merged).digest,
            bytes_before=2,
            bytes_after=1,
            wall_s=0.0,
        ),
    )
    return copy


def _tickets(run: RunDir, tiny_base: Path) -> dict[str, str]:
    """Each held-out ticket's prompt, from the user's text on (lm-eval renders the same template around it),
    and its label."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    recipe = load_recipe(run.recipe_path).recipe
    assert recipe.data.eval is not None
    table = {}
    for example in load_examples(recipe.data.eval, recipe.data.format):
        assert example.prompt_messages is not None and example.target is not None
        prompt = prompt_text(tokenizer, example)
        user = example.prompt_messages[-1]["content"]
        table[prompt[prompt.index(user) :]] = example.target
    return table


def _serve(run: RunDir, tiny_base: Path, tmp_path: Path, **changed: TableModel) -> FakeServe:
    facts = {row["question"]: " " + row["choices"][row["answer"]] for row in FACTS}
    base = TableModel(facts)
    tuned = TableModel({**facts, **_tickets(run, tiny_base)})
    models = {
        "base": base,
        "adapter": tuned,
        "merged": tuned,
        "quantized": tuned.with_answers({}, shift=-0.01),
    }
    models.update(changed)
    by_path = {
        str(tiny_base): models["base"],
        str(tmp_path / "adapter"): models["adapter"],
        str(tmp_path / "merged"): models["merged"],
        str(tmp_path / "quantized"): models["quantized"],
    }
    return fake_serve(by_path, tokenizer=HfTokenizer(tiny_base))


def _stages(serve: FakeServe) -> tuple[ChainCheck, Gate]:
    gate = Gate(serve, REPO / "evals", find_production=lambda name, target: None)
    return ChainCheck(serve, gate=gate.needs), gate


@pytest.mark.slow
def test_a_run_serves_each_artifact_once_for_the_chain_check_and_the_gate(
    run: RunDir, tiny_base: Path, tmp_path: Path
) -> None:
    serve = _serve(run, tiny_base, tmp_path)
    chain, gate = _stages(serve)
    opened = OpenRun.open(run, None)
    report = run_stage(chain, opened)
    gated = run_stage(gate, opened)
    # general-facts asks for prompt log-probs, which a LoRA-enabled server cannot give: the base gets its own
    assert [(d.name, sorted(loras)) for d, loras in serve.starts] == [
        (tiny_base.name, ["adapter"]),
        ("merged", []),
        ("quantized", []),
        (tiny_base.name, []),
    ]
    assert report.passed
    assert report.accuracy == {"base": 0.0, "adapter": 1.0, "merged": 1.0, "quantized": 1.0}
    assert gated.passed, gated.verdict
    assert gated.scores["baseline"]["support-tickets"]["exact_match"] == 0.0  # the base, the adapter off
    # questions that several items share ("The capital of") have one scripted answer: the rest score 0 alike
    facts = {side: gated.scores[side]["general-facts"]["acc"] for side in ("baseline", "merged", "candidate")}
    assert facts["baseline"] == facts["merged"] == facts["candidate"] > 0.8
    # kept for a resume, and reused: neither stage starts a server again
    assert sorted(p.name for p in (run.path / "gate" / "sides").iterdir()) == [
        "baseline.json",
        "candidate.json",
        "merged.json",
    ]
    assert run_stage(gate, opened) == gated and len(serve.starts) == 4


@pytest.mark.slow
def test_a_fine_tune_that_forgot_what_the_base_knew_fails_the_gate(
    run: RunDir, tiny_base: Path, tmp_path: Path
) -> None:
    forgotten = {row["question"]: " " + row["choices"][(row["answer"] + 1) % 4] for row in FACTS[::3]}
    serve = _serve(run, tiny_base, tmp_path)
    forgetful = serve.models[str(tmp_path / "quantized")].with_answers(forgotten)  # type: ignore[attr-defined]
    serve.models[str(tmp_path / "quantized")] = forgetful
    serve.models[str(tmp_path / "merged")] = forgetful
    serve.models[str(tmp_path / "adapter")] = forgetful
    chain, gate = _stages(serve)
    opened = OpenRun.open(run, None)
    run_stage(chain, opened)
    gated = run_stage(gate, opened)
    assert not gated.passed
    (facts,) = [r for r in gated.verdict.rules if r.task == "general-facts" and r.rule == "no_regress"]
    assert facts.status == "fail" and facts.delta < -0.2
    tickets = next(r for r in gated.verdict.rules if r.task == "support-tickets")
    assert tickets.status == "pass"


@pytest.mark.slow
def test_an_interrupted_check_resumes_with_the_servers_it_had_not_finished(
    run: RunDir, tiny_base: Path, tmp_path: Path
) -> None:
    serve = _serve(run, tiny_base, tmp_path)
    calls = {"n": 0}

    def dies_on_the_third(model_dir: Path, loras: dict[str, Path]):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return serve(model_dir, loras)

    chain, _ = _stages(dies_on_the_third)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        run_stage(chain, OpenRun.open(run, None))
    assert not run.has("chain")
    chain, gate = _stages(serve)
    opened = OpenRun.open(run, None)
    run_stage(chain, opened)
    run_stage(gate, opened)
    # the third once more, then the base model for the baseline (general-facts scores prompts)
    assert [d.name for d, _ in serve.starts] == [tiny_base.name, "merged", "quantized", tiny_base.name]


@pytest.mark.slow
def test_a_merge_bug_stops_the_check_before_the_quantized_model_is_served(
    run: RunDir, tiny_base: Path, tmp_path: Path
) -> None:
    tickets = _tickets(run, tiny_base)
    wrong = {prompt: "shipping" if label != "shipping" else "billing" for prompt, label in tickets.items()}
    serve = _serve(run, tiny_base, tmp_path)
    serve.models[str(tmp_path / "merged")] = serve.models[str(tmp_path / "merged")].with_answers(wrong)  # type: ignore[attr-defined]
    chain, _ = _stages(serve)
    with pytest.raises(StageError, match="the merge is wrong"):
        run_stage(chain, OpenRun.open(run, None))
    assert [d.name for d, _ in serve.starts] == [tiny_base.name, "merged"]
