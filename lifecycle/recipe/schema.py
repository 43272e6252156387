"""The recipe: one YAML file that says what to fine-tune, how, where, and what it must prove before it is served.

Every model here forbids unknown keys, so a typo fails at load time with a line number (see `load.py`).
Paths are resolved against the recipe file's folder by the loader before validation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny-llama",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ----------------------------------------------------------------------------------------------- model + data


class ModelSpec(Strict):
    base: str = Field(
        description=(
            "The base model: 'builtin:tiny-llama' (built locally, seeded, cached), a local Hugging Face model "
            "folder, or a hub id such as 'meta-llama/Llama-3.1-8B-Instruct' (resolved where the job runs)."
        )
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Dtype of the served and merged weights; 'auto' keeps the base model's own dtype."
    )

    @field_validator("base")
    @classmethod
    def _base_exists(cls, value: str) -> str:
        if value.startswith(BUILTIN_PREFIX):
            name = value[len(BUILTIN_PREFIX) :]
            if name not in BUILTIN_MODELS:
                raise ValueError(f"unknown builtin model {name!r}; allowed: {', '.join(BUILTIN_MODELS)}")
            return value
        path = Path(value)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(
                    f"{value} is a folder but has no config.json: not a Hugging Face model folder"
                )
            return value
        if path.is_absolute() or value.startswith((".", "~")) or not _HUB_ID.match(value):
            raise ValueError(f"model folder {value} does not exist (and it is not a hub id like 'org/name')")
        return value

    @property
    def is_builtin(self) -> bool:
        return self.base.startswith(BUILTIN_PREFIX)

    @property
    def is_local_dir(self) -> bool:
        return not self.is_builtin and Path(self.base).is_dir()


DataFormat = Literal["messages", "prompt_completion", "text"]


_SOURCE_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def _check_data_file(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None or (info.context or {}).get("skip_file_checks"):
        return value
    if not value.is_file():
        raise ValueError(f"data file {value} does not exist")
    return value


class MixSource(Strict):
    """Extra rows mixed into training, e.g. replay of the base model's own pre-training text against forgetting."""

    path: Path = Field(description="JSON lines, checked row by row like the training data.")
    format: DataFormat = Field(
        description="Format of this file's rows; it may differ from `data.format` (replay of pre-training "
        "text as 'text' or 'prompt_completion' rows, mixed into 'messages' chats)."
    )
    weight: float = Field(
        gt=0,
        lt=1,
        description="Fraction of the training rows drawn from this source; `data.train` supplies the rest, so "
        "the weights of all sources add up to less than 1. With 400 train rows, weight 0.2 adds 100 rows "
        "(100 of 500). Rows are drawn seeded by `training.seed`, each row of the source once before any twice.",
    )
    name: str | None = Field(
        None, pattern=_SOURCE_NAME, description="Name in the run's records (default: the file name's stem)."
    )

    @field_validator("path")
    @classmethod
    def _file_exists(cls, value: Path, info: ValidationInfo) -> Path:
        _check_data_file(value, info)
        return value

    @property
    def label(self) -> str:
        return self.name or self.path.stem


class DataSpec(Strict):
    train: Path = Field(description="Training data, JSON lines.")
    eval: Path | None = Field(None, description="Held-out evaluation data, JSON lines, same format as train.")
    format: DataFormat = Field(
        description="'messages' (chat: a list of role/content turns), 'prompt_completion' "
        "(prompt and completion fields; loss on the completion only) or 'text' (plain text)."
    )
    mix: list[MixSource] = Field(
        default_factory=list,
        description="Other data mixed into training, each with the fraction of training rows it supplies: "
        "general or replay data keeps what the base model knew (the gate's no_regress rules measure it).",
    )
    residency: Literal["self_hosted", "rented"] | None = Field(
        None,
        description="Where models trained on this data may serve. 'self_hosted': only on machines the team "
        "runs (recorded on the registered version as lifecycle.residency; `lifecycle verify serving/pool.yaml` "
        "refuses it on a rented deployment). Unset or 'rented': wherever the pool file says.",
    )

    @field_validator("train", "eval")
    @classmethod
    def _file_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _check_data_file(value, info)

    @field_validator("mix")
    @classmethod
    def _mix_adds_up(cls, value: list[MixSource]) -> list[MixSource]:
        total = sum(source.weight for source in value)
        if total >= 1:
            raise ValueError(
                f"the mix weights add up to {total:g}; they are fractions of the training rows and must add up "
                "to less than 1 (data.train supplies the rest)"
            )
        labels = [source.label for source in value]
        if taken := sorted({x for x in labels if labels.count(x) > 1 or x in ("train", "eval")}):
            raise ValueError(
                f"mix source names must be unique and not 'train' or 'eval': {', '.join(taken)} "
                "(set `name` on each source)"
            )
        return value


