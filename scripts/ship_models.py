"""Copy the three trained embedded models into the package so `safesignal demo` can skip
training (DESIGN.md §Results file: LoRA adapters + [CLS] row + head, bf16, ≤ 40 MB in all).

    python scripts/ship_models.py            # after `safesignal demo --retrain`

The LoRA adapter is stored in bf16 (the demo's figures with the shipped models are checked
against the freshly trained ones); the [CLS] row and head stay fp32 (a few KB).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from safesignal.demo import RECIPES
from safesignal.home import safesignal_home

PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "src" / "safesignal" / "resources" / "models"
LIMIT_BYTES = 40 * 2**20
SKIP = {"training_config.json", "eval_metrics.json", "README.md"}


def ship(recipe: str) -> int:
    source = safesignal_home() / "models" / f"smollm2-{recipe}"
    if not (source / "safesignal.json").is_file():
        raise SystemExit(f"{source}: no trained checkpoint; run `safesignal demo --retrain` first")
    target = PACKAGE_MODELS / f"smollm2-{recipe}"
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.name in SKIP or not path.is_file():
            continue
        if path.name == "adapter_model.safetensors":
            tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(path)).items()}
            save_file(tensors, str(staging / path.name), metadata={"format": "pt"})
        else:
            shutil.copy2(path, staging / path.name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return sum(p.stat().st_size for p in target.iterdir())


def main() -> int:
    total = 0
    for recipe in RECIPES:
        size = ship(recipe)
        total += size
        print(f"smollm2-{recipe}: {size / 2**20:.1f} MB")
    print(f"total {total / 2**20:.1f} MB (limit {LIMIT_BYTES / 2**20:.0f} MB)")
    if total > LIMIT_BYTES:
        raise SystemExit("shipped models exceed the size limit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
