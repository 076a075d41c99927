"""Joint training: LM loss on response tokens + λ·BCE on the `[CLS]` logit (TRL style).

`SafetyTrainingConfig` extends `transformers.TrainingArguments`; `SafetyTrainer` extends
`transformers.Trainer`, so gradient accumulation, mixed precision and accelerate's DDP / FSDP /
DeepSpeed come from transformers. What changes:
- the loss (`joint_loss`), computed on supervised rows only so the vocabulary projection
  never runs over prompt tokens;
- evaluation reports classifier accuracy / precision / recall / F1 and the LM loss;
- checkpoints hold no pickle (weights, optimiser, scheduler and RNG state in safetensors +
  JSON) and are written to a staging directory and renamed, so a crash mid-save never leaves
  a half-written `checkpoint-N` for `--resume` to pick up.

`objective="sft"` trains the same model with no `[CLS]` at all: the plain-SFT baseline and the
reference for the training-overhead benchmark.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .batching import IGNORE_INDEX, WindowSampler, collate
from .checkpoint_state import has_state, load_state, save_state
from .data.dataset import EncodedDataset, encode_records
from .data.schema import read_jsonl
from .formatting import PromptFormatter
from .cpu_tuning import tune_glibc_malloc
from .metrics import classifier_metrics
from .model import SafetyModel

OBJECTIVES = ("cls", "sft")
TRAINER_STATE_NAME = "trainer_state.json"


@dataclass
class SafetyTrainingConfig(TrainingArguments):
    """Every knob of a training run; loadable from YAML (`safesignal train --config X.yaml`)."""

    model_name_or_path: str = field(default="tiny-llama", metadata={"help": "HF directory, checkpoint or registry name"})
    train_file: str | None = field(default=None, metadata={"help": "training JSONL (see data/schema.py)"})
    eval_file: str | None = field(default=None, metadata={"help": "validation JSONL, evaluated every epoch"})
    objective: str = field(default="cls", metadata={"help": "'cls' (LM + λ·BCE) or 'sft' (plain SFT, no [CLS])"})
    cls_loss_weight: float = field(default=0.1, metadata={"help": "λ: weight of the [CLS] BCE loss"})
    mask_mode: str = field(default="sft", metadata={"help": "'sft' or 'pretrain' attention rules"})
    cls_reads_response_window: bool = field(default=True, metadata={"help": "train slot B over response windows"})
    window_max_length: int = field(default=21, metadata={"help": "longest slot-B window (r2 + r3 + 1)"})
    window_dead_fraction: float = field(default=0.5, metadata={"help": "fraction of examples with a dead slot B"})
    balance_classes: bool = field(default=True, metadata={"help": "oversample the minority label"})
    max_length: int = field(default=512, metadata={"help": "longest tokenised example (response is cut first)"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "default: all linear layers"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "'sdpa' or 'eager' (masks are 4-D)"})
    final_dir: str | None = field(default=None, metadata={"help": "where the final model goes (default output_dir/final)"})

    def __post_init__(self):
        # Trainer defaults that do not fit this data: our batches carry mask descriptors.
        self.remove_unused_columns = False
        if self.report_to in (None, "all", ["all"]):
            self.report_to = "none"
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: {self.objective!r} is not one of {OBJECTIVES}")
        if self.mask_mode not in ("sft", "pretrain"):
            raise ValueError(f"mask_mode: {self.mask_mode!r} is not 'sft' or 'pretrain'")
        if self.cls_loss_weight < 0:
            raise ValueError(f"cls_loss_weight: must be ≥ 0, got {self.cls_loss_weight}")

    @property
    def with_cls(self) -> bool:
        return self.objective == "cls"


class SafetyCollator:
    """Collates encoded examples.

    Slot-B windows are drawn from an RNG seeded by (seed, epoch, the batch's dataset
    positions), not from a running stream, so a resumed run draws exactly the windows the
    uninterrupted run would have, however many batches the data loader prefetched or skipped.
    """

    def __init__(self, cls_token_id, pad_token_id, mask_mode="sft", window_sampler=None, seed=0):
        self.cls_token_id, self.pad_token_id = cls_token_id, pad_token_id
        self.mask_mode, self.window_sampler = mask_mode, window_sampler
        self.seed, self.epoch = seed, 0

    def __call__(self, examples):
        keys = [e.sample_key for e in examples]
        return collate(
            examples,
            cls_token_id=self.cls_token_id,
            pad_token_id=self.pad_token_id,
            mask_mode=self.mask_mode,
            window_sampler=self.window_sampler,
            rng=random.Random(f"{self.seed}/{self.epoch}/{keys}"),
        )


class _EpochToCollator(TrainerCallback):
    """Tells the collator which epoch it is collating for (new windows every epoch)."""

    def __init__(self, collator: SafetyCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


def joint_loss(model: SafetyModel, batch: dict, cls_loss_weight: float) -> dict[str, torch.Tensor]:
    """LM cross-entropy on supervised response tokens + λ·BCE on every live `[CLS]` slot."""
    hidden = model.forward_batch(batch)
    targets = batch["labels"][:, 1:]
    supervised = targets != IGNORE_INDEX
    logits = model.lm_logits(hidden[:, :-1][supervised]).float()
    if supervised.any():
        lm_loss = F.cross_entropy(logits, targets[supervised])
    else:  # a batch of prefix-only examples: keep the graph, contribute nothing
        lm_loss = hidden.sum() * 0.0
    losses = {"lm_loss": lm_loss, "loss": lm_loss}
    if batch["mask_mode"] == "causal":
        return losses

    rows = torch.arange(hidden.shape[0], device=hidden.device)
    slot_logits = [model.cls_logits(hidden[rows, batch["slot_a"]])]
    slot_labels = [batch["cls_labels"]]
    live_b = (batch["slot_b"] >= 0) & batch["window_mask"].any(dim=1)
    if live_b.any():
        slot_logits.append(model.cls_logits(hidden[rows[live_b], batch["slot_b"][live_b]]))
        slot_labels.append(batch["cls_labels"][live_b])
    cls_loss = F.binary_cross_entropy_with_logits(
        torch.cat(slot_logits).float(), torch.cat(slot_labels).to(hidden.device).float()
    )
    losses["cls_loss"] = cls_loss
    losses["loss"] = lm_loss + cls_loss_weight * cls_loss
    losses["cls_logits_a"] = slot_logits[0].detach()
    return losses


class SafetyTrainer(Trainer):
    """`transformers.Trainer` with the joint loss, classifier evaluation and pickle-free checkpoints."""

    def __init__(self, model: SafetyModel, args: SafetyTrainingConfig, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        # Loss is a per-micro-batch mean; let Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._component_sums: dict[str, float] = {}
        self._component_count = 0

    # ------------------------------------------------------------------ loss and logging
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        losses = joint_loss(self.accelerator.unwrap_model(model), inputs, self.args.cls_loss_weight)
        for name in ("lm_loss", "cls_loss"):
            if name in losses:
                self._component_sums[name] = self._component_sums.get(name, 0.0) + losses[name].item()
        self._component_count += 1
        return (losses["loss"], losses) if return_outputs else losses["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._component_count:
            for name, total in self._component_sums.items():
                logs[name] = round(total / self._component_count, 4)
            self._component_sums, self._component_count = {}, 0
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loader = self.get_eval_dataloader(dataset)
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        lm_total, batches, probabilities, labels = 0.0, 0, [], []
        with torch.no_grad():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                losses = joint_loss(model, batch, self.args.cls_loss_weight)
                lm_total += losses["lm_loss"].item()
                batches += 1
                if "cls_logits_a" in losses:
                    probs = torch.sigmoid(losses["cls_logits_a"].float())
                    probabilities += self.accelerator.gather_for_metrics(probs).tolist()
                    labels += self.accelerator.gather_for_metrics(batch["cls_labels"]).long().tolist()
        model.train(was_training)
        metrics = {f"{metric_key_prefix}_lm_loss": lm_total / max(batches, 1)}
        if probabilities:
            for name, value in classifier_metrics(probabilities, labels).items():
                metrics[f"{metric_key_prefix}_{name}"] = value
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def get_eval_dataloader(self, eval_dataset=None):
        # Evaluate with slot A only: deterministic LM loss, and the classifier reads the query.
        loader = super().get_eval_dataloader(eval_dataset)
        collator = self.data_collator
        eval_collator = SafetyCollator(collator.cls_token_id, collator.pad_token_id, collator.mask_mode, None)
        loader.collate_fn = eval_collator
        return loader

    # ------------------------------------------------------------------ checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.unwrap_model(self.model).write_checkpoint_files(output_dir)
        (output_dir / "training_config.json").write_text(self.args.to_json_string())

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` via a staging directory that is renamed only when complete."""
        run_dir = Path(self._get_output_dir(trial=trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / f".{final.name}.partial"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.store_flos()
        self.save_model(str(staging), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_rng_state(str(staging))
        if self.args.should_save:
            self.state.save_to_json(str(staging / TRAINER_STATE_NAME))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            self._rotate_checkpoints(run_dir)

    def _rotate_checkpoints(self, run_dir: Path) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        checkpoints = sorted(
            (p for p in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()),
            key=lambda p: int(p.name.split("-")[-1]),
        )
        for old in checkpoints[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _uses_sharded_state(self) -> bool:
        # DeepSpeed and FSDP own their optimiser-state formats; keep theirs.
        return bool(self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self._uses_sharded_state():
            return super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            save_state(self.optimizer.state_dict(), Path(output_dir), "optimizer")
            save_state(self.lr_scheduler.state_dict(), Path(output_dir), "scheduler")

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or self._uses_sharded_state():
            return super()._load_optimizer_and_scheduler(checkpoint)
        directory = Path(checkpoint)
        if not has_state(directory, "optimizer"):
            raise FileNotFoundError(f"{directory}: no optimizer state to resume from")
        self.optimizer.load_state_dict(load_state(directory, "optimizer"))
        self.lr_scheduler.load_state_dict(load_state(directory, "scheduler"))

    def _save_rng_state(self, output_dir: str) -> None:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.random.get_rng_state_all()
        name = "rng_state" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}"
        save_state(state, Path(output_dir), name)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        name = "rng_state" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}"
        if not has_state(Path(checkpoint), name):
            return
        state = load_state(Path(checkpoint), name)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.random.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.random.set_rng_state_all(state["cuda"])

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self._uses_sharded_state():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.accelerator.unwrap_model(self.model).load_weights_from(resume_from_checkpoint)


def build_model(config: SafetyTrainingConfig) -> SafetyModel:
    """The model a config trains: base (or checkpoint) + `[CLS]` + head, LoRA if asked."""
    model = SafetyModel.from_pretrained(config.model_name_or_path, attn_implementation=config.attn_implementation)
    model.config.mask_mode = config.mask_mode
    model.config.cls_reads_response_window = config.cls_reads_response_window
    model.config.objective = config.objective
    if config.use_lora and not model.config.adapter:
        model.add_lora(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    for param in (model.cls_embedding, *model.head.parameters()):
        param.requires_grad_(config.with_cls)
    return model


def build_datasets(config: SafetyTrainingConfig, model: SafetyModel):
    if not config.train_file:
        raise ValueError("train_file: required (a JSONL file, see safesignal/data/schema.py)")
    formatter = PromptFormatter(model.tokenizer, max_length=config.max_length)
    train = EncodedDataset(
        encode_records(read_jsonl(config.train_file), formatter),
        balance=config.balance_classes,
        seed=config.seed,
    )
    evaluation = None
    if config.eval_file:
        evaluation = EncodedDataset(encode_records(read_jsonl(config.eval_file), formatter))
    return train, evaluation


def train(config: SafetyTrainingConfig, resume: bool | str = False) -> Path:
    """Run a full training job; returns the directory of the final model."""
    from transformers import set_seed

    set_seed(config.seed)
    if config.use_cpu or not torch.cuda.is_available():
        tune_glibc_malloc()
    model = build_model(config)
    train_set, eval_set = build_datasets(config, model)
    if eval_set is None and config.eval_strategy != "no":
        config.eval_strategy = "no"
    sampler = None
    if config.with_cls and config.mask_mode == "sft" and config.cls_reads_response_window:
        sampler = WindowSampler(config.window_max_length, config.window_dead_fraction)
    collator = SafetyCollator(
        model.cls_token_id if config.with_cls else None,
        model.tokenizer.pad_token_id,
        config.mask_mode,
        sampler,
        seed=config.seed,
    )
    trainer = SafetyTrainer(
        model,
        config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        callbacks=[_EpochToCollator(collator)],
    )
    counts = train_set.label_counts()
    steps_per_epoch = math.ceil(len(train_set) / (config.per_device_train_batch_size * config.gradient_accumulation_steps))
    print(
        f"safesignal train: objective={config.objective} λ={config.cls_loss_weight} "
        f"examples={len(train_set)} (labels {dict(sorted(counts.items()))}) "
        f"steps/epoch≈{steps_per_epoch} lora={config.use_lora}"
    )
    output = trainer.train(resume_from_checkpoint=resume or None)
    final_dir = Path(config.final_dir or Path(config.output_dir) / "final")
    if trainer.args.should_save:
        model.save_pretrained(final_dir)
        (final_dir / "training_config.json").write_text(config.to_json_string())
        (final_dir / "train_metrics.json").write_text(json.dumps(
            {**output.metrics, "examples_per_epoch": len(train_set), "labels": counts}, indent=2) + "\n")
        if eval_set is not None:
            metrics = trainer.evaluate()
            (final_dir / "eval_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return final_dir
