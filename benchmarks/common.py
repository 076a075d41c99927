"""Shared pieces of the benchmarks: the model they time and how they record a run."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone

import torch

from safesignal.io import atomic_write_json
from safesignal.model import SafetyModel
from safesignal.tiny import build_tiny_tokenizer


def smollm2_135m_geometry(layers: int = 30):
    """A random-init model with SmolLM2-135M's configuration (until the converted one exists)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def benchmark_model(path: str | None, layers: int) -> SafetyModel:
    if path:
        return SafetyModel.from_pretrained(path, attn_implementation="sdpa")
    return SafetyModel(smollm2_135m_geometry(layers), build_tiny_tokenizer())


def write_record(summary: dict, out: str | None) -> None:
    """Print the summary as the last line; with `out`, also save it with command and date."""
    if out:
        # Allocator settings change CPU timings a lot (page-fault churn): record any that are set.
        env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
        command = (env + " " if env else "") + "python " + " ".join(sys.argv)
        record = dict(summary, command=command, created=datetime.now(timezone.utc).isoformat())
        atomic_write_json(out, record)
    print(json.dumps(summary))


def machine() -> dict:
    return {"threads": torch.get_num_threads(), "machine": platform.machine()}
