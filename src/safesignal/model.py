"""SafetyModel: a causal LM with a `[CLS]` token and a one-logit safety head.

Design (DESIGN.md §Token and vocabulary):
- `[CLS]` is a special token in the tokenizer. Its input embedding is one extra row kept
  beside the model's embedding matrix (`cls_embedding`), so the vocabulary is never resized:
  not shrunk (Qwen2 pads its matrix past the tokenizer), not grown, tied or untied alike. The
  row starts as the mean of the existing rows. The LM head has no `[CLS]` output, or, where the
  new id falls inside a padded matrix, that logit is masked, so `[CLS]` is never emitted.
- The head is `Linear(hidden, 1)` on the final-norm hidden state of a `[CLS]` slot; its sigmoid
  is P(malicious).
- Masks and position ids come from `batching.py` / `masks.py` as 4-D additive float masks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import attention
from .batching import allowed_for, collate, positions_for
from .decoding import GenerationResult, Request, SafetyPolicy, Sampling, StrategicDecoder, StreamDelta
from .formatting import PromptFormatter, ensure_chat_template
from .masks import to_additive

CHECKPOINT_CONFIG = "safesignal.json"
HEAD_FILE = "safety_head.safetensors"
FORMAT_NAME = "safesignal-checkpoint"
FORMAT_VERSION = 1
DEFAULT_CLS_TOKEN = "[CLS]"


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
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "SafeSignalConfig":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if raw.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}: field 'format' is {raw.get('format')!r}, expected {FORMAT_NAME!r}")
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: field 'format_version' is {raw['format_version']}, newer than this "
                f"safesignal understands ({FORMAT_VERSION}); upgrade safesignal"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}")
        for required in ("cls_token_id", "hidden_size"):
            if not isinstance(raw.get(required), int):
                raise ValueError(f"{path}: field {required!r} must be an integer, got {raw.get(required)!r}")
        if raw.get("mask_mode", "sft") not in ("sft", "pretrain"):
            raise ValueError(f"{path}: field 'mask_mode' must be 'sft' or 'pretrain', got {raw['mask_mode']!r}")
        if raw.get("adapter") not in (None, "lora"):
            raise ValueError(f"{path}: field 'adapter' must be null or 'lora', got {raw['adapter']!r}")
        return cls(**raw)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


class SafetyModel(nn.Module):
    """Wraps a decoder-only HF causal LM and its tokenizer with `[CLS]` and a safety head."""

    def __init__(self, model, tokenizer, config: SafeSignalConfig | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or SafeSignalConfig()
        self.config.chat_template_fallback |= ensure_chat_template(tokenizer)
        if tokenizer.pad_token_id is None:
            # Padding is always masked out, so any id will do; EOS is the usual choice.
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.config.cls_token_id = _add_cls_token(tokenizer, self.config.cls_token, self.config.cls_token_id)
        hidden = model.config.get_text_config().hidden_size
        if self.config.hidden_size not in (None, hidden):
            raise ValueError(f"hidden_size {self.config.hidden_size} does not match the model's {hidden}")
        self.config.hidden_size = hidden

        if getattr(model.config, "_attn_implementation", None) == "sdpa":
            # Same kernels, minus a key/value copy for masked grouped-query attention on CPU.
            model.set_attn_implementation(attention.NAME)

        embeddings = model.get_input_embeddings().weight
        self.cls_embedding = nn.Parameter(embeddings.detach().mean(dim=0).clone())
        self.head = nn.Linear(hidden, 1, device=embeddings.device, dtype=embeddings.dtype)
        std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
        nn.init.normal_(self.head.weight, std=std)
        nn.init.zeros_(self.head.bias)
        self.formatter = PromptFormatter(tokenizer)

    # ------------------------------------------------------------------ structure
    @property
    def base(self):
        """The underlying `PreTrainedModel` (through a peft wrapper when there is one)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def cls_token_id(self) -> int:
        return self.config.cls_token_id

    @property
    def device(self) -> torch.device:
        return self.cls_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.cls_embedding.dtype

    # ------------------------------------------------------------------ forward pieces
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the `[CLS]` row substituted wherever `[CLS]` appears."""
        table = self.base.get_input_embeddings()
        is_cls = input_ids == self.cls_token_id
        safe_ids = input_ids.masked_fill(is_cls | (input_ids >= table.num_embeddings), 0)
        embeds = table(safe_ids)
        return torch.where(is_cls[..., None], self.cls_embedding.to(embeds.dtype), embeds)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache=None,
    ):
        """Final-norm hidden states of the decoder stack; `cache` (a DynamicCache) is updated in place."""
        out = self.base.get_decoder()(
            inputs_embeds=self.embed(input_ids),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM logits for `hidden`; the `[CLS]` logit (if the head has one) is masked out."""
        logits = self.base.get_output_embeddings()(hidden)
        softcap = getattr(self.base.config.get_text_config(), "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        if self.cls_token_id < logits.shape[-1]:
            logits[..., self.cls_token_id] = torch.finfo(logits.dtype).min
        return logits

    def cls_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Safety logits for `[CLS]` hidden states: (..., H) -> (...)."""
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def forward_batch(self, batch: dict) -> torch.Tensor:
        """Hidden states for a collated batch (see `batching.collate`), its masks built here."""
        ids = batch["input_ids"]
        if batch["mask_mode"] == "causal":
            # No [CLS]: hand transformers the 2-D padding mask so plain SFT takes the exact
            # path (and sdpa fast paths) it would take without safesignal.
            mask = batch["attention_mask"]
        else:
            mask = to_additive(allowed_for(batch), self.dtype)
        return self.hidden_states(ids, mask, positions_for(batch))

    def forward(self, **batch) -> torch.Tensor:
        return self.forward_batch(batch)

    # ------------------------------------------------------------------ classification
    @torch.inference_mode()
    def classify_batch(self, conversations: list[list[dict]]) -> list[float]:
        """P(malicious) for each conversation, from one batched forward over the prompts."""
        if self.config.objective != "cls":
            raise ValueError(
                f"this model was trained with objective {self.config.objective!r} (a plain-SFT baseline): "
                "its safety head is untrained, so it cannot classify"
            )
        if not conversations:
            return []
        examples = [self.formatter.encode(_prompt_only(m)) for m in conversations]
        batch = collate(
            examples,
            cls_token_id=self.cls_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            mask_mode=self.config.mask_mode,
            with_labels=False,
        )
        batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        hidden = self.forward_batch(batch)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        logits = self.cls_logits(hidden[rows, batch["slot_a"]]).float()
        return torch.sigmoid(logits).tolist()

    def classify(self, messages: list[dict] | str) -> float:
        """P(malicious) for one request (a message list, or a plain user string)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return self.classify_batch([messages])[0]

    # ------------------------------------------------------------------ generation
    def generate_batch(
        self,
        conversations: list[list[dict] | str],
        *,
        policy: SafetyPolicy | list[SafetyPolicy] | None = None,
        max_new_tokens: int = 256,
        prefills: list[str | None] | None = None,
        stop: list[str] | None = None,
        ignore_eos: bool = False,
        seed: int | list[int | None] | None = None,
        **sampling,
    ) -> list[GenerationResult]:
        """Strategic decoding for a batch (one forward per step); returns GenerationResults.

        `policy`: one for every row, or a list with one per conversation. `seed`: an int gives
        row i the seed `seed + i`, a list gives each row its own. `sampling`: do_sample,
        temperature, top_p, top_k, repetition_penalty. `generate_requests` takes a `Request`
        per row instead, for batches whose rows differ in anything else.
        """
        n = len(conversations)
        prefills = [None] * n if prefills is None else list(prefills)
        policies = list(policy) if isinstance(policy, (list, tuple)) else [policy or SafetyPolicy()] * n
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [None if seed is None else seed + i for i in range(n)]
        for name, values in (("prefills", prefills), ("policy", policies), ("seed", seeds)):
            if len(values) != n:
                raise ValueError(f"{name}: need one entry per conversation ({n}), got {len(values)}")
        requests = [
            Request(_as_messages(c), prefill=p, policy=pol, sampling=Sampling(**sampling, seed=s),
                    max_new_tokens=max_new_tokens, stop=list(stop or []), ignore_eos=ignore_eos)
            for c, p, pol, s in zip(conversations, prefills, policies, seeds)
        ]
        return self.generate_requests(requests)

    def generate_requests(self, requests: list[Request]) -> list[GenerationResult]:
        """Strategic decoding for one batch of independent requests (each its own policy,
        sampling and seed, budget, stop strings)."""
        return self._decoder().generate(requests)

    def generate(self, messages: list[dict] | str, *, prefill: str | None = None, **kwargs) -> GenerationResult:
        """Strategic decoding for one conversation; see `generate_batch`."""
        return self.generate_batch([messages], prefills=[prefill], **kwargs)[0]

    def stream(
        self,
        messages: list[dict] | str,
        *,
        policy: SafetyPolicy | None = None,
        max_new_tokens: int = 256,
        prefill: str | None = None,
        stop: list[str] | None = None,
        **sampling,
    ):
        """Yield `StreamDelta`s (text delta, new safety events) as decoding releases them.

        Text is released only once its step's verdict is known and never while a suspected
        transition awaits confirmation, so nothing released is ever retracted and the deltas
        add up to the final text. The last delta has `done=True` and the `GenerationResult`.
        """
        request = Request(_as_messages(messages), prefill=prefill, policy=policy or SafetyPolicy(),
                          sampling=Sampling(**sampling), max_new_tokens=max_new_tokens, stop=list(stop or []))
        for chunk in self._decoder().stream([request]):
            result = chunk.results[0] if chunk.results else None
            if chunk.deltas[0] or chunk.events[0] or result is not None:
                yield StreamDelta(chunk.deltas[0], chunk.events[0], result is not None, result)

    def _decoder(self) -> StrategicDecoder:
        if self.config.objective != "cls":
            raise ValueError("strategic decoding needs a [CLS]-trained model (this one is a plain-SFT baseline)")
        return StrategicDecoder(self)

    # ------------------------------------------------------------------ LoRA
    def add_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules=None):
        """Wrap the LM in a peft LoRA adapter; `[CLS]` row and head stay fully trainable."""
        from peft import LoraConfig, get_peft_model

        if self.config.adapter:
            raise ValueError("this SafetyModel already has a LoRA adapter")
        lora = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=target_modules or "all-linear",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(self.model, lora)
        self.config.adapter = "lora"
        return self

    def merge_lora(self) -> SafetyModel:
        """Fold the LoRA adapter into the base weights for faster inference (the extra
        low-rank matmuls cost ~10% of a CPU step). The model can no longer be saved as a
        LoRA checkpoint afterwards."""
        if self.config.adapter:
            self.model = self.model.merge_and_unload()
            self.config.adapter = None
            self.config.base_model = None  # a merged model is no longer "base + adapter"
        return self

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the checkpoint atomically: a crash mid-save never replaces a good directory."""
        target = Path(save_directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self.write_checkpoint_files(staging)
            _replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def write_checkpoint_files(self, directory: Path) -> None:
        """Write every checkpoint file into an existing directory (not atomic on its own)."""
        if self.config.adapter:
            if self.config.base_model is None:
                raise ValueError(
                    "cannot save a LoRA checkpoint without a base model reference: load the base "
                    "with SafetyModel.from_pretrained(path under SAFESIGNAL_HOME or registry name)"
                )
            for peft_config in self.model.peft_config.values():
                peft_config.base_model_name_or_path = _describe_base(self.config.base_model)
            # The embedding matrices are never changed ([CLS] lives in cls_embedding), so the
            # adapter never needs them; "auto" would look the base name up on the Hub.
            self.model.save_pretrained(directory, save_embedding_layers=False)
        else:
            self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        tensors = {
            "head.weight": self.head.weight.detach().contiguous(),
            "head.bias": self.head.bias.detach().contiguous(),
            "cls_embedding": self.cls_embedding.detach().contiguous(),
        }
        save_file(tensors, str(directory / HEAD_FILE), metadata={"format": FORMAT_NAME})
        self.config.save(directory / CHECKPOINT_CONFIG)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        base_model: str | None = None,
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
        device: str | torch.device | None = None,
    ) -> "SafetyModel":
        """Load a safesignal checkpoint, or wrap a plain HF model directory / registry name.

        A plain HF directory (or registry name) gets a fresh `[CLS]` row and head. `base_model`
        overrides the base a LoRA checkpoint names.
        """
        from .registry import load_base

        directory = Path(path)
        _recover_interrupted_save(directory)
        config_path = directory / CHECKPOINT_CONFIG
        if not config_path.is_file():
            model, tokenizer, reference = load_base(str(path), dtype=dtype, attn_implementation=attn_implementation)
            sm = cls(model, tokenizer, SafeSignalConfig(base_model=reference))
            return sm.to(device) if device is not None else sm

        config = SafeSignalConfig.load(config_path)
        head_path = directory / HEAD_FILE
        if not head_path.is_file():
            raise FileNotFoundError(f"{head_path}: checkpoint has {CHECKPOINT_CONFIG} but no safety head file")
        tokenizer = _load_tokenizer(directory)
        found = tokenizer.convert_tokens_to_ids(config.cls_token)
        if found != config.cls_token_id or tokenizer.unk_token_id == found and config.cls_token != tokenizer.unk_token:
            raise ValueError(
                f"{directory}: tokenizer maps {config.cls_token!r} to id {found}, but "
                f"{CHECKPOINT_CONFIG} field 'cls_token_id' is {config.cls_token_id}"
            )
        if config.adapter:
            from peft import PeftModel

            reference = base_model or config.base_model
            base, _, resolved = load_base(reference, dtype=dtype, attn_implementation=attn_implementation)
            config.base_model = resolved if base_model else config.base_model
            model = PeftModel.from_pretrained(base, str(directory), is_trainable=False)
        else:
            from transformers import AutoModelForCausalLM

            kwargs = {"dtype": dtype} if dtype is not None else {}
            if attn_implementation:
                kwargs["attn_implementation"] = attn_implementation
            model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
        model.eval()
        sm = cls(model, tokenizer, config)
        sm._load_head(head_path)
        return sm.to(device) if device is not None else sm

    def load_weights_from(self, directory: str | os.PathLike) -> None:
        """Load the trainable weights of a checkpoint written by this model's configuration.

        Used to resume training: full fine-tuning loads every model tensor, LoRA loads the
        adapter; both load the `[CLS]` row and head.
        """
        directory = Path(directory)
        if self.config.adapter:
            from peft import set_peft_model_state_dict

            adapter = directory / "adapter_model.safetensors"
            if not adapter.is_file():
                raise FileNotFoundError(f"{adapter}: LoRA checkpoint without its adapter weights")
            set_peft_model_state_dict(self.model, load_file(str(adapter)))
        else:
            files = sorted(directory.glob("model*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{directory}: no model*.safetensors weights")
            state = {}
            for f in files:
                state.update(load_file(str(f)))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected:
                raise ValueError(f"{directory}: unexpected tensors {sorted(unexpected)[:5]}")
            if set(missing) - _tied_parameter_names(self.model):
                raise ValueError(f"{directory}: missing tensors {sorted(set(missing))[:5]}")
        self._load_head(directory / HEAD_FILE)

    def _load_head(self, head_path: Path) -> None:
        if not head_path.is_file():
            raise FileNotFoundError(f"{head_path}: safety head file not found")
        tensors = load_file(str(head_path))
        expected = {
            "head.weight": tuple(self.head.weight.shape),
            "head.bias": tuple(self.head.bias.shape),
            "cls_embedding": tuple(self.cls_embedding.shape),
        }
        for name, shape in expected.items():
            if name not in tensors:
                raise ValueError(f"{head_path}: tensor {name!r} is missing")
            if tuple(tensors[name].shape) != shape:
                raise ValueError(
                    f"{head_path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, but the "
                    f"model needs {shape} (hidden size {self.config.hidden_size})"
                )
        with torch.no_grad():
            self.head.weight.copy_(tensors["head.weight"])
            self.head.bias.copy_(tensors["head.bias"])
            self.cls_embedding.copy_(tensors["cls_embedding"])


def _tied_parameter_names(module: nn.Module) -> set[str]:
    """Names under which a parameter appears a second time (tied weights are saved once)."""
    seen, tied = {}, set()
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.update({name, seen[id(param)]})
        seen[id(param)] = name
    return tied


def _as_messages(conversation: list[dict] | str) -> list[dict]:
    return [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation


def _prompt_only(messages: list[dict]) -> list[dict]:
    """Drop a trailing assistant turn: the classifier reads the request, not an answer."""
    return messages[:-1] if messages and messages[-1].get("role") == "assistant" else messages


def _add_cls_token(tokenizer, cls_token: str, expected_id: int | None) -> int:
    existing = tokenizer.cls_token
    if existing is not None and existing != cls_token:
        raise ValueError(
            f"tokenizer already has a different cls_token {existing!r}; safesignal's is {cls_token!r} "
            "(pass SafeSignalConfig(cls_token=...) to use the tokenizer's own)"
        )
    if existing is None:
        tokenizer.add_special_tokens({"cls_token": cls_token})
    token_id = tokenizer.convert_tokens_to_ids(cls_token)
    if expected_id is not None and token_id != expected_id:
        raise ValueError(f"tokenizer maps {cls_token!r} to id {token_id}, expected {expected_id}")
    return token_id


def _load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{directory}: cannot load the tokenizer ({err})") from err


def _describe_base(reference: dict) -> str:
    return reference.get("name") or f"$SAFESIGNAL_HOME/{reference['path']}"


def _backup_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _replace_directory(staging: Path, target: Path) -> None:
    """Swap `staging` into `target`; the old directory is removed only after the swap.

    Between the two renames the good copy lives at `.<name>.old`; `_recover_interrupted_save`
    puts it back if a crash lands exactly there.
    """
    backup = _backup_path(target)
    if target.exists():
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(target, backup)
    os.replace(staging, target)
    shutil.rmtree(backup, ignore_errors=True)


def _recover_interrupted_save(target: Path) -> None:
    backup = _backup_path(target)
    if not target.exists() and (backup / CHECKPOINT_CONFIG).is_file():
        warnings.warn(f"{target}: restoring the checkpoint left at {backup} by an interrupted save", stacklevel=3)
        os.replace(backup, target)


__all__ = ["SafetyModel", "SafeSignalConfig"]
