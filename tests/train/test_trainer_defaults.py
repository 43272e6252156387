"""CPU/GPU defaults of the trainer: pure decisions, no training."""

from __future__ import annotations

from lifecycle.recipe.schema import FullMethod, LoraMethod, TrainingSpec
from lifecycle.train.trainer import Hardware, precision_flags, sharding, use_gradient_checkpointing

CPU = Hardware(cuda=False, bf16_supported=False)
H100 = Hardware(cuda=True, bf16_supported=True)
EIGHT_H100 = Hardware(cuda=True, bf16_supported=True, world_size=16)
SPEC = TrainingSpec(max_steps=10)


def test_precision_is_fp32_on_cpu_and_bf16_on_gpus_that_have_it() -> None:
    assert precision_flags(SPEC, CPU) == {"bf16": False, "fp16": False}
    assert precision_flags(SPEC, H100) == {"bf16": True, "fp16": False}
    assert precision_flags(SPEC, Hardware(cuda=True, bf16_supported=False)) == {"bf16": False, "fp16": True}
    assert precision_flags(TrainingSpec(max_steps=1, precision="fp32"), H100) == {
        "bf16": False,
        "fp16": False,
    }


def test_gradient_checkpointing_only_where_memory_is_the_limit() -> None:
    assert not use_gradient_checkpointing(SPEC, CPU, 8_000_000_000)
    assert not use_gradient_checkpointing(SPEC, H100, 2_000_000)
    assert use_gradient_checkpointing(SPEC, H100, 8_000_000_000)
    assert use_gradient_checkpointing(TrainingSpec(max_steps=1, gradient_checkpointing=True), CPU, 1)


def test_full_fine_tunes_shard_across_gpus_and_lora_replicates() -> None:
    full, lora = FullMethod(kind="full"), LoraMethod(kind="lora")
    assert sharding(full, EIGHT_H100)["fsdp"] == "full_shard auto_wrap"
    assert sharding(lora, EIGHT_H100) == {}
    assert sharding(full, H100) == {} and sharding(full, CPU) == {}
