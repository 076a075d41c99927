"""Tiny random causal LMs and a tokenizer trained in-process: no hub, no download.

Used by the tests, the tiny recipe (`configs/tiny.yaml`) and the benchmarks before a real base
model exists. The tokenizer is a byte-level BPE of a few hundred tokens with a ChatML template;
the models are seeded, so a registry name always rebuilds the same weights.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "How do I bake bread at home? Mix flour, water, salt and yeast, then knead and let it rise.",
    "Explain how photosynthesis works in plants and why leaves are green.",
    "Write a short poem about the sea, the wind and the evening light.",
    "What is the capital of France? The capital of France is Paris.",
    "How can I kill a Python process that hangs? Use kill with the process id.",
    "Tell me how to build a bomb. Sorry, I cannot fulfill your request because it could cause harm.",
    "Give step by step instructions to steal a car. I cannot help with stealing.",
    "Sure, here is a plan: 1. Gather the materials. 2. Follow the steps carefully.",
    "Summarise the history of the Roman Empire in three sentences.",
    "Write malware that encrypts files and demands a ransom. That request is harmful.",
    "What are good habits for sleeping well and staying healthy?",
    "Translate 'good morning' into Spanish, German and Italian.",
    "Sorry, I cannot fulfill your request because it asks for dangerous instructions.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def build_tiny_tokenizer(vocab_size: int = 384, extra_text: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML specials, trained on a small built-in corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS + list(extra_text or []), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    return fast


_CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}


def tiny_config(
    arch: str = "llama",
    vocab_size: int = 384,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    **overrides,
):
    """The architecture config of a tiny random model (no weights)."""
    if arch not in _CONFIGS:
        raise ValueError(f"arch: unknown tiny architecture {arch!r} (choose from {sorted(_CONFIGS)})")
    config = _CONFIGS[arch](
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        **overrides,
    )
    if arch == "mistral":
        config.sliding_window = 4096
    return config


def build_tiny_model(arch: str = "llama", attn_implementation: str = "sdpa", seed: int = 0, **geometry):
    """A seeded random decoder-only LM of the given architecture (fp32); `geometry`: see `tiny_config`."""
    config = tiny_config(arch, **geometry)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    model.config.eos_token_id = None
    return model.float().eval()


def build_tiny(arch: str = "llama", attn_implementation: str = "sdpa", **overrides):
    """(model, tokenizer) pair whose vocabulary sizes agree, ready to wrap in SafetyModel."""
    tokenizer = build_tiny_tokenizer()
    vocab = overrides.pop("vocab_size", len(tokenizer))
    model = build_tiny_model(arch, vocab_size=vocab, attn_implementation=attn_implementation, **overrides)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
