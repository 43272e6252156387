"""The fine-tune itself: trl's SFTTrainer with peft LoRA or full fine-tuning, atomic checkpoints, merge, save.

Runs inside the training worker (locally or on a rented GPU node). Knows nothing about MLflow or SkyPilot:
it reads a recipe and an output folder and writes checkpoints, metrics.jsonl, the adapter and the final model.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    PrinterCallback,
    TrainerCallback,
)  # this module runs only inside the worker: heavy imports are fine

from lifecycle import manifest
from lifecycle.launch import checkpoints
from lifecycle.manifest import Manifest
from lifecycle.recipe.schema import FullMethod, LoraMethod, Recipe, TrainingSpec
from lifecycle.train.data import Example


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    bf16_supported: bool
    world_size: int = 1  # processes in this training job (torchrun sets WORLD_SIZE)

    @classmethod
    def detect(cls, world_size: int = 1) -> Hardware:
        import torch

        cuda = torch.cuda.is_available()
        return cls(cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported(), world_size=world_size)


def sharding(method: object, hw: Hardware) -> dict[str, object]:
    """A full fine-tune across several GPUs shards parameters, gradients and optimizer state (FSDP full shard):
    a replica per GPU would not fit a large model. LoRA's few trainable weights replicate fine (DDP)."""
    if isinstance(method, FullMethod) and hw.cuda and hw.world_size > 1:
        return {"fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": True}}
    return {}


@dataclass(frozen=True)
class FitResult:
    steps: int
    resumed_from_step: int | None
    final_loss: float | None
    wall_s: float
    # as written and hashed by this process (None on the other processes of a multi-GPU job, which write nothing)
    model_manifest: Manifest | None = None
    adapter_manifest: Manifest | None = None


def precision_flags(spec: TrainingSpec, hw: Hardware) -> dict[str, bool]:
    """bf16 on GPUs that support it, fp32 on CPU (CPU bf16 training is slow and lossy for tiny models)."""
    choice = spec.precision
    if choice == "auto":
        choice = "bf16" if hw.bf16_supported else ("fp16" if hw.cuda else "fp32")
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


def use_gradient_checkpointing(spec: TrainingSpec, hw: Hardware, n_params: int) -> bool:
    """Worth its recompute cost only where memory is the limit: GPUs and models of a billion parameters or more."""
    if spec.gradient_checkpointing != "auto":
        return bool(spec.gradient_checkpointing)
    return hw.cuda and n_params >= 1_000_000_000