# ----------------------------------------------------------------------------------------------- method


class LoraMethod(Strict):
    kind: Literal["lora"]
    r: int = Field(16, gt=0, le=1024, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear'."
    )


class QLoraMethod(LoraMethod):
    kind: Literal["qlora"]  # type: ignore[assignment]
    bits: Literal[4] = Field(4, description="Base weights are loaded in 4-bit (bitsandbytes, CUDA only).")


class FullMethod(Strict):
    kind: Literal["full"]


Method = Annotated[LoraMethod | QLoraMethod | FullMethod, Field(discriminator="kind")]


# ----------------------------------------------------------------------------------------------- training


class TrainingSpec(Strict):
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps; set this or epochs.")
    epochs: float | None = Field(
        None, gt=0, description="Passes over the training data; set this or max_steps."
    )
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, gt=0, description="Per-device batch size.")
    gradient_accumulation: int = Field(1, gt=0)
    max_length: int = Field(512, gt=0, description="Sequences are truncated to this many tokens.")
    seed: int = Field(0, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 on a GPU that supports it, fp32 on CPU."
    )
    gradient_checkpointing: Literal["auto"] | bool = Field(
        "auto", description="'auto': on for GPUs and models of 1B parameters or more, off otherwise."
    )
    checkpoint_every: int = Field(50, gt=0, description="Save a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, gt=0, description="Committed checkpoints to keep.")
    logging_steps: int = Field(5, gt=0)

    @model_validator(mode="after")
    def _one_length(self) -> TrainingSpec:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of max_steps and epochs")
        return self


# ----------------------------------------------------------------------------------------------- launch


class LocalLaunch(Strict):
    kind: Literal["local"]


class Placement(Strict):
    cloud: str | None = Field(
        None, description="e.g. aws, gcp, azure, lambda, runpod; None lets SkyPilot choose."
    )
    region: str | None = None
    zone: str | None = None


class SkyLaunch(Strict):
    kind: Literal["sky"]
    accelerators: str = Field(description="SkyPilot accelerator spec, e.g. 'H100:8'.")
    nodes: int = Field(1, ge=1, le=64, description="Number of nodes; >1 runs multi-node training.")
    use_spot: bool = Field(
        False, description="Use spot instances; the managed job recovers from preemptions."
    )
    placements: list[Placement] = Field(
        default_factory=list, description="Clouds/regions to try, in order of preference."
    )
    disk_size: int = Field(256, ge=50, description="Disk per node, GB.")
    managed: bool = Field(True, description="Managed job (GPUs exist only while it runs) or a plain cluster.")
    idle_minutes_to_autostop: int = Field(5, ge=0, description="Plain cluster only: tear down after idling.")
    bucket: str | None = Field(
        None, description="Bucket URI for checkpoints and final weights, e.g. s3://team-ckpts/lifecycle."
    )
    price_per_hour: float | None = Field(
        None, gt=0, description="USD per node-hour, used when SkyPilot's catalog has no price."
    )
    max_restarts_on_errors: int = Field(0, ge=0, description="Managed job: restarts on user-code failure.")
    expected_hours: float | None = Field(
        None, gt=0, description="Expected duration, for the cost estimate printed before launch."
    )

    @field_validator("accelerators")
    @classmethod
    def _accelerator_shape(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z][\w-]*(:\d+)?$", value):
            raise ValueError(f"{value!r} is not an accelerator spec like 'H100:8'")
        return value


Launch = Annotated[LocalLaunch | SkyLaunch, Field(discriminator="kind")]


# ----------------------------------------------------------------------------------------------- quantize


# FP8: whichever FP8 layout serves on the target and is fastest there (resolved before training, recorded).
# FP8_DYNAMIC: FP8 weights per channel, dynamic per-token activations: the choice on Hopper/Ada GPUs.
# FP8_BLOCK: FP8 weights in 128x128 blocks: the FP8 layout vLLM has a fast kernel for on AMX CPUs.
# FP8_STATIC / W8A8_STATIC: activation scales calibrated on the recipe's training rows. W4A16: int4 weights.
QuantScheme = Literal["FP8", "FP8_DYNAMIC", "FP8_BLOCK", "FP8_STATIC", "W8A8_STATIC", "W8A8", "W4A16", "none"]
# What an artifact is actually quantized with: every scheme but the "FP8" that resolves to one of them.
ConcreteScheme = Literal["FP8_DYNAMIC", "FP8_BLOCK", "FP8_STATIC", "W8A8_STATIC", "W8A8", "W4A16", "none"]


class ChainCheckSpec(Strict):
    prompts: int = Field(16, gt=0, description="Prompts from the eval data compared across the chain.")
    max_tokens: int = Field(16, gt=0)
    max_merge_disagreement: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Largest fraction of prompts where merged and adapter outputs may differ.",
    )
    max_quant_disagreement: float = Field(
        1.0, ge=0, le=1, description="Largest fraction where quantized and merged outputs may differ."
    )


