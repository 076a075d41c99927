"""Copy the three trained embedded models into the package so `safesignal demo` can skip
training (DESIGN.md §Results file: LoRA adapters + [CLS] row + head, bf16, ≤ 40 MB in all).

    python scripts/ship_models.py            # after `safesignal demo --retrain`

The LoRA adapter is stored in bf16 (the demo's figures with the shipped models are checked
against the freshly trained ones); the [CLS] row and head stay fp32 (a few KB). The tokenizer
(the base's plus `[CLS]`, the same for all three) ships once, in `smollm2-tokenizer/`; each
model's safesignal.json points there (`extra.shared_tokenizer`).

The cls model ships with the values `scripts/calibrate_cls.py` chose on the validation split
(results/embedded/calibration_cls.json) in its safesignal.json `calibration`, for the fields
named in APPLIED_CALIBRATION: the model's default policy, so that `chat`, `generate`,
`classify` and the API decode as the committed figures were measured.
"""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from safesignal.checkpoint import check_calibration, is_checkpoint
from safesignal.demo import RECIPES
from safesignal.home import safesignal_home
from safesignal.io import replace_directory

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_MODELS = ROOT / "src" / "safesignal" / "resources" / "models"
CALIBRATION = ROOT / "results" / "embedded" / "calibration_cls.json"
# The calibrated fields the shipped model decodes with by default: both choices of the rule
# (the grids that compare weights alone, seeds / boundary / sweep, pin SafetyPolicy's τ 3).
APPLIED_CALIBRATION = {"cls": ("threshold", "tau")}
LIMIT_BYTES = 40 * 2**20
SKIP = {"training_config.json", "eval_metrics.json", "README.md"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
SHARED_TOKENIZER = "smollm2-tokenizer"


def _replace(target: Path, fill) -> None:
    """Write `target` staged and swap it in; only an earlier shipped directory is replaced."""
    replace_directory(target, fill, is_ours=lambda d: is_checkpoint(d) or is_shipped_tokenizer(d),
                      what="shipped model directory")


def is_shipped_tokenizer(directory: Path) -> bool:
    names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    return "tokenizer.json" in names and names <= TOKENIZER_FILES


def calibration(recipe: str, path: Path = CALIBRATION) -> dict:
    """The applied calibrated fields for `recipe`, read from the committed calibration file."""
    fields = APPLIED_CALIBRATION.get(recipe, ())
    if not fields:
        return {}
    chosen = json.loads(path.read_text())
    missing = [f for f in fields if f not in chosen]
    if missing:
        raise SystemExit(f"{path}: no {missing} (run scripts/calibrate_cls.py)")
    values = {f: chosen[f] for f in fields}
    check_calibration(values, f"{path}")
    return values


def ship_tokenizer() -> int:
    sources = [safesignal_home() / "models" / f"smollm2-{recipe}" for recipe in RECIPES]
    first = sources[0]
    for other in sources[1:]:
        for name in TOKENIZER_FILES:
            if (first / name).exists() and not filecmp.cmp(first / name, other / name, shallow=False):
                raise SystemExit(f"{other / name} differs from {first / name}: the models do not share a tokenizer")
    target = PACKAGE_MODELS / SHARED_TOKENIZER
    _replace(target, lambda staging: [shutil.copy2(first / n, staging / n) for n in sorted(TOKENIZER_FILES)
                                      if (first / n).exists()])
    return sum(p.stat().st_size for p in target.iterdir())


def ship(recipe: str) -> int:
    source = safesignal_home() / "models" / f"smollm2-{recipe}"
    if not (source / "safesignal.json").is_file():
        raise SystemExit(f"{source}: no trained checkpoint; run `safesignal demo --retrain` first")
    target = PACKAGE_MODELS / f"smollm2-{recipe}"

    def fill(staging: Path) -> None:
        for path in sorted(source.iterdir()):
            if path.name in SKIP or path.name in TOKENIZER_FILES or not path.is_file():
                continue
            if path.name == "adapter_model.safetensors":
                tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(path)).items()}
                save_file(tensors, str(staging / path.name), metadata={"format": "pt"})
            elif path.name == "safesignal.json":
                config = json.loads(path.read_text())
                config.setdefault("extra", {})["shared_tokenizer"] = f"../{SHARED_TOKENIZER}"
                config["calibration"] = calibration(recipe)
                (staging / path.name).write_text(json.dumps(config, indent=2) + "\n")
            else:
                shutil.copy2(path, staging / path.name)

    _replace(target, fill)
    return sum(p.stat().st_size for p in target.iterdir())


def main() -> int:
    total = ship_tokenizer()
    print(f"{SHARED_TOKENIZER}: {total / 2**20:.1f} MB")
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
