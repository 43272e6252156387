"""The gate stage: the artifact that will be served, measured through the engine that will serve it, against the
baseline it would replace, item by item; then a pure verdict and its report.

    candidate  = the quantized model (what users will get)
    merged     = the unquantized fine-tune (for quantization recovery)
    baseline   = the version aliased 'production' for this registered name, else the base model
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lifecycle.errors import GateError
from lifecycle.gate import lmeval
from lifecycle.gate.decide import Verdict, check_rules_against_metrics, decide
from lifecycle.gate.report import render_markdown, render_png
from lifecycle.quantize.chain import Serve
from lifecycle.quantize.stage import QuantizeResult
from lifecycle.recipe.load import LoadedRecipe, load_recipe, locate
from lifecycle.registry.tracking import Tracker
from lifecycle.runs import Frozen, RunDir

STAGE = "gate"


class Baseline(Frozen):
    kind: str  # production | base
    model_dir: str
    version: str | None = None


class GateResult(Frozen):
    verdict: Verdict
    baseline: Baseline
    candidate_dir: str
    merged_dir: str
    scores: dict[str, dict[str, dict[str, float]]]  # side -> task -> metric -> aggregate
    report_md: str
    report_png: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.verdict.passed


# Finds the production version's artifact for a registered name: (version, local dir) or None.
FindProduction = Callable[[str, Path], tuple[str, Path] | None]


def preflight(loaded: LoadedRecipe, evals_dir: Path, workdir: Path) -> lmeval.ResolvedTasks:
    """Every task exists, has its data, and produces the metrics the rules name: checked before any server starts."""
    gate = loaded.recipe.gate
    if not gate.tasks:
        raise GateError(
            f"{locate(loaded, 'gate')}: gate.tasks: the recipe names no gate tasks, and nothing is registered "
            "without a gate. Add at least one task with a rule (see recipes/demo.yaml)."
        )
    names = [t.task for t in gate.tasks]
    try:
        resolved = lmeval.resolve_tasks(names, evals_dir, workdir)
    except GateError as exc:
        raise GateError(f"{locate(loaded, 'gate', 'tasks')}: gate.tasks: {exc}") from None
    problems = check_rules_against_metrics(gate, lmeval.available_metrics(resolved))
    if problems:
        raise GateError(f"{locate(loaded, 'gate', 'tasks')}: gate.tasks:\n  " + "\n  ".join(problems))
    return resolved


def run(
    run_dir: RunDir,
    *,
    serve: Serve,
    evals_dir: Path,
    find_production: FindProduction,
    tracker: Tracker | None,
) -> GateResult:
    """Evaluate candidate, merged and baseline through vLLM + lm-eval and decide. A saved result is reused."""
    from lifecycle.train.stage import require_trained

    if run_dir.has(STAGE):
        return run_dir.load(STAGE, GateResult)
    loaded = load_recipe(run_dir.recipe_path)
    recipe = loaded.recipe
    out = run_dir.stage_dir(STAGE)
    resolved = preflight(loaded, evals_dir, out / "work")
    trained = require_trained(run_dir)
    quantized = run_dir.load("quantize", QuantizeResult)
    baseline = _baseline(
        recipe.registry.model_name,
        recipe.gate.baseline,
        Path(trained.base_model_dir),
        out / "baseline",
        find_production,
    )
    limits = {t.task: t.limit for t in recipe.gate.tasks}
    start = time.monotonic()
    sides = {
        "candidate": Path(quantized.model_dir),
        "merged": Path(trained.model_dir),
        "baseline": Path(baseline.model_dir),
    }
    runs: dict[str, list[lmeval.TaskRun]] = {}
    for side, model_dir in sides.items():
        if side == "merged" and quantized.scheme == "none":
            runs[side] = runs["candidate"]  # the candidate is the merged model
            continue
        with serve(model_dir, {}) as engine:
            runs[side] = lmeval.evaluate_server(
                resolved,
                completions_url=engine.completions_url,
                model_name=engine.models()[0],
                tokenizer_dir=model_dir,
                limit=limits,
                seed=recipe.gate.seed,
                log_path=out / "lm-eval.log",
            )
    verdict = decide(recipe.gate, lmeval.pair(runs["candidate"], runs["baseline"], runs["merged"]))
    out.mkdir(parents=True, exist_ok=True)
    md_path, png_path = out / "report.md", out / "report.png"
    md_path.write_text(render_markdown(verdict))
    render_png(verdict, png_path)
    result = GateResult(
        verdict=verdict,
        baseline=baseline,
        candidate_dir=quantized.model_dir,
        merged_dir=trained.model_dir,
        scores={side: {r.task: r.aggregate for r in task_runs} for side, task_runs in runs.items()},
        report_md=str(md_path),
        report_png=str(png_path),
        wall_s=time.monotonic() - start,
    )
    run_dir.save(STAGE, result)
    if tracker is not None:
        _record(tracker, run_dir, result)
    return result


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


def _record(tracker: Tracker, run_dir: RunDir, result: GateResult) -> None:
    mlflow_run = run_dir.info().mlflow_run_id
    if mlflow_run is None:
        return
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
