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

import os

import torch
from torch import nn

from . import attention, checkpoint
from .batching import allowed_for, collate, positions_for
from .checkpoint import SafeSignalConfig
from .decoding import GenerationResult, Request, SafetyPolicy, Sampling, StrategicDecoder, StreamDelta
from .formatting import PromptFormatter, ensure_chat_template
from .masks import to_additive
from .objective import SafetyOutput, joint_objective, slot_logits


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
        self.cls_embedding = nn.Parameter(mean_row(embeddings))
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
        out_of_range = ~is_cls & ((input_ids < 0) | (input_ids >= table.num_embeddings))
        if out_of_range.any():
            bad = sorted(set(input_ids[out_of_range].tolist()))[:5]
            raise ValueError(
                f"input_ids: token id(s) {bad} outside the embedding matrix (0..{table.num_embeddings - 1}, "
                f"[CLS] = {self.cls_token_id}); was the batch tokenised with another tokenizer?"
            )
        # The [CLS] id may lie past the matrix (its row is cls_embedding): look up a stand-in.
        embeds = table(input_ids.masked_fill(is_cls, 0))
        return torch.where(is_cls[..., None], self.cls_embedding.to(embeds.dtype), embeds)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
    ):
        """Final-norm hidden states of the decoder stack; `cache` (a DynamicCache) is updated in place.
        `inputs_embeds` (same shape as `self.embed(input_ids)`) replaces the token embeddings:
        attacks that optimise over the embedding space, or over one-hot tokens, feed it."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        elif inputs_embeds.shape[:2] != input_ids.shape:
            raise ValueError(f"inputs_embeds: shape {tuple(inputs_embeds.shape)} does not match input_ids "
                             f"{tuple(input_ids.shape)}")
        out = self.base.get_decoder()(
            inputs_embeds=inputs_embeds,
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
            # The dtype of the residual stream (the embedding table's; autocast never casts an
            # embedding), which is what attention scores are computed in: under CPU autocast
            # the rotary embedding promotes queries back to it, and sdpa rejects a mask in a
            # narrower dtype than the query.
            mask = to_additive(allowed_for(batch), self.base.get_input_embeddings().weight.dtype)
        return self.hidden_states(ids, mask, positions_for(batch))

    def forward(self, *, cls_loss_weight: float | None = None, num_items_in_batch=None, **batch) -> SafetyOutput:
        """TRL style: a collated batch in, logits and (given `labels`) the joint loss out.

        The loss is computed here, inside the module, so DDP / FSDP wrappers see the whole
        forward and synchronise its gradients. `cls_loss_weight` is λ; `num_items_in_batch` is
        the (supervised tokens, live [CLS] slots) count of the whole optimiser step that the
        losses are normalised by (see `objective.py`; default: this batch's own counts).
        """
        hidden = self.forward_batch(batch)
        if "labels" in batch:
            return joint_objective(self, hidden, batch, cls_loss_weight, num_items_in_batch)
        with_cls = batch["mask_mode"] != "causal"
        return SafetyOutput(
            lm_logits=self.lm_logits(hidden),
            cls_logits=slot_logits(self, hidden, batch["slot_a"]) if with_cls else None,
        )

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
        policies = list(policy) if isinstance(policy, (list, tuple)) else [policy or self.default_policy()] * n
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
        ignore_eos: bool = False,
        **sampling,
    ):
        """Yield `StreamDelta`s (text delta, new safety events) as decoding releases them.

        Text is released only once its step's verdict is known and never while a suspected
        transition awaits confirmation, so nothing released is ever retracted and the deltas
        add up to the final text. The last delta has `done=True` and the `GenerationResult`.
        """
        request = Request(_as_messages(messages), prefill=prefill, policy=policy or self.default_policy(),
                          sampling=Sampling(**sampling), max_new_tokens=max_new_tokens, stop=list(stop or []),
                          ignore_eos=ignore_eos)
        for chunk in self._decoder().stream([request]):
            result = chunk.results[0] if chunk.results else None
            if chunk.deltas[0] or chunk.events[0] or result is not None:
                yield StreamDelta(chunk.deltas[0], chunk.events[0], result is not None, result)

    def default_policy(self, **fields) -> SafetyPolicy:
        """The policy decoding uses when none is given: SafetyPolicy's defaults, then the values
        calibrated for these weights (safesignal.json `calibration`), then `fields`."""
        return SafetyPolicy(**{**self.config.calibration, **fields})

    def _decoder(self) -> StrategicDecoder:
        if self.config.objective != "cls":
            raise ValueError("strategic decoding needs a [CLS]-trained model (this one is a plain-SFT baseline)")
        return StrategicDecoder(self)

    @property
    def _no_split_modules(self) -> list[str]:
        """The base model's layer classes that must not be split: FSDP's transformer auto-wrap
        and accelerate's device maps read it from the model they are given."""
        return list(getattr(self.base, "_no_split_modules", None) or [])

    def get_parameter_or_buffer(self, target: str):
        """A parameter, buffer or plain tensor attribute by dotted name, as transformers'
        models answer it: accelerate's FSDP2 loading asks the model it wraps for this."""
        for getter in (self.get_parameter, self.get_buffer):
            try:
                return getter(target)
            except AttributeError:
                pass
        module, _, name = target.rpartition(".")
        return getattr(self.get_submodule(module), name)

    # ------------------------------------------------------------------ training memory
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False) -> None:
        """Recompute each decoder layer in the backward pass (what `activation_checkpointing: true`
        asks the Trainer for). Non-reentrant by default: a LoRA model's frozen embeddings give
        the first layer an input that needs no gradient, which reentrant checkpointing mishandles."""
        self.base.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs or {"use_reentrant": False},
            every_n_layers=every_n_layers, offload=offload)

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.base.is_activation_checkpointing

    # ------------------------------------------------------------------ LoRA
    def add_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules=None):
        """Wrap the LM in a peft LoRA adapter; `[CLS]` row and head stay fully trainable."""
        from peft import get_peft_model

        if self.config.adapter:
            raise ValueError("this SafetyModel already has a LoRA adapter")
        self.model = get_peft_model(self.model, lora_config(r, alpha, dropout, target_modules))
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

    # ------------------------------------------------------------------ save / load (checkpoint.py)
    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Write the checkpoint atomically; only an earlier safesignal checkpoint is replaced.
        `state_dict`: this module's weights gathered from shards (FSDP / ZeRO-3), written instead
        of the live tensors."""
        checkpoint.save_checkpoint(self, save_directory, state_dict)

    def write_checkpoint_files(self, directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Write every checkpoint file into an existing directory (not atomic on its own);
        from `state_dict` (this module's keys) instead of the live tensors when given."""
        checkpoint.write_checkpoint_files(self, directory, state_dict)

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
        """Load a safesignal checkpoint, a shipped model by name ("smollm2-cls", "smollm2-sft",
        "smollm2-qi_aug"), or wrap a plain HF model directory / base registry name.

        A plain HF directory (or base registry name) gets a fresh `[CLS]` row and head.
        `base_model` overrides the base a LoRA checkpoint names.
        """
        return checkpoint.load_checkpoint(
            cls, path, base_model=base_model, dtype=dtype, attn_implementation=attn_implementation, device=device
        )

    def load_weights_from(self, directory: str | os.PathLike) -> None:
        """Load the trainable weights (full model or LoRA adapter, `[CLS]` row, head) of a
        checkpoint written by this model's configuration; used to resume training."""
        checkpoint.load_trainable_weights(self, directory)


def mean_row(weight: torch.Tensor) -> torch.Tensor:
    """The mean of an embedding matrix's rows, the `[CLS]` row's starting value.

    Under DeepSpeed ZeRO-3 (`zero.Init`) each rank holds a partition and the local tensor is
    empty: gather the whole matrix to read it. Under FSDP's CPU-efficient loading the ranks
    other than 0 hold meta tensors: the mean is meta too, and the value rank 0 computes
    reaches them with the rest of rank 0's weights when FSDP broadcasts them."""
    if hasattr(weight, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters(weight, modifier_rank=None):
            return weight.detach().mean(dim=0).clone()
    return weight.detach().mean(dim=0).clone()


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules=None):
    """The peft LoRA configuration `add_lora` applies (also what the dry run sizes)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or "all-linear",
                      task_type="CAUSAL_LM")


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


__all__ = ["SafetyModel"]
