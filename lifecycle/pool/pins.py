"""A registered version's lineage tags (written by `registry/stage.py lineage_tags`) and what a deployment pins:
the pin made from a version, the evidence a version needs before it may serve, and where a pin and its version
disagree. Pure: the registry record comes in as data."""

from __future__ import annotations

from typing import Protocol

from lifecycle.pool.schema import Adapter, Quantization, RegisteredModel

GATE = "lifecycle.gate"
GATE_RULE_PREFIX = "gate."
RUN_ID = "lifecycle.run_id"
DIGEST = "lifecycle.weights_manifest_digest"
SCHEME = "lifecycle.quant.scheme"
QUANT_CONFIG = "lifecycle.quant.config_sha256"
RECIPE = "lifecycle.recipe_sha256"
BASE_MODEL = "lifecycle.base_model"
BASE_DIGEST = "lifecycle.base_manifest_digest"
COST_USD = "lifecycle.cost.usd"
COST_SOURCE = "lifecycle.cost.source"
# What the version's artifact is: "model" (a full model, served as a deployment) or "adapter" (a LoRA adapter,
# hot-loaded onto the deployment serving its base weights)
ARTIFACT = "lifecycle.artifact"
# An adapter version: the model version registered from the same run (what the gate measured), and the chain
# check's measurements of the adapter itself
ADAPTER_OF = "lifecycle.adapter.of"
ADAPTER_ACCURACY = "lifecycle.adapter.chain_accuracy"
ADAPTER_AGREEMENT = "lifecycle.adapter.merged_agreement"
# Optional: the strictest residency the version's training data allows ('self_hosted': it may only be served on
# machines the team runs). A version without it may be served anywhere the pool says.
RESIDENCY = "lifecycle.residency"

REQUIRED = (RUN_ID, DIGEST, RECIPE, BASE_MODEL, BASE_DIGEST)
REQUIRED_FOR_MODELS = (SCHEME, QUANT_CONFIG)


class Version(Protocol):
    """What the registry says about one version (lifecycle.registry.models.VersionRecord)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def tags(self) -> dict[str, str]: ...


def gate_passed(record: Version) -> bool:
    return record.tags.get(GATE) == "passed"


def evidence_problems(record: Version, *, adapter: bool = False) -> list[str]:
    """Why `record` may not serve: a failed gate, or lineage tags missing (nothing proves it passed one)."""
    tags = record.tags
    label = f"{record.name} v{record.version}"
    if GATE not in tags:
        return [
            f"{label} has no gate evidence (no {GATE!r} tag): it was not registered by `lifecycle register`"
        ]
    if tags[GATE] != "passed":
        return [f"{label} failed its gate ({GATE}={tags[GATE]!r}); a failed version can never be promoted"]
    problems = []
    if not any(key.startswith(GATE_RULE_PREFIX) for key in tags):
        problems.append(f"{label} has no gate rule results (tags '{GATE_RULE_PREFIX}TASK.METRIC.RULE')")
    required = REQUIRED if adapter else REQUIRED + REQUIRED_FOR_MODELS
    missing = [key for key in required if not tags.get(key)]
    if missing:
        problems.append(f"{label} lacks lineage tags: {', '.join(missing)}")
    return problems


def model_pin(record: Version) -> RegisteredModel:
    """The pin a deployment carries for a registered (non-adapter) version."""
    tags = record.tags
    return RegisteredModel(
        name=record.name,
        version=int(record.version),
        artifact=record.source,
        manifest_digest=tags[DIGEST],
        quantization=Quantization(scheme=tags[SCHEME], config_sha256=tags[QUANT_CONFIG]),
        recipe_sha256=tags[RECIPE],
        base_model=tags[BASE_MODEL],
    )


def adapter_pin(record: Version, served_name: str) -> Adapter:
    """The pin for a version whose artifact is a LoRA adapter, served as `served_name`."""
    tags = record.tags
    return Adapter(
        name=served_name,
        model=record.name,
        version=int(record.version),
        artifact=record.source,
        manifest_digest=tags[DIGEST],
        base_manifest_digest=tags[BASE_DIGEST],
        recipe_sha256=tags[RECIPE],
    )


def mismatches(pin: RegisteredModel | Adapter, record: Version) -> list[tuple[tuple[str, ...], str]]:
    """Where a pin disagrees with its registered version: (field path inside the pin, message)."""
    tags = record.tags
    expected: list[tuple[tuple[str, ...], str, str | None]] = [
        (("artifact",), pin.artifact, record.source),
        (("manifest_digest",), pin.manifest_digest, tags.get(DIGEST)),
        (("recipe_sha256",), pin.recipe_sha256, tags.get(RECIPE)),
    ]
    if isinstance(pin, RegisteredModel):
        expected += [
            (("quantization", "scheme"), pin.quantization.scheme, tags.get(SCHEME)),
            (("quantization", "config_sha256"), pin.quantization.config_sha256, tags.get(QUANT_CONFIG)),
            (("base_model",), pin.base_model, tags.get(BASE_MODEL)),
        ]
    else:
        expected.append((("base_manifest_digest",), pin.base_manifest_digest, tags.get(BASE_DIGEST)))
    label = f"{record.name} v{record.version}"
    return [
        (field, f"pinned {pinned!r}, but {label} has {actual!r}")
        for field, pinned, actual in expected
        if pinned != actual
    ]


def residency_problem(residency: str, record: Version) -> str | None:
    """A version whose data must stay self-hosted, pinned by a deployment that is not."""
    allowed = record.tags.get(RESIDENCY)
    if allowed == "self_hosted" and residency != "self_hosted":
        return (
            f"{record.name} v{record.version} may only serve self_hosted ({RESIDENCY}=self_hosted), "
            f"but this deployment is {residency}"
        )
    return None
