"""`serving/pool.yaml`: what the serving pool must run, pinned so that nothing can change under it.

Each deployment pins the exact weights it serves (a registered version with its artifact URI, weight-manifest
digest, quantization scheme and config hash, recipe hash and base model; or an unregistered base model by its
digest, for adapters to ride on), how the engine runs them, how many replicas, which LoRA adapters are loaded on
it, where the data it sees may go (residency) and what a GPU-hour costs. MLflow aliases are outputs of this file,
never inputs. Validation needs no MLflow store: the registry is checked by `lifecycle verify serving/pool.yaml`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lifecycle.engines.vllm import LORA_RANK_SLOTS

SHA256 = r"^[0-9a-f]{64}$"
# A served name: what clients put in "model", a SkyServe service name, a DNS label
SERVED_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

Sha256 = Annotated[str, Field(pattern=SHA256, description="A sha256, 64 lowercase hex digits.")]

Residency = Literal["self_hosted", "rented"]
RESIDENCY_RULES = {
    "self_hosted": "machines the team runs itself; requests and their data never leave them, and the router "
    "never fails over from a self_hosted deployment to anything that is not self_hosted",
    "rented": "GPUs rented in the team's own cloud account, in the deployment's `region`; data leaves the "
    "premises but not that account and region",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantization(Strict):
    scheme: str = Field(
        description="The served scheme (`lifecycle.quant.scheme`), e.g. FP8_DYNAMIC, W8A8, none."
    )
    config_sha256: Sha256 = Field(description="sha256 of the artifact's quantization config.")


class RegisteredModel(Strict):
    """A registered model version: the usual thing a deployment serves."""

    kind: Literal["registered"] = "registered"
    name: str = Field(min_length=1, description="Registered model name in MLflow.")
    version: int = Field(gt=0, description="Registered model version.")
    artifact: str = Field(
        min_length=1, description="The version's artifact URI (its source in the registry)."
    )
    manifest_digest: Sha256 = Field(description="Digest of the served weights' manifest.")
    quantization: Quantization
    recipe_sha256: Sha256 = Field(description="sha256 of the recipe the version was trained from.")
    base_model: str = Field(min_length=1, description="The base model the version was fine-tuned from.")


class BaseWeights(Strict):
    """An unregistered base model, served so that LoRA adapters can ride on it."""

    kind: Literal["base"]
    source: str = Field(min_length=1, description="A model folder, 'builtin:NAME' or a hub id.")
    manifest_digest: Sha256 = Field(description="Digest of the base model's manifest.")


ServedModel = Annotated[RegisteredModel | BaseWeights, Field(discriminator="kind")]


class Adapter(Strict):
    """A registered version whose artifact is a LoRA adapter, hot-loaded onto the deployment serving its base."""

    name: str = Field(pattern=SERVED_NAME, description="The name clients request the adapter by.")
    model: str = Field(min_length=1, description="Registered model name in MLflow.")
    version: int = Field(gt=0, description="Registered model version.")
    artifact: str = Field(min_length=1, description="The version's artifact URI.")
    manifest_digest: Sha256 = Field(description="Digest of the adapter's manifest.")
    base_manifest_digest: Sha256 = Field(
        description="Digest of the weights the adapter was trained on: must be its deployment's."
    )
    recipe_sha256: Sha256


class VllmArgs(Strict):
    """The engine arguments a deployment pins (rendered into vLLM's command line by the pool runner)."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int | None = Field(None, gt=0)
    max_num_seqs: int | None = Field(None, gt=0)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int = Field(1, gt=0)
    structured_outputs_backend: Literal["auto", "xgrammar", "guidance", "outlines"] | None = Field(
        None, description="Backend for JSON-schema / grammar constrained answers; xgrammar works on CPU."
    )
    tool_call_parser: str | None = Field(
        None,
        pattern=r"^[a-z0-9_-]+$",
        description="vLLM's tool-call parser (hermes, llama3_json, mistral, ...): turns on auto tool choice.",
    )
    max_loras: int | None = Field(None, gt=0, description="Adapters in one batch (default: those pinned).")
    max_lora_rank: int | None = Field(None, description=f"One of {', '.join(map(str, LORA_RANK_SLOTS))}.")
    extra_args: list[str] = Field(default_factory=list, description="Further vLLM flags, passed as written.")

    @field_validator("max_lora_rank")
    @classmethod
    def _rank_slot(cls, value: int | None) -> int | None:
        if value is not None and value not in LORA_RANK_SLOTS:
            raise ValueError(
                f"vLLM's LoRA rank slots are {', '.join(map(str, LORA_RANK_SLOTS))}; got {value}"
            )
        return value


class Engine(Strict):
    kind: Literal["vllm"] = "vllm"
    args: VllmArgs = Field(default_factory=VllmArgs)


class Deployment(Strict):
    name: str = Field(pattern=SERVED_NAME, description="The name clients request the model by.")
    model: ServedModel
    engine: Engine = Field(default_factory=Engine)
    replicas: int = Field(1, gt=0, description="Servers running this deployment (remove it to stop it).")
    adapters: list[Adapter] = Field(default_factory=list)
    residency: Residency = Field(
        description="; ".join(f"{key}: {rule}" for key, rule in RESIDENCY_RULES.items())
    )
    region: str | None = Field(None, min_length=1, description="Where a rented deployment runs.")
    gpus_per_replica: int = Field(1, ge=0, description="GPUs one replica holds (0 on a CPU host).")
    price_per_gpu_hour: float = Field(ge=0, description="Dollars per GPU-hour, for cost per token.")

    @property
    def served_names(self) -> list[str]:
        return [self.name, *(adapter.name for adapter in self.adapters)]


class Pool(Strict):
    deployments: list[Deployment] = Field(default_factory=list)

    def deployment(self, name: str) -> Deployment | None:
        return next((d for d in self.deployments if d.name == name), None)
