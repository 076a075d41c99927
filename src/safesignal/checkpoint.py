"""Checkpoint IO: the `safesignal.json` schema, atomic saves, loads, LoRA and the `[CLS]` row.

A checkpoint directory holds a Hugging Face model directory (full weights, or a peft LoRA
adapter naming its base by a SAFESIGNAL_HOME-relative path or a registry name), the
tokenizer, `safety_head.safetensors` (head + `[CLS]` row) and `safesignal.json`.

Saves go through `io.replace_directory`: the files are written to a staging directory that
is swapped in only when complete, so a crash never leaves a half-written checkpoint where a
good one was, and a save replaces only a previous checkpoint, never a user's directory.
Every tensor is read from safetensors; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .home import relative_to_home
from .io import atomic_write_json, recover_interrupted_replace, replace_directory

CHECKPOINT_CONFIG = "safesignal.json"
HEAD_FILE = "safety_head.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
FORMAT_NAME = "safesignal-checkpoint"
FORMAT_VERSION = 1
DEFAULT_CLS_TOKEN = "[CLS]"
# `extra.shared_tokenizer` in safesignal.json: a directory (relative to the checkpoint) that
# holds the tokenizer instead of the checkpoint itself. The package's shipped models use one
# shared tokenizer directory, so it ships once rather than once per model.
SHARED_TOKENIZER_KEY = "shared_tokenizer"


@dataclass
class SafeSignalConfig:
    """What `safesignal.json` records beside the HF model directory."""

    cls_token: str = DEFAULT_CLS_TOKEN
    cls_token_id: int | None = None
    hidden_size: int | None = None
    mask_mode: str = "sft"
    objective: str = "cls"  # "sft" for plain-SFT baselines: the head is untrained, do not use it
    cls_reads_response_window: bool = True
    adapter: str | None = None  # "lora" when the weights are a peft adapter
    base_model: dict | None = None  # {"kind": "home", "path": ...} or {"kind": "registry", "name": ...}
    chat_template_fallback: bool = False
    # SafetyPolicy fields chosen for these weights on the validation split (e.g. {"threshold":
    # 0.35}): the model's default policy (`SafetyModel.default_policy`), so the API, the CLI
    # and the figures measured with the chosen values decode alike. Empty: SafetyPolicy's own.
    calibration: dict = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "SafeSignalConfig":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}: field 'format' is {raw.get('format')!r}, expected {FORMAT_NAME!r}")
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: field 'format_version' is {raw['format_version']}, newer than this "
                f"safesignal understands ({FORMAT_VERSION}); upgrade safesignal"
            )
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}")
        for required in ("cls_token_id", "hidden_size"):
            if not isinstance(raw.get(required), int):
                raise ValueError(f"{path}: field {required!r} must be an integer, got {raw.get(required)!r}")
        if raw.get("mask_mode", "sft") not in ("sft", "pretrain"):
            raise ValueError(f"{path}: field 'mask_mode' must be 'sft' or 'pretrain', got {raw['mask_mode']!r}")
        if raw.get("adapter") not in (None, "lora"):
            raise ValueError(f"{path}: field 'adapter' must be null or 'lora', got {raw['adapter']!r}")
        check_calibration(raw.get("calibration", {}), f"{path}: field 'calibration'")
        return cls(**raw)

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


def check_calibration(values, where: str) -> None:
    """A calibration must be a mapping of SafetyPolicy fields that make a valid policy."""
    from .decoding.policy import SafetyPolicy

    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object of SafetyPolicy fields, got {values!r}")
    unknown = sorted(set(values) - set(SafetyPolicy.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{where}: {unknown} are not SafetyPolicy fields")
    try:
        SafetyPolicy(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def is_checkpoint(directory: Path) -> bool:
    """Whether `directory` holds a safesignal checkpoint (the only kind a save may replace)."""
    try:
        return json.loads((directory / CHECKPOINT_CONFIG).read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def has_trained_head(path: str | os.PathLike) -> bool:
    """Whether `path` (a checkpoint directory or a shipped model's name) holds a safesignal
    checkpoint whose head was trained (objective "cls"); a plain base gets a fresh one."""
    from .registry import shipped_checkpoint

    directory = shipped_checkpoint(str(path)) or Path(path)
    if not is_checkpoint(directory):
        return False
    return json.loads((directory / CHECKPOINT_CONFIG).read_text()).get("objective", "cls") == "cls"


# ---------------------------------------------------------------------------------- save
def save_checkpoint(sm, directory: str | os.PathLike, state_dict: dict | None = None) -> Path:
    """Write `sm` to `directory` atomically; only an earlier checkpoint there is replaced.

    An earlier checkpoint is replaced as a whole (a full fine-tune's weight files do not
    linger under a later LoRA save); any other non-empty directory raises `io.NotOursError`
    naming it, before any work and without touching it.
    """
    return replace_directory(directory, lambda staging: write_checkpoint_files(sm, staging, state_dict),
                             is_ours=is_checkpoint, what="checkpoint")


HEAD_TENSORS = ("head.weight", "head.bias", "cls_embedding")


def write_checkpoint_files(sm, directory: Path, state_dict: dict | None = None) -> None:
    """Write every checkpoint file of `sm` into an existing directory (not atomic on its own).

    `state_dict` (keys of the SafetyModel module: `model.…`, `head.*`, `cls_embedding`) is
    written instead of the module's own tensors when given: under FSDP / ZeRO-3 the Trainer
    gathers the full weights into it while each rank's module holds only a shard.
    """
    directory = Path(directory)
    if state_dict is None:
        # The module's own tensors; building its whole state dict just for these would walk every weight.
        inner, head = None, {"head.weight": sm.head.weight, "head.bias": sm.head.bias, "cls_embedding": sm.cls_embedding}
    else:
        missing = [name for name in HEAD_TENSORS if name not in state_dict]
        if missing:
            raise ValueError(f"state_dict: missing {missing}; expected the SafetyModel's own keys")
        inner = {name[len("model."):]: t for name, t in state_dict.items() if name.startswith("model.")}
        head = {name: state_dict[name] for name in HEAD_TENSORS}
    if sm.config.adapter:
        if sm.config.base_model is None:
            raise ValueError(
                "cannot save a LoRA checkpoint without a base model reference: load the base "
                "with SafetyModel.from_pretrained(path under SAFESIGNAL_HOME or registry name)"
            )
        for peft_config in sm.model.peft_config.values():
            peft_config.base_model_name_or_path = _describe_base(sm.config.base_model)
        # The embedding matrices are never changed ([CLS] lives in cls_embedding), so the
        # adapter never needs them; "auto" would look the base name up on the Hub.
        sm.model.save_pretrained(directory, state_dict=inner, save_embedding_layers=False)
    else:
        sm.model.save_pretrained(directory, state_dict=inner)
    sm.tokenizer.save_pretrained(directory)
    tensors = {name: tensor.detach().contiguous() for name, tensor in head.items()}
    save_file(tensors, str(directory / HEAD_FILE), metadata={"format": FORMAT_NAME})
    sm.config.save(directory / CHECKPOINT_CONFIG)


# ---------------------------------------------------------------------------------- load
def load_checkpoint(cls, path: str | os.PathLike, *, base_model=None, dtype=None, attn_implementation=None,
                    device=None):
    """`cls` (SafetyModel) from a checkpoint, a shipped model's name, or a plain base model.

    A plain HF directory or base registry name gets a fresh `[CLS]` row and head.
    `base_model` overrides the base a LoRA checkpoint names.
    """
    from .registry import load_base, shipped_checkpoint

    directory = shipped_checkpoint(str(path)) or Path(path)
    recover_interrupted_replace(directory, is_checkpoint)
    config_path = directory / CHECKPOINT_CONFIG
    if not config_path.is_file():
        model, tokenizer, reference = load_base(str(path), dtype=dtype, attn_implementation=attn_implementation)
        sm = cls(model, tokenizer, SafeSignalConfig(base_model=reference))
        return sm.to(device) if device is not None else sm

    config = SafeSignalConfig.load(config_path)
    head_path = directory / HEAD_FILE
    if not head_path.is_file():
        raise FileNotFoundError(f"{head_path}: checkpoint has {CHECKPOINT_CONFIG} but no safety head file")
    tokenizer = _load_tokenizer(_tokenizer_directory(directory, config))
    # A save writes the tokenizer beside the weights: the loaded model no longer points
    # elsewhere for it.
    config.extra.pop(SHARED_TOKENIZER_KEY, None)
    found = tokenizer.convert_tokens_to_ids(config.cls_token)
    if found != config.cls_token_id or tokenizer.unk_token_id == found and config.cls_token != tokenizer.unk_token:
        raise ValueError(
            f"{directory}: tokenizer maps {config.cls_token!r} to id {found}, but "
            f"{CHECKPOINT_CONFIG} field 'cls_token_id' is {config.cls_token_id}"
        )
    if config.adapter:
        from peft import PeftModel

        _require_file(directory / ADAPTER_FILE, "LoRA checkpoint without its adapter weights")
        reference = base_model or config.base_model
        base, _, resolved = load_base(reference, dtype=dtype, attn_implementation=attn_implementation)
        config.base_model = resolved if base_model else config.base_model
        model = PeftModel.from_pretrained(base, str(directory), is_trainable=False)
    else:
        from transformers import AutoModelForCausalLM

        kwargs = {"dtype": dtype} if dtype is not None else {}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(str(directory), use_safetensors=True, **kwargs)
        # These weights are the base any new adapter sits on, not the base they were trained
        # from: name this directory (relative to the home), or nothing outside it, so a LoRA
        # save refuses rather than pointing its adapter at the un-fine-tuned weights.
        relative = relative_to_home(directory)
        config.base_model = {"kind": "home", "path": relative} if relative is not None else None
    model.eval()
    sm = cls(model, tokenizer, config)
    load_head(sm, head_path)
    return sm.to(device) if device is not None else sm


def load_trainable_weights(sm, directory: str | os.PathLike) -> None:
    """Load the trainable weights of a checkpoint written by `sm`'s configuration.

    Used to resume training: full fine-tuning loads every model tensor, LoRA loads the
    adapter; both load the `[CLS]` row and head.
    """
    directory = Path(directory)
    if sm.config.adapter:
        from peft import set_peft_model_state_dict

        adapter = directory / ADAPTER_FILE
        _require_file(adapter, "LoRA checkpoint without its adapter weights")
        set_peft_model_state_dict(sm.model, load_file(str(adapter)))
    else:
        files = sorted(directory.glob("model*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no model*.safetensors weights")
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        missing, unexpected = sm.model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{directory}: unexpected tensors {sorted(unexpected)[:5]}")
        if set(missing) - _tied_parameter_names(sm.model):
            raise ValueError(f"{directory}: missing tensors {sorted(set(missing))[:5]}")
    load_head(sm, directory / HEAD_FILE)


def load_head(sm, head_path: Path) -> None:
    """Copy the head and the `[CLS]` row from `head_path` into `sm`, checking every shape."""
    _require_file(head_path, "safety head file not found")
    tensors = load_file(str(head_path))
    expected = {
        "head.weight": tuple(sm.head.weight.shape),
        "head.bias": tuple(sm.head.bias.shape),
        "cls_embedding": tuple(sm.cls_embedding.shape),
    }
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"{head_path}: tensor {name!r} is missing")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{head_path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, but the "
                f"model needs {shape} (hidden size {sm.config.hidden_size})"
            )
    with torch.no_grad():
        sm.head.weight.copy_(tensors["head.weight"])
        sm.head.bias.copy_(tensors["head.bias"])
        sm.cls_embedding.copy_(tensors["cls_embedding"])


def _require_file(path: Path, problem: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {problem}")


def _tied_parameter_names(module: torch.nn.Module) -> set[str]:
    """Names under which a parameter appears a second time (tied weights are saved once)."""
    seen, tied = {}, set()
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.update({name, seen[id(param)]})
        seen[id(param)] = name
    return tied


def _tokenizer_directory(directory: Path, config: SafeSignalConfig) -> Path:
    shared = config.extra.get(SHARED_TOKENIZER_KEY)
    if shared is None:
        return directory
    path = (directory / str(shared)).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{directory / CHECKPOINT_CONFIG}: field 'extra.{SHARED_TOKENIZER_KEY}' is "
                                f"{shared!r}, but {path} is not a directory")
    return path


def _load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{directory}: cannot load the tokenizer ({err})") from err


def _describe_base(reference: dict) -> str:
    return reference.get("name") or f"$SAFESIGNAL_HOME/{reference['path']}"


__all__ = [
    "CHECKPOINT_CONFIG", "HEAD_FILE", "SafeSignalConfig", "is_checkpoint", "load_checkpoint", "load_head",
    "load_trainable_weights", "save_checkpoint", "write_checkpoint_files",
]
