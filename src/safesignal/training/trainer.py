"""`SafetyTrainer` (a `transformers.Trainer`) and `train()`, the whole training job.

Gradient accumulation, mixed precision and accelerate's DDP come from transformers. What
changes:
- the loss lives in `SafetyModel.forward` (TRL style), and the Trainer calls the *wrapped*
  model, so DDP sees the forward and averages the gradients. Losses are normalised by the
  supervised-token and live-`[CLS]` counts of the whole optimiser step on every rank
  (`objective.py`), so a batch split across ranks or accumulation steps trains exactly like
  the whole batch in one process;
- evaluation reports classifier accuracy / precision / recall / F1 and the LM loss, on every
  rank (its gathers need them all);
- checkpoints hold no pickle (weights, optimiser, scheduler and RNG state in safetensors +
  JSON), are written through `io.replace_directory` (a crash mid-save never leaves a
  half-written `checkpoint-N` for `--resume` to pick up), and only safesignal checkpoints are
  ever replaced or rotated away;
- under FSDP and DeepSpeed (engines.py) training checkpoints hold the engines' own shards,
  written by every rank into one staging directory, and the final model is gathered from the
  shards once and written as a normal safesignal checkpoint.

`objective="sft"` trains the same model with no `[CLS]` at all: the plain-SFT baseline and the
reference for the training-overhead benchmark.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from transformers import Trainer, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..batching import WindowSampler, loss_item_counts
from ..checkpoint_state import has_state, load_state, save_state
from ..cpu_tuning import tune_glibc_malloc
from ..data.dataset import EncodedDataset
from ..data.encoded_files import encoded_file
from ..data.encoded_store import EncodedStore
from ..formatting import PromptFormatter
from ..home import safesignal_home
from ..checkpoint import CHECKPOINT_CONFIG, has_trained_head, is_checkpoint
from ..io import atomic_write_json, atomic_write_text, refuse_unless_ours, staging_directory, swap_in_directory
from ..metrics import classifier_metrics
from ..model import SafetyModel
from .collator import EpochToCollator, SafetyCollator
from .config import SafetyTrainingConfig
from .engines import (
    check_engine_supports, check_resumable, engine_name, full_state_dict, load_engine_optimizer, load_engine_weights,
    save_engine_state,
)
from .run_directory import (
    TRAINER_STATE_NAME, check_run_directory, is_training_checkpoint, mark_run_directory, training_checkpoints,
)


class SafetyTrainer(Trainer):
    """`transformers.Trainer` with the joint loss, classifier evaluation and pickle-free checkpoints."""

    # The loss is already normalised over the whole accumulated step (see compute_loss).
    loss_is_scaled_for_ga = True

    def __init__(self, model: SafetyModel, args: SafetyTrainingConfig, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        check_engine_supports(self, args.use_lora)
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_steps: set[int] = set()

    # ------------------------------------------------------------------ loss and logging
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """(supervised LM tokens, live `[CLS]` slots) over every micro-batch of this optimiser
        step on every rank: the denominators that make split batches add up to the whole."""
        if not batch_samples:
            return None
        counts = sum(loss_item_counts(batch) for batch in batch_samples).to(device)
        return self.accelerator.reduce(counts, "sum") if self.args.world_size > 1 else counts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # `model` is the wrapped model (DDP): calling it is what synchronises the gradients.
        outputs = model(**inputs, cls_loss_weight=self.args.cls_loss_weight, num_items_in_batch=num_items_in_batch)
        # With global counts each rank's loss is its share of the global loss, and DDP averages
        # the gradients over ranks: scale back to a sum.
        scale = self.accelerator.num_processes if num_items_in_batch is not None else 1
        for name in ("lm_loss", "cls_loss"):
            if getattr(outputs, name) is not None:
                total = self._component_sums.get(name, 0.0)
                self._component_sums[name] = total + getattr(outputs, name).detach() * scale
        self._component_steps.add(self.state.global_step)
        loss = outputs.loss * scale
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs are written on every rank's call (the reduce below is a collective).
        if "loss" in logs and self._component_sums:
            names = sorted(self._component_sums)
            totals = torch.stack([self._component_sums[n] for n in names])
            if self.args.world_size > 1:
                totals = self.accelerator.reduce(totals, "mean")
            for name, total in zip(names, totals.tolist()):
                logs[name] = round(total / len(self._component_steps), 4)
            self._component_sums, self._component_steps = {}, set()
        super().log(logs, start_time)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The configured schedule, times `lr_decay_per_epoch` once per epoch (llama-recipes' StepLR)."""
        created = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        gamma = self.args.lr_decay_per_epoch
        if created and gamma != 1.0:
            if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                raise ValueError(f"lr_decay_per_epoch: cannot be combined with lr_scheduler_type "
                                 f"{self.args.lr_scheduler_type!r} (not a step-wise schedule)")
            steps_per_epoch = max(1, len(self.get_train_dataloader()) // self.args.gradient_accumulation_steps)
            # Closures, not callable objects: LambdaLR then leaves them out of its state dict.
            scheduler.lr_lambdas = [
                (lambda step, inner=inner: inner(step) * gamma ** (step // steps_per_epoch))
                for inner in scheduler.lr_lambdas
            ]
        return scheduler

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """LM loss and classifier metrics (slot A) on the evaluation set; every rank must call it."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loader = self.get_eval_dataloader(dataset)
        model = self.model_wrapped
        was_training = model.training
        model.eval()
        lm_total = torch.zeros(2, device=self.args.device)  # (sum of batch means, batches)
        probabilities, labels = [], []
        with torch.no_grad():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                outputs = model(**batch, cls_loss_weight=self.args.cls_loss_weight)
                lm_total += torch.stack([outputs.lm_loss.detach().float(), torch.ones((), device=lm_total.device)])
                if outputs.cls_logits is not None:
                    probs = torch.sigmoid(outputs.cls_logits.float())
                    probabilities += self.accelerator.gather_for_metrics(probs).tolist()
                    labels += self.accelerator.gather_for_metrics(batch["cls_labels"]).long().tolist()
        model.train(was_training)
        if self.args.world_size > 1:
            lm_total = self.accelerator.reduce(lm_total, "sum")
        metrics = {f"{metric_key_prefix}_lm_loss": (lm_total[0] / lm_total[1].clamp(min=1)).item()}
        if probabilities:
            for name, value in classifier_metrics(probabilities, labels).items():
                metrics[f"{metric_key_prefix}_{name}"] = value
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def get_eval_dataloader(self, eval_dataset=None):
        # Evaluate with slot A only: deterministic LM loss, and the classifier reads the query.
        loader = super().get_eval_dataloader(eval_dataset)
        loader.collate_fn = self.data_collator.without_windows()
        return loader

    # ------------------------------------------------------------------ checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # The Trainer passes a state_dict when the module alone does not hold the full weights
        # (FSDP / ZeRO-3 gather them first); the checkpoint is then written from it.
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.unwrap_model(self.model).write_checkpoint_files(output_dir, state_dict)
        atomic_write_text(output_dir / "training_config.json", self.args.to_json_string())

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` whole or not at all; the writer rank writes every rank's RNG state.

        Under FSDP / DeepSpeed every rank writes its shard, in the engine's own format, into
        the one staging directory the writer chose; the writer swaps it in once all are done."""
        run_dir = Path(self._get_output_dir(trial=trial))
        target = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self.store_flos()
        rng_states = gather_object([_rng_state()])  # a collective: every rank takes part
        writer, engine = self.args.should_save, engine_name(self)
        if engine is None and not writer:
            return
        staging = staging_directory(target, is_training_checkpoint, "training checkpoint") if writer else None
        if engine is not None:
            staging = Path(broadcast_object_list([staging])[0])
        try:
            if engine is not None:
                save_engine_state(self, staging)
            if writer:
                self._write_checkpoint_parts(staging, rng_states, weights=engine is None)
        except BaseException:
            if writer:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        if engine is not None:
            PartialState().wait_for_everyone()
        if writer:
            swap_in_directory(staging, target, is_training_checkpoint)
            self._rotate_checkpoints(run_dir)
        if engine is not None:
            PartialState().wait_for_everyone()  # no rank trains on while the writer still swaps

    def _write_checkpoint_parts(self, staging: Path, rng_states: list[dict], weights: bool) -> None:
        """What the writer adds: the weights (unless an engine wrote its shards), the optimiser
        (likewise), scheduler, every rank's RNG state and the trainer state; never a pickle."""
        if weights:
            self._save(str(staging))
        else:
            # Marks the directory as ours and says what was trained; the weights are the engine's shards.
            self.accelerator.unwrap_model(self.model).config.save(staging / CHECKPOINT_CONFIG)
            atomic_write_text(staging / "training_config.json", self.args.to_json_string())
        if not self.args.save_only_model:
            if weights:
                save_state(self.optimizer.state_dict(), staging, "optimizer")
            save_state(self.lr_scheduler.state_dict(), staging, "scheduler")
            for rank, state in enumerate(rng_states):
                save_state(state, staging, _rng_state_name(rank, len(rng_states)))
        self.state.save_to_json(str(staging / TRAINER_STATE_NAME))

    def _rotate_checkpoints(self, run_dir: Path) -> None:
        limit = self.args.save_total_limit
        if limit:
            for old in training_checkpoints(run_dir)[:-limit]:
                shutil.rmtree(old)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        directory = Path(checkpoint)
        check_resumable(self, directory)
        engine = engine_name(self)
        if engine == "fsdp":
            load_engine_optimizer(self, directory)
        elif engine is None:
            if not has_state(directory, "optimizer"):
                raise FileNotFoundError(f"{directory}: no optimizer state to resume from")
            self.optimizer.load_state_dict(load_state(directory, "optimizer"))
        # (DeepSpeed read its optimiser state with the weights, in `deepspeed_load_checkpoint`.)
        self.lr_scheduler.load_state_dict(load_state(directory, "scheduler"))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        name = _rng_state_name(self.args.process_index, self.args.world_size)
        if not has_state(Path(checkpoint), name):
            return
        state = load_state(Path(checkpoint), name)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.random.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.random.set_rng_state_all(state["cuda"])

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        check_resumable(self, Path(resume_from_checkpoint))
        if engine_name(self) == "fsdp":
            load_engine_weights(self, Path(resume_from_checkpoint))
        else:
            self.accelerator.unwrap_model(self.model).load_weights_from(resume_from_checkpoint)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.random.get_rng_state_all()
    return state


def _rng_state_name(rank: int, world_size: int) -> str:
    return "rng_state" if world_size <= 1 else f"rng_state_{rank}"


# ---------------------------------------------------------------------- building a run
def build_model(config: SafetyTrainingConfig) -> SafetyModel:
    """The model a config trains: base (or checkpoint) + `[CLS]` + head, LoRA if asked.

    A LoRA checkpoint goes on training its own adapter (its base stays frozen). Everything a
    checkpoint save needs is checked here, before any training time is spent.
    """
    model = SafetyModel.from_pretrained(config.model_name_or_path, attn_implementation=config.attn_implementation,
                                        dtype=config.torch_dtype)
    # "cls" marks a trained head. A checkpoint that has one keeps it, and the mask rules it was
    # trained under, when training goes on without the [CLS] objective (its row and head are
    # then frozen, below): a fine-tuning attack on the LM loss alone leaves a model that is
    # still served with its head.
    keeps_head = not config.with_cls and has_trained_head(config.model_name_or_path)
    if not keeps_head:
        model.config.mask_mode = config.mask_mode
        model.config.cls_reads_response_window = config.cls_reads_response_window
    model.config.objective = "cls" if keeps_head else config.objective
    if config.chat_template_file:
        path = Path(config.chat_template_file)
        if not path.is_file():
            raise FileNotFoundError(f"chat_template_file: {path}: no such file")
        model.tokenizer.chat_template = path.read_text()
    if model.config.adapter:
        if not config.use_lora:
            raise ValueError(
                f"model_name_or_path: {config.model_name_or_path} is a LoRA checkpoint; set use_lora: true to "
                "go on training its adapter (or merge the adapter into its base and train that)"
            )
        # Loaded for inference (frozen); make the active adapter trainable again.
        model.model.set_adapter(model.model.active_adapter, inference_mode=False)
    elif config.use_lora:
        if model.config.base_model is None:
            raise ValueError(
                f"model_name_or_path: {config.model_name_or_path} lies outside SAFESIGNAL_HOME "
                f"({safesignal_home()}), and a LoRA checkpoint names its base relative to it: move or link the "
                "base model under SAFESIGNAL_HOME, or set SAFESIGNAL_HOME to a directory above it, "
                "then train again (or train without use_lora)"
            )
        model.add_lora(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    for param in (model.cls_embedding, *model.head.parameters()):
        param.requires_grad_(config.with_cls)
    return model


def build_datasets(config: SafetyTrainingConfig, model: SafetyModel):
    """The training and evaluation sets, each a memory-mapped store encoded once per data file
    (under `config.encoded_cache_root`) and shared by every rank."""
    if not config.train_file:
        raise ValueError("train_file: required (JSONL, CSV, Parquet or a saved HF dataset, see safesignal/data/schema.py)")
    formatter = PromptFormatter(model.tokenizer, max_length=config.max_length)

    def encoded(path: str) -> EncodedStore:
        return encoded_file(path, formatter, config.encoded_cache_root, style=config.data_file_style,
                            columns=config.data_file_column_map)

    train_set = EncodedDataset(encoded(config.train_file), balance=config.balance_classes, seed=config.seed)
    evaluation = EncodedDataset(encoded(config.eval_file)) if config.eval_file else None
    return train_set, evaluation


def final_model_dir(config: SafetyTrainingConfig) -> Path:
    return Path(config.final_dir or Path(config.output_dir) / "final")


def train(config: SafetyTrainingConfig, resume: bool | str = False, callbacks=()) -> Path:
    """Run a full training job (on every rank of a distributed launch); returns the final model's directory.

    `callbacks` are extra `transformers.TrainerCallback`s.
    """
    set_seed(config.seed)
    writer = config.should_save  # also sets up the (distributed) state the config asks for
    # Every rank checks before the writer marks (no rank sees a half-made directory), so all
    # of them stop on a directory that is not ours.
    check_run_directory(config.output_dir)
    # The final model's directory too, before any training time is spent on it.
    refuse_unless_ours(final_model_dir(config), is_checkpoint, "checkpoint")
    PartialState().wait_for_everyone()
    if writer:
        mark_run_directory(config.output_dir)
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
        callbacks=[EpochToCollator(collator), *callbacks],
    )
    counts = train_set.label_counts()
    global_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * config.world_size
    if writer:
        print(
            f"safesignal train: objective={config.objective} λ={config.cls_loss_weight} "
            f"examples={len(train_set)} (labels {dict(sorted(counts.items()))}) "
            f"steps/epoch≈{math.ceil(len(train_set) / global_batch)} lora={config.use_lora}"
        )
    output = trainer.train(resume_from_checkpoint=resume or None)
    metrics = trainer.evaluate() if eval_set is not None else None
    final_dir = final_model_dir(config)
    # Under FSDP / ZeRO-3 each rank holds a shard: gather the whole model once (a collective).
    weights = full_state_dict(trainer) if engine_name(trainer) else None
    if writer:
        model.save_pretrained(final_dir, state_dict=weights)
        atomic_write_text(final_dir / "training_config.json", config.to_json_string())
        atomic_write_json(final_dir / "train_metrics.json",
                          {**output.metrics, "examples_per_epoch": len(train_set), "labels": counts})
        if metrics is not None:
            atomic_write_json(final_dir / "eval_metrics.json", metrics)
    # No rank leaves while the writer still saves: a rank exiting with the group in use was
    # seen to abort in gloo's teardown ("terminate called without an active exception").
    PartialState().wait_for_everyone()
    return final_dir
