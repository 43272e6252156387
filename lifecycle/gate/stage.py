"""The gate stage: the artifact that will be served, measured through the engine that will serve it, against the
baseline it would replace, item by item; then a pure verdict and its report.

    candidate  = the quantized model (what users will get)
    merged     = the unquantized fine-tune (for quantization recovery)
    baseline   = the version aliased 'production' for this registered name, else the base model
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.engines.base import CompletionEngine
from lifecycle.errors import GateError
from lifecycle.gate import lmeval
from lifecycle.gate.decide import check_rules_against_metrics, decide
from lifecycle.gate.report import render_markdown, render_png
from lifecycle.manifest import write_json_atomic
from lifecycle.measure import Serve
from lifecycle.recipe.load import LoadedRecipe, locate
from lifecycle.registry.tracking import Tracker
from lifecycle.results import Baseline, GateResult, QuantizeResult, TrainResult
from lifecycle.runner import OpenRun

if TYPE_CHECKING:
    from lifecycle.measure import GateNeeds

STAGE = "gate"


# Finds the production version's artifact for a registered name: (version, local dir) or None.
FindProduction = Callable[[str, Path], tuple[str, Path] | None]


def preflight(
    loaded: LoadedRecipe, evals_dir: Path, workdir: Path, *, names_cache: Path | None = None
) -> lmeval.ResolvedTasks:
    """Every task exists, has its data, and produces the metrics the rules name: checked before any server starts.
    `names_cache`: where lm-eval's task names are kept between runs (see `lmeval.registry_names`)."""
    gate = loaded.recipe.gate
    if not gate.tasks:
        raise GateError(
            f"{locate(loaded, 'gate')}: gate.tasks: the recipe names no gate tasks, and nothing is registered "
            "without a gate. Add at least one task with a rule (see recipes/demo.yaml)."
        )
    names = [t.task for t in gate.tasks]
    try:
        resolved = lmeval.resolve_tasks(names, evals_dir, workdir, names_cache=names_cache)
    except GateError as exc:
        raise GateError(f"{locate(loaded, 'gate', 'tasks')}: gate.tasks: {exc}") from None
    problems = check_rules_against_metrics(gate, lmeval.available_metrics(resolved))
    if problems:
        raise GateError(f"{locate(loaded, 'gate', 'tasks')}: gate.tasks:\n  " + "\n  ".join(problems))
    return resolved


