"""Resolve model names: base models (a directory, a path under SAFESIGNAL_HOME, or a registry
name) and the trained models shipped inside the package.

Base registry names build models in-process (the tiny random ones) or point at converted
models under SAFESIGNAL_HOME, so a checkpoint never records an absolute path. Shipped names
("smollm2-cls", "smollm2-sft", "smollm2-qi_aug") are the embedded default's trained LoRA
checkpoints in `safesignal/resources/models/`; a name wins over a directory of the same name
(pass "./smollm2-cls" for the directory).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .checkpoint import CHECKPOINT_CONFIG
from .home import relative_to_home, safesignal_home

TINY_PREFIX = "tiny-"
SHIPPED_NAMES = ("smollm2-cls", "smollm2-sft", "smollm2-qi_aug")
DEFAULT_MODEL = "smollm2-cls"  # what `generate`, `chat` and `classify` load without --model


def registry_names() -> list[str]:
    from .base_models import SMOLLM2_NAME
    from .tiny import _CONFIGS

    return [SMOLLM2_NAME] + [TINY_PREFIX + arch for arch in sorted(_CONFIGS)] + list(SHIPPED_NAMES)


def shipped_checkpoint(name: str) -> Path | None:
    """Directory of the shipped trained model `name`, or None when `name` is not one."""
    if name not in SHIPPED_NAMES:
        return None
    path = Path(str(resources.files("safesignal").joinpath("resources", "models", name)))
    if not (path / CHECKPOINT_CONFIG).is_file():
        raise FileNotFoundError(
            f"{path}: the shipped model {name!r} is missing from this installation; "
            "train it with `safesignal demo --retrain` and load its output directory"
        )
    return path


def base_config(reference):
    """The Hugging Face architecture config of a base model or checkpoint, without its weights.

    `reference` as for `load_base`, or a safesignal checkpoint directory (a LoRA checkpoint
    answers with its base's config)."""
    from transformers import AutoConfig

    if isinstance(reference, dict):
        if reference.get("kind") == "registry":
            return base_config(reference["name"])
        if reference.get("kind") == "home":
            return base_config(str(safesignal_home() / reference["path"]))
        raise ValueError(f"base_model: unrecognised reference {reference!r}")
    name = str(reference)
    from .base_models import SMOLLM2_NAME, ensure_smollm2_base

    if name == SMOLLM2_NAME:
        return AutoConfig.from_pretrained(str(ensure_smollm2_base()))
    if name.startswith(TINY_PREFIX):
        from .tiny import build_tiny_tokenizer, tiny_config

        return tiny_config(name[len(TINY_PREFIX):], vocab_size=len(build_tiny_tokenizer()))
    checkpoint = shipped_checkpoint(name) or Path(name).expanduser()
    if (checkpoint / CHECKPOINT_CONFIG).is_file():
        from .checkpoint import SafeSignalConfig

        config = SafeSignalConfig.load(checkpoint / CHECKPOINT_CONFIG)
        if config.adapter:
            return base_config(config.base_model)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(
            f"{name}: no such model directory (or no config.json in it), and not a registry name "
            f"({', '.join(registry_names())})"
        )
    return AutoConfig.from_pretrained(str(checkpoint))


def load_base(reference, *, dtype=None, attn_implementation=None):
    """Return (model, tokenizer, reference-dict) for a base model.

    `reference` is a path string, a registry name, or a reference dict from `safesignal.json`.
    """
    if isinstance(reference, dict):
        if reference.get("kind") == "registry":
            return load_base(reference["name"], dtype=dtype, attn_implementation=attn_implementation)
        if reference.get("kind") == "home":
            path = safesignal_home() / reference["path"]
            if not path.is_dir():
                raise FileNotFoundError(
                    f"base model {reference['path']!r} not found under SAFESIGNAL_HOME ({safesignal_home()}); "
                    "set SAFESIGNAL_HOME or pass base_model=..."
                )
            return load_base(str(path), dtype=dtype, attn_implementation=attn_implementation)
        raise ValueError(f"base_model: unrecognised reference {reference!r}")

    name = str(reference)
    from .base_models import SMOLLM2_NAME, ensure_smollm2_base

    if name == SMOLLM2_NAME:
        model, tokenizer, _ = load_base(str(ensure_smollm2_base()), dtype=dtype, attn_implementation=attn_implementation)
        return model, tokenizer, {"kind": "registry", "name": name}
    if name.startswith(TINY_PREFIX):
        from .tiny import build_tiny

        arch = name[len(TINY_PREFIX) :]
        model, tokenizer = build_tiny(arch, attn_implementation=attn_implementation or "sdpa")
        if dtype is not None:
            model = model.to(dtype)
        return model, tokenizer, {"kind": "registry", "name": name}

    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{name}: no such model directory, and not a registry name ({', '.join(registry_names())}). "
            "Models are never downloaded from a hub."
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'}: not a Hugging Face model directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dtype} if dtype is not None else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    relative = relative_to_home(path)
    reference = {"kind": "home", "path": relative} if relative is not None else None
    return model.eval(), tokenizer, reference
