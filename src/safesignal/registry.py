"""Resolve a base-model reference: a directory, a path under SAFESIGNAL_HOME, or a registry name.

Registry names build models in-process (the tiny random ones) or point at converted models
under SAFESIGNAL_HOME, so a checkpoint never records an absolute path.
"""

from __future__ import annotations

from pathlib import Path

from .home import relative_to_home, safesignal_home

TINY_PREFIX = "tiny-"


def registry_names() -> list[str]:
    from .base_models import SMOLLM2_NAME
    from .tiny import _CONFIGS

    return [SMOLLM2_NAME] + [TINY_PREFIX + arch for arch in sorted(_CONFIGS)]


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
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    relative = relative_to_home(path)
    reference = {"kind": "home", "path": relative} if relative is not None else None
    return model.eval(), tokenizer, reference
