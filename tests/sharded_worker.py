"""One rank of the multi-process training tests (tests/test_sharded_training.py); run under torchrun.

    torchrun --standalone --nproc_per_node 2 tests/sharded_worker.py OUT_DIR ENGINE [--kill-at N] [--resume]
        [--cpu-efficient-loading] [--rank1-elsewhere] [--base HF_DIR] [--lora]

Trains the tiny recipe for STEPS fp32 AdamW steps with 4 examples per rank (8 per step),
saving a checkpoint every SAVE_EVERY steps, under ENGINE: `ddp` or `fsdp` (FSDP2, full
shard, one unit per decoder layer, sharded state dicts), `zero2` or `zero3` (DeepSpeed;
its CPU accelerator runs one process here). `--kill-at N` SIGKILLs rank 0 at the
end of step N (after the checkpoint before it is complete); `--resume` goes on from the
newest checkpoint. `--rank1-elsewhere` starts rank 1 from other weights (see
`start_rank1_elsewhere`); `--cpu-efficient-loading` has FSDP broadcast rank 0's.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 10, 5


def worker_config(output_dir: Path, per_device_batch: int, fsdp_config: Path | None = None, base: Path | None = None,
                  deepspeed_config: Path | None = None, lora: bool = False):
    from safesignal.config import load_config
    from safesignal.training import SafetyTrainingConfig

    overrides = {
        "output_dir": str(output_dir), "per_device_train_batch_size": per_device_batch, "max_steps": STEPS,
        "eval_strategy": "no", "save_strategy": "steps", "save_steps": SAVE_EVERY, "logging_steps": 2,
        "disable_tqdm": "true", "dataloader_num_workers": 0, "save_total_limit": 3,
    }
    if fsdp_config is not None:
        overrides |= {"fsdp": "true", "fsdp_config": str(fsdp_config)}
    if base is not None:
        overrides["model_name_or_path"] = str(base)
    if lora:
        overrides |= {"use_lora": "true", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    if deepspeed_config is not None:
        # DeepSpeed runs on its CPU accelerator here; `use_cpu` would turn it off.
        overrides |= {"deepspeed": str(deepspeed_config), "use_cpu": "false"}
    argv = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    return load_config(SafetyTrainingConfig, REPO / "configs" / "tiny.yaml", argv)


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and args.process_index == 0:
            os.kill(os.getpid(), signal.SIGKILL)


class CountSteps(TrainerCallback):
    """Rank 0 writes the FSDP units and how many optimiser steps this launch ran (a resumed
    launch runs the rest only)."""

    def __init__(self, out: Path):
        self.out, self.steps = out, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # The FSDP units the engine made (FSDP2 renames a wrapped module's class FSDP<name>).
        from torch.distributed.fsdp import FSDPModule

        if args.process_index == 0:
            units = sorted(type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule))
            (self.out / "fsdp_units.json").write_text(json.dumps(units))

    def on_train_end(self, args, state, control, **kwargs):
        if args.process_index == 0:
            (self.out / "steps_run.json").write_text(json.dumps({"steps": self.steps, "global_step": state.global_step}))


def start_rank1_elsewhere(out: Path) -> None:
    """Rank 1 builds its model from other random weights (so its `[CLS]` row and head differ
    too), as a rank whose weights were never loaded: under FSDP's CPU-efficient loading only
    rank 0 reads the checkpoint, and everything the others train with must come from rank 0's
    broadcast. (Real non-zero ranks start from empty tensors; random ones make a missed
    broadcast show as a wrong result rather than as garbage.)"""
    import torch
    from transformers import AutoModelForCausalLM

    from safesignal.model import SafetyModel

    load = SafetyModel.from_pretrained.__func__

    def elsewhere(cls, path, **kwargs):
        loaded = load(cls, path, **kwargs)  # for its tokenizer and architecture config
        with torch.random.fork_rng():
            torch.manual_seed(12345)
            model = cls(AutoModelForCausalLM.from_config(loaded.base.config), loaded.tokenizer)
        torch.save({"cls_embedding": model.cls_embedding.detach().clone(), "head": model.head.weight.detach().clone()},
                   out / "rank1_start.pt")
        return model

    SafetyModel.from_pretrained = classmethod(elsewhere)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("engine", choices=["ddp", "fsdp", "zero2", "zero3"])
    parser.add_argument("--per-device-batch", type=int, default=4)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--cpu-efficient-loading", action="store_true")
    parser.add_argument("--rank1-elsewhere", action="store_true")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (with the [CLS] row and head)")
    parser.add_argument("--base", type=Path, help="an HF model directory to train (default: tiny-llama, built in memory)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fsdp_config = None
    if args.engine == "fsdp":
        import fsdp_on_cpu  # noqa: F401  (accelerate gates FSDP to accelerator devices)

        os.environ["ACCELERATE_USE_FSDP"] = "true"  # what `accelerate launch` with an FSDP config sets

        # The shipped settings (no layer class named: auto-wrap reads the model's `_no_split_modules`),
        # with CPU-efficient loading as the test asks.
        settings = json.loads((REPO / "configs" / "accelerate" / "fsdp_trainer.json").read_text())
        settings["cpu_ram_efficient_loading"] = args.cpu_efficient_loading
        fsdp_config = args.out / "fsdp_config.json"
        fsdp_config.write_text(json.dumps(settings))
    deepspeed_config = None
    if args.engine.startswith("zero"):
        deepspeed_config = REPO / "configs" / "accelerate" / f"{args.engine}.json"  # the shipped settings
    if args.rank1_elsewhere and int(os.environ["RANK"]) == 1:
        start_rank1_elsewhere(args.out)
    from safesignal.training import train

    callbacks = [CountSteps(args.out)] + ([KillAt(args.kill_at)] if args.kill_at else [])
    config = worker_config(args.out / "run", args.per_device_batch, fsdp_config, args.base, deepspeed_config, args.lora)
    train(config, resume=args.resume, callbacks=callbacks)
    from accelerate import PartialState

    PartialState().destroy_process_group()  # leave the group in order before the process exits


if __name__ == "__main__":
    sys.exit(main())
