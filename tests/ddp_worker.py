"""One rank of the two-process training test (tests/test_ddp.py); run under torchrun.

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR

Trains the tiny recipe twice, each run writing `<OUT_DIR>/<mode>/rank<r>.pt` (the trainable
weights after every optimiser step and the dataset positions of every training example this
rank collated):
- `synced`: the real trainer;
- `unsynced`: the control, the old defect restored: the loss is computed on the unwrapped
  model, so DDP never sees the forward and never averages the gradients.
"""

import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from safesignal.config import load_config
from safesignal.training import SafetyCollator, SafetyTrainer, SafetyTrainingConfig, train

REPO = Path(__file__).resolve().parents[1]
STEPS = 5


def ddp_config(output_dir: Path, per_device_batch: int) -> SafetyTrainingConfig:
    """The tiny recipe, 5 fp32 AdamW steps; shared by the workers and the one-process reference."""
    overrides = {
        "output_dir": str(output_dir), "per_device_train_batch_size": per_device_batch, "max_steps": STEPS,
        "eval_strategy": "no", "save_strategy": "steps", "save_steps": STEPS, "logging_steps": 2,
        "disable_tqdm": "true", "dataloader_num_workers": 0,
    }
    argv = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    return load_config(SafetyTrainingConfig, REPO / "configs" / "tiny.yaml", argv)


class RecordWeights(TrainerCallback):
    """The trainable weights (flattened) after every optimiser step."""

    def __init__(self):
        self.after_step: list[torch.Tensor] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        params = [p.detach().flatten().clone() for p in model.parameters() if p.requires_grad]
        self.after_step.append(torch.cat(params))


def record_training_keys(collated: list[list[int]]):
    """Patch the collator to note the dataset positions of every training batch it builds."""
    original = SafetyCollator.__call__

    def recording(self, examples):
        if self.window_sampler is not None:  # the training collator (evaluation has no windows)
            collated.append([e.sample_key for e in examples])
        return original(self, examples)

    SafetyCollator.__call__ = recording
    return original


def unsynced_compute_loss(original):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return original(self, self.accelerator.unwrap_model(model), inputs, return_outputs, num_items_in_batch)

    return compute_loss


def main(out: Path) -> None:
    real_compute_loss = SafetyTrainer.compute_loss
    for mode in ("synced", "unsynced"):
        SafetyTrainer.compute_loss = real_compute_loss if mode == "synced" else unsynced_compute_loss(real_compute_loss)
        weights, keys = RecordWeights(), []
        original_call = record_training_keys(keys)
        try:
            config = ddp_config(out / mode / "run", per_device_batch=4)
            train(config, callbacks=[weights])
        finally:
            SafetyCollator.__call__ = original_call
        record = {"after_step": torch.stack(weights.after_step), "keys": keys[:STEPS], "world_size": config.world_size}
        torch.save(record, out / mode / f"rank{config.process_index}.pt")
    SafetyTrainer.compute_loss = real_compute_loss


if __name__ == "__main__":
    main(Path(sys.argv[1]))