class QuantizeSpec(Strict):
    scheme: QuantScheme = Field(
        "FP8",
        description="llmcompressor scheme for the served artifact. 'FP8' resolves to the FP8 layout that serves "
        "on the target and is fastest there (see `lifecycle doctor`); a named scheme the target cannot serve "
        "is refused before training.",
    )
    serve_on: str | None = Field(
        None,
        description="Where the artifact will be served: 'local' (this host; its engine is probed) or a GPU "
        "name such as 'H100' or 'L40S'. Default: 'local' for local launches, the training accelerator for "
        "SkyPilot launches.",
    )
    calibration_samples: int = Field(
        64, gt=0, description="Static schemes: rows drawn from the training data."
    )
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"], description="Modules left unquantized.")
    chain_check: ChainCheckSpec = Field(default_factory=ChainCheckSpec)


# ----------------------------------------------------------------------------------------------- gate


class ImproveRule(Strict):
    kind: Literal["improve"]
    metric: str
    min_delta: float = Field(0.0, ge=0, description="The candidate must beat the baseline by at least this.")
    confidence: float = Field(0.95, gt=0.5, lt=1)


class NoRegressRule(Strict):
    kind: Literal["no_regress"]
    metric: str
    max_drop: float = Field(0.02, ge=0, description="The candidate may trail the baseline by at most this.")
    confidence: float = Field(0.95, gt=0.5, lt=1)


Rule = Annotated[ImproveRule | NoRegressRule, Field(discriminator="kind")]


class GateTask(Strict):
    task: str = Field(
        description="An lm-eval task name: one under evals/ or a standard one whose data is present."
    )
    rules: list[Rule] = Field(min_length=1)
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N items (smoke runs).")


class GateSpec(Strict):
    tasks: list[GateTask] = Field(default_factory=list)
    baseline: Literal["base", "production"] = Field(
        "production", description="Compare with the version aliased 'production', or the base model if none."
    )
    min_quant_recovery: float = Field(
        0.99, gt=0, le=1.5, description="Quantized score / merged score, per task."
    )
    bootstrap_samples: int = Field(2000, ge=100)
    seed: int = 0


# ----------------------------------------------------------------------------------------------- register


class RegisterSpec(Strict):
    model_name: str = Field(description="Registered model name in MLflow.")
    alias: str = Field("candidate", description="Alias set on a version that passed the gate.")

    # MLflow's own rules (mlflow.utils.validation `_validate_model_name`, `_validate_model_alias_name[_reserved]`,
    # the file store's extra '%', the registry database's 256-character name column), checked here so a bad
    # name fails at load, not after hours of training. Spaces at the ends MLflow would keep; we refuse them.
    @field_validator("model_name")
    @classmethod
    def _mlflow_model_name(cls, value: str) -> str:
        cls._no_edge_spaces(value)
        if bad := sorted({c for c in value if c in "/:%"}):
            raise ValueError(f"{value!r}: MLflow model names cannot contain {' or '.join(map(repr, bad))}")
        if value == "." or value.startswith(".."):
            raise ValueError(f"{value!r}: MLflow model names cannot be '.' or start with '..'")
        if len(value) > 256:
            raise ValueError(f"MLflow model names are at most 256 characters; this one has {len(value)}")
        return value

    @field_validator("alias")
    @classmethod
    def _mlflow_alias(cls, value: str) -> str:
        cls._no_edge_spaces(value)
        if not re.fullmatch(r"[\w-]+", value):
            raise ValueError(f"{value!r}: MLflow aliases may only contain letters, digits, '_' and '-'")
        if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value):
            raise ValueError(f"{value!r}: MLflow reserves 'latest' and version aliases like 'v3'")
        if len(value) > 255:
            raise ValueError(f"MLflow aliases are at most 255 characters; this one has {len(value)}")
        return value

    @staticmethod
    def _no_edge_spaces(value: str) -> None:
        if not value.strip():
            raise ValueError("must not be empty")
        if value != value.strip():
            raise ValueError(f"{value!r} has spaces at the start or end; remove them")


# ----------------------------------------------------------------------------------------------- recipe


class Recipe(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Lower-case slug naming the runs.")
    description: str = ""
    model: ModelSpec
    data: DataSpec
    method: Method
    training: TrainingSpec
    launch: Launch = Field(default_factory=lambda: LocalLaunch(kind="local"))
    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    # `register` is the recipe's key; the attribute is `registry` (pydantic models reserve `register`)
    registry: RegisterSpec = Field(alias="register")
