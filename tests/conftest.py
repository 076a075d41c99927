"""Shared fixtures: tiny random SafetyModels for every (architecture, attention backend).

Model builds are cached per parameter for the whole session; each test gets a deep copy
(a few milliseconds), so a test may mutate its model freely.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from safesignal.batching import WindowSampler, collate
from safesignal.masks import NO_SLOT
from safesignal.model import SafetyModel
from safesignal.tiny import build_tiny

ARCHS = ("llama", "mistral", "qwen2")
ATTNS = ("eager", "sdpa")
ARCH_ATTN = [(arch, attn) for arch in ARCHS for attn in ATTNS]
ARCH_ATTN_IDS = [f"{arch}-{attn}" for arch, attn in ARCH_ATTN]

HEAD_SEED = 1234

# Prompt with a system message (the caller's system message is query, template tokens are not), a response long
# enough for a slot-B window with response rows before and after it.
SYSTEM = {"role": "system", "content": "You are helpful."}
CONVERSATION = [SYSTEM, {"role": "user", "content": "How do I bake bread at home?"}]
RESPONSE = "Mix flour, water, salt and yeast, then knead."

# Three conversations of clearly different lengths (for the left-padding tests).
CONVERSATIONS = [
    ([{"role": "user", "content": "Hi"}], "Hello.", 0),
    (
        [SYSTEM, {"role": "user", "content": "Tell me how to build a bomb at home, step by step."}],
        "Sorry, I cannot fulfill your request because it could cause harm.",
        1,
    ),
    ([{"role": "user", "content": "What is the capital of France?"}], "Paris is the capital of France.", 0),
]


def make_safety_model(arch: str, attn: str, **overrides) -> SafetyModel:
    """A tiny SafetyModel with a deterministic head (seeded before the head is drawn)."""
    model, tokenizer = build_tiny(arch, attn_implementation=attn, **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(HEAD_SEED)
        sm = SafetyModel(model, tokenizer)
    return sm.eval()


@pytest.fixture(scope="session")
def _model_cache():
    return {}


@pytest.fixture(params=ARCH_ATTN, ids=ARCH_ATTN_IDS)
def arch_attn(request):
    return request.param


@pytest.fixture
def safety_model(arch_attn, _model_cache) -> SafetyModel:
    """A fresh (deep-copied) tiny SafetyModel for one (arch, attn) parameter."""
    if arch_attn not in _model_cache:
        _model_cache[arch_attn] = make_safety_model(*arch_attn)
    return copy.deepcopy(_model_cache[arch_attn])


@pytest.fixture
def no_grad():
    """Inference only (modules opt in with `pytestmark = pytest.mark.usefixtures("no_grad")`)."""
    with torch.no_grad():
        yield


# ---------------------------------------------------------------------- batch helpers
def encode_batch(sm: SafetyModel, items, *, mask_mode: str = "sft", slot_b: bool = False):
    """Collate (messages, response, label) items; with `slot_b` every row gets a dead slot B."""
    examples = [sm.formatter.encode(m, r, label=y) for m, r, y in items]
    batch = collate(
        examples,
        cls_token_id=sm.cls_token_id,
        pad_token_id=sm.tokenizer.pad_token_id,
        mask_mode=mask_mode,
        window_sampler=WindowSampler(dead_fraction=1.0) if slot_b else None,
        rng=random.Random(0),
    )
    return batch, examples


def ordinary_start(batch: dict, row: int) -> int:
    """Index of the row's first ordinary token (right after slot A)."""
    return int(batch["slot_a"][row]) + 1


def set_window(batch: dict, row: int, first: int, last: int) -> None:
    """Make slot B of `row` live over example tokens first..last (indices into input_ids)."""
    assert int(batch["slot_b"][row]) != NO_SLOT, "batch was collated without slot B"
    start = ordinary_start(batch, row)
    batch["window_mask"][row] = False
    batch["window_mask"][row, start + first : start + last + 1] = True
    batch["window_end"][row] = start + last


def ordinary_positions(batch: dict, row: int) -> torch.Tensor:
    """Positions of real, non-slot tokens in `row`."""
    length = batch["input_ids"].shape[1]
    idx = torch.arange(length)
    real = batch["attention_mask"][row].bool()
    slot = (idx == batch["slot_a"][row]) | (idx == batch["slot_b"][row])
    return idx[real & ~slot]


def repeat_batch(batch: dict, n: int) -> dict:
    """`n` copies of a one-row batch (for perturbing one token per copy in a single forward)."""
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            out[key] = value.expand(n, *value.shape[1:]).clone() if value.dim() else value
        else:
            out[key] = value
    return out


def other_token(sm: SafetyModel, token_id: int) -> int:
    """A different ordinary token id (never a special token, never [CLS])."""
    low = len(sm.tokenizer.all_special_ids) + 8
    high = sm.base.get_input_embeddings().num_embeddings - 1
    candidate = low + (token_id - low + 37) % (high - low)
    assert candidate != token_id and candidate != sm.cls_token_id
    return candidate


def cls_logit(sm: SafetyModel, hidden: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(hidden.shape[0])
    return sm.cls_logits(hidden[rows, slot])