def fit(
    recipe: Recipe,
    base_dir: Path,
    train: list[Example],
    evaluation: list[Example] | None,
    output: Path,
    hw: Hardware,
    progress: Any | None = None,
) -> FitResult:
    """Train, resuming from the newest committed checkpoint in `output/checkpoints` if there is one."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    spec = recipe.training
    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # train in fp32 on CPU, in the mixed-precision dtype's master weights (fp32) on GPU
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())

    ckpt_dir = output / "checkpoints"
    flags = precision_flags(spec, hw)
    resume = checkpoints.latest_committed(ckpt_dir)
    config = SFTConfig(
        output_dir=str(ckpt_dir),
        max_steps=spec.max_steps or -1,
        num_train_epochs=spec.epochs or 1.0,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_ratio,
        weight_decay=spec.weight_decay,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation,
        max_length=spec.max_length,
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=not hw.cuda,
        gradient_checkpointing=use_gradient_checkpointing(spec, hw, n_params),
        save_strategy="steps",
        save_steps=spec.checkpoint_every,
        save_total_limit=None,  # pruning is ours: only committed checkpoints count
        logging_steps=spec.logging_steps,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        # every parameter that trains (LoRA's or all) takes part in each forward: DDP need not walk the graph for
        # unused ones each step (transformers' default does, whenever gradient checkpointing is off)
        ddp_find_unused_parameters=False,
        bf16=flags["bf16"],
        fp16=flags["fp16"],
        **sharding(recipe.method, hw),  # type: ignore[arg-type]
    )
    peft_config = _peft_config(recipe) if isinstance(recipe.method, LoraMethod) else None
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(training_rows(train, tokenizer)),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_CommitAndLog(output / "metrics.jsonl", spec.keep_checkpoints, progress)],
    )
    trainer.remove_callback(PrinterCallback)  # progress and loss go to our bar and metrics.jsonl instead
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.monotonic() - start
    written: tuple[Manifest | None, Manifest | None] = (None, None)
    if trainer.is_world_process_zero():
        written = _save_final(trainer, recipe, base_dir, tokenizer, output)
    loss = _last_loss(trainer.state.log_history)
    return FitResult(
        steps=trainer.state.global_step,
        resumed_from_step=checkpoints.step_of(resume) if resume else None,
        final_loss=loss if loss is not None else float(result.training_loss),
        wall_s=wall,
        model_manifest=written[0],
        adapter_manifest=written[1],
    )


def training_rows(rows: list[Example], tokenizer: Any) -> list[dict[str, Any]]:
    """The rows trl trains on. Rows of one shape go as they are and trl tokenizes them; one trl dataset holds
    one shape, so a mix of shapes (chats with plain-text replay) is tokenized here, each row exactly as trl
    tokenizes its shape (a test compares the two), with the loss where trl puts it."""
    if len({_shape(e.sft) for e in rows}) <= 1:
        return [e.sft for e in rows]
    return [tokenize_row(tokenizer, e.sft) for e in rows]


def tokenize_row(tokenizer: Any, sft: dict[str, Any]) -> dict[str, list[int]]:
    """`input_ids` and `labels` (-100 where there is no loss) as trl's SFTTrainer makes them: text gets the EOS
    token and loss everywhere; prompt/completion (plain or chat) gets loss on the completion only."""
    from trl.data_utils import common_prefix_length

    eos = tokenizer.eos_token
    if _shape(sft) == "text":
        text = sft["text"] if sft["text"].endswith(eos) else sft["text"] + eos
        ids = list(tokenizer(text=text)["input_ids"])
        return {"input_ids": ids, "labels": list(ids)}
    prompt, completion = sft["prompt"], sft["completion"]
    if _shape(sft) == "chat":
        chat = {"tokenize": True, "return_dict": True}
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **chat)["input_ids"]
        ids = tokenizer.apply_chat_template(prompt + completion, **chat)["input_ids"]
    else:
        completion = completion if completion.endswith(eos) else completion + eos
        prompt_ids = tokenizer(text=prompt)["input_ids"]
        ids = tokenizer(text=prompt + completion)["input_ids"]
    ids = list(ids)
    # the completion starts where prompt and prompt + completion diverge (tokens can merge across the seam)
    start = common_prefix_length(list(prompt_ids), ids)
    return {"input_ids": ids, "labels": [-100] * start + ids[start:]}


def _shape(sft: dict[str, Any]) -> str:
    if "text" in sft:
        return "text"
    return "chat" if isinstance(sft["prompt"], list) else "plain"


def _peft_config(recipe: Recipe) -> Any:
    from peft import LoraConfig

    method = recipe.method
    assert isinstance(method, LoraMethod)
    return LoraConfig(
        r=method.r,
        lora_alpha=method.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        lora_dropout=method.dropout,
        target_modules=method.target_modules,
        task_type="CAUSAL_LM",
    )


def _save_final(
    trainer: Any, recipe: Recipe, base_dir: Path, tokenizer: Any, output: Path
) -> tuple[Manifest, Manifest | None]:
    """Write the adapter (LoRA) and the merged model in the base's dtype, each sealed by a manifest (the one
    full hash of each: later checks compare sizes and times); returns the model's and the adapter's manifest."""
    import shutil

    import torch
    from transformers import AutoConfig

    base_dtype = _dtype_of(AutoConfig.from_pretrained(base_dir), recipe.model.dtype)
    model = trainer.model
    adapter: Manifest | None = None
    if not isinstance(recipe.method, FullMethod):
        adapter_dir = output / "adapter"
        shutil.rmtree(adapter_dir, ignore_errors=True)
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        adapter = manifest.write(adapter_dir)
        # merge in fp32 (the training dtype), then cast once: merging in bf16 rounds the update away
        model = model.merge_and_unload()
    model = model.to(getattr(torch, base_dtype))
    model_dir = output / "model"
    tmp = output / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    gen = base_dir / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, tmp / "generation_config.json")
    written = manifest.write(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)  # the files keep their times: the manifest still vouches for them
    return written, adapter


def _dtype_of(config: Any, requested: str) -> str:
    if requested != "auto":
        return requested
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).removeprefix("torch.")


def _last_loss(history: list[dict[str, Any]]) -> float | None:
    for entry in reversed(history):
        if "loss" in entry:
            return float(entry["loss"])
    return None


def _barrier() -> None:
    """Wait for every process of a distributed run (nothing to wait for in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class _CommitAndLog(TrainerCallback):
    """Seals each saved checkpoint (manifest, then marker), prunes old ones, and appends metrics as JSON lines."""

    def __init__(self, metrics_path: Path, keep: int, progress: Any | None):
        self.metrics_path = metrics_path
        self.keep = keep
        self.progress = progress

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None and state.is_world_process_zero:
            self.progress.begin(state.max_steps, state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None and state.is_world_process_zero:
            self.progress.advance(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Once every process has written its files: one process seals the checkpoint (one per node on several
        nodes, each sealing its node's part); once all have, rank 0 prunes."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        where = checkpoints.place(os.environ)
        _barrier()
        sealer = state.is_local_process_zero if where.nodes > 1 else state.is_world_process_zero
        if sealer and folder.is_dir():
            checkpoints.commit(folder, where)
        _barrier()
        if state.is_world_process_zero and folder.is_dir():
            checkpoints.prune(folder.parent, self.keep)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)})
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.progress is not None and "loss" in logs:
            self.progress.loss(float(logs["loss"]))
