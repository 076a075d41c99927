"""The sharded engines (FSDP, DeepSpeed ZeRO) as the trainer meets them: their checkpoint
files, the full weights gathered from their shards, and what each requires of a model.

DDP keeps every weight on every rank, so its checkpoints are ours (safetensors + JSON, no
pickle). FSDP and ZeRO hold shards; gathering the whole model and its optimiser state on
one rank at every checkpoint would cost what sharding saves, so training checkpoints keep
the engines' own formats, written by every rank and read back by the same engine:

- FSDP (accelerate's `save_fsdp_model` / `save_fsdp_optimizer`, SHARDED_STATE_DICT):
  `pytorch_model_fsdp_0/` and `optimizer_0/`, torch.distributed.checkpoint directories, one
  `__<rank>_0.distcp` file per rank plus a `.metadata` file; the metadata is a pickle
  written by torch, and the shards are read with torch's `weights_only` loading.
- DeepSpeed (`engine.save_checkpoint`): `global_step<N>/` with `mp_rank_00_model_states.pt`
  and one `*_optim_states.pt` per rank (torch pickles), a `latest` file naming the tag, and
  DeepSpeed's `zero_to_fp32.py` converter.

Everything safesignal writes beside them (`safesignal.json`, `trainer_state.json`, the
scheduler and every rank's RNG state, `engine.json`) stays pickle-free, and the final model
is gathered from the shards once and written as a normal safesignal checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_json

ENGINE_FILE = "engine.json"
ENGINE_FORMAT = "safesignal-engine-state"


def engine_name(trainer) -> str | None:
    """'fsdp', 'deepspeed', or None for DDP / one process."""
    if trainer.is_fsdp_enabled:
        return "fsdp"
    if trainer.is_deepspeed_enabled:
        return "deepspeed"
    return None


def check_engine_supports(trainer, use_lora: bool) -> None:
    """Refuse, before any training step, an engine setting the model cannot train under."""
    if trainer.is_fsdp_enabled:
        plugin = trainer.accelerator.state.fsdp_plugin
        if use_lora and getattr(plugin, "fsdp_version", 1) == 1 and not plugin.use_orig_params:
            raise ValueError(
                "fsdp_config: LoRA under FSDP1 needs use_orig_params: true (FSDP1 flattens frozen and trainable "
                "weights together otherwise); set it, or use fsdp_version: 2"
            )


def save_engine_state(trainer, directory: Path) -> None:
    """Every rank writes its shard of the weights and optimiser state into `directory`."""
    name = engine_name(trainer)
    if name == "fsdp":
        from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

        plugin = trainer.accelerator.state.fsdp_plugin
        save_fsdp_model(plugin, trainer.accelerator, trainer.model, str(directory))
        save_fsdp_optimizer(plugin, trainer.accelerator, trainer.optimizer, trainer.model, str(directory))
    elif name == "deepspeed":
        # A LoRA run writes its adapter, [CLS] row and head: the frozen base is in the base model.
        trainer.model_wrapped.save_checkpoint(str(directory), exclude_frozen_parameters=trainer.args.use_lora)
    else:
        raise ValueError("save_engine_state: no sharded engine in this run")
    if trainer.args.should_save:
        atomic_write_json(directory / ENGINE_FILE, {"format": ENGINE_FORMAT, "engine": name,
                                                    "world_size": trainer.args.world_size})


def saved_engine(directory: Path) -> str | None:
    """The engine whose state a training checkpoint holds (None: a safesignal checkpoint)."""
    path = Path(directory) / ENGINE_FILE
    return json.loads(path.read_text())["engine"] if path.is_file() else None


def load_engine_weights(trainer, directory: Path) -> None:
    """Every rank reads its shard of the weights. (DeepSpeed needs nothing here: the Trainer
    hands the checkpoint to `deepspeed_load_checkpoint`, which reads weights and optimiser.)"""
    if engine_name(trainer) == "fsdp":
        from accelerate.utils import load_fsdp_model

        load_fsdp_model(trainer.accelerator.state.fsdp_plugin, trainer.accelerator, trainer.model, str(directory))


def load_engine_optimizer(trainer, directory: Path) -> None:
    """Every rank reads its shard of the optimiser state (FSDP; DeepSpeed: see above)."""
    if engine_name(trainer) == "fsdp":
        from accelerate.utils import load_fsdp_optimizer

        load_fsdp_optimizer(trainer.accelerator.state.fsdp_plugin, trainer.accelerator, trainer.optimizer,
                            trainer.model, str(directory))


def check_resumable(trainer, directory: Path) -> None:
    """Refuse to resume a checkpoint another engine wrote (its weights are in another format)."""
    saved, running = saved_engine(directory), engine_name(trainer)
    if saved != running:
        raise ValueError(
            f"{directory}: a training checkpoint written under {saved or 'DDP / one process'}, resumed under "
            f"{running or 'DDP / one process'}; resume with the engine that wrote it (the final model is a "
            "normal safesignal checkpoint any launch can start from)"
        )


def full_state_dict(trainer) -> dict | None:
    """The whole model's weights gathered from the shards, on the writer (every rank must call)."""
    if engine_name(trainer) == "fsdp":
        # torch's API serves FSDP1 and FSDP2 alike; cpu_offload keeps the gathered copy on rank 0's CPU only.
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(trainer.model_wrapped, options=options)
    # ZeRO-3 needs `stage3_gather_16bit_weights_on_model_save: true` (configs/accelerate/zero3.yaml sets it).
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)