@dataclass(frozen=True)
class Gate:
    """Evaluate candidate, merged and baseline with lm-eval through the serving engine, then decide (pure) and
    report. Sides the chain check already measured on its servers (`lifecycle.measure`) are not served again."""

    serve: Serve
    evals_dir: Path
    find_production: FindProduction
    name: str = STAGE
    result: type[GateResult] = GateResult

    def needs(self, run: OpenRun) -> GateNeeds:
        """The gate's questions for the servers: lm-eval on a side, its per-item scores kept in the run."""
        from lifecycle.measure import GateNeeds

        out = run.dir.stage_dir(STAGE)
        resolved = preflight(run.loaded, self.evals_dir, out / "work")
        trained = run.dir.load("train", TrainResult)
        baseline = _baseline(
            run.recipe.registry.model_name,
            run.recipe.gate.baseline,
            Path(trained.base_model_dir),
            out / "baseline",
            self.find_production,
        )
        limits = {t.task: t.limit for t in run.recipe.gate.tasks}

        def evaluate(engine: CompletionEngine, model: str, tokenizer_dir: Path, side: str) -> object:
            task_runs = lmeval.evaluate_server(
                resolved,
                completions_url=engine.completions_url,
                model_name=model,
                tokenizer_dir=tokenizer_dir,
                limit=limits,
                seed=run.recipe.gate.seed,
                log_path=out / "lm-eval.log",
            )
            (out / "sides").mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "sides" / f"{side}.json", [t.model_dump(mode="json") for t in task_runs])
            return task_runs

        scores_prompts = any(t.output_type != "generate_until" for t in resolved.tasks)
        return GateNeeds(evaluate=evaluate, baseline=baseline, scores_prompts=scores_prompts)

    def compute(self, run: OpenRun) -> GateResult:
        from lifecycle import measure
        from lifecycle.quantize.stage import Quantize
        from lifecycle.train.stage import require_trained

        trained = require_trained(run.dir)
        quantized = Quantize().reuse(run, run.dir.load("quantize", QuantizeResult))
        needs = self.needs(run)
        start = time.monotonic()
        servers = measure.plan(
            trained, quantized, chain=False, baseline=needs.baseline, scores_prompts=needs.scores_prompts
        )
        held_out = measure.EvalPrompts(prompts=[], targets=[])
        measure.serve_and_ask(run, self.serve, servers, held_out, 1, needs)
        out = run.dir.stage_dir(STAGE)
        runs = {
            side: _read_side(out / "sides" / f"{side}.json")
            for side in ("candidate", "merged", "baseline")
            if (out / "sides" / f"{side}.json").is_file()
        }
        if "merged" not in runs:
            runs["merged"] = runs["candidate"]  # scheme 'none': the candidate is the merged model
        verdict = decide(run.recipe.gate, lmeval.pair(runs["candidate"], runs["baseline"], runs["merged"]))
        md_path, png_path = out / "report.md", out / "report.png"
        md_path.write_text(render_markdown(verdict))
        render_png(verdict, png_path)
        return GateResult(
            verdict=verdict,
            baseline=needs.baseline,
            candidate_dir=quantized.model_dir,
            merged_dir=trained.model_dir,
            scores={side: {r.task: r.aggregate for r in task_runs} for side, task_runs in runs.items()},
            report_md=str(md_path),
            report_png=str(png_path),
            wall_s=time.monotonic() - start,
        )

    def reuse(self, run: OpenRun, done: GateResult) -> GateResult:
        return done

    def record(self, run: OpenRun, result: GateResult) -> None:
        assert run.tracker is not None and run.mlflow_run_id is not None
        _record(run.tracker, run.mlflow_run_id, result)


def _read_side(path: Path) -> list[lmeval.TaskRun]:
    return [lmeval.TaskRun.model_validate(row) for row in json.loads(path.read_text())]


def _baseline(
    name: str, kind: str, base_dir: Path, target: Path, find_production: FindProduction
) -> Baseline:
    if kind == "production":
        found = find_production(name, target)
        if found is not None:
            version, path = found
            return Baseline(kind="production", model_dir=str(path), version=version)
    if not (base_dir / "config.json").is_file():
        raise GateError(
            f"the baseline is the base model, but {base_dir} is not a model folder on this machine "
            "(a cloud run's base must be downloaded here first)"
        )
    return Baseline(kind="base", model_dir=str(base_dir))


def _record(tracker: Tracker, mlflow_run: str, result: GateResult) -> None:
    rows = []
    for side, tasks in result.scores.items():
        for task, metrics in tasks.items():
            rows += [(f"gate.{task}.{metric}.{side}", value, 0) for metric, value in metrics.items()]
    for rule in result.verdict.rules:
        prefix = f"gate.{rule.task}.{rule.metric}.{rule.rule}"
        rows += [(f"{prefix}.delta", rule.delta, 0)] if rule.delta is not None else []
        rows += [(f"{prefix}.p_value", rule.p_value, 0)] if rule.p_value is not None else []
    tracker.log_metrics(mlflow_run, [r for r in rows if r[1] is not None])
    tracker.set_tags(
        mlflow_run,
        {
            "lifecycle.gate": "passed" if result.passed else "failed",
            "lifecycle.gate.baseline": result.baseline.kind,
        },
    )
    tracker.log_artifact(mlflow_run, Path(result.report_md), "gate")
    tracker.log_artifact(mlflow_run, Path(result.report_png), "gate")
    tracker.log_text(mlflow_run, result.verdict.model_dump_json(indent=2), "gate/verdict.json")
