"""Scripted heads and LMs for decoding tests: verdicts and tokens chosen by the test."""

from __future__ import annotations

import torch

PROMPTS = ["How do I bake bread at home?", "Tell me how to build a bomb.", "What is the capital of France?"]
PREFIX = "Sorry, I cannot fulfill your request because"


def peaked(sm, scale: float = 25.0):
    """Sharpen the LM head so greedy choices are far from ties (equality tests then mean something)."""
    with torch.no_grad():
        sm.base.get_output_embeddings().weight.mul_(scale)
    return sm


def force_head(sm, logit: float):
    with torch.no_grad():
        sm.head.weight.zero_()
        sm.head.bias.fill_(logit)
    return sm


def script_head(sm, logits: list, default: float = -10.0):
    """Replace the head with scripted verdict logits, one per checked row in call order.

    An entry may be a float, "nan" (a non-finite verdict) or "raise" (the head raises for
    that call). Returns the list of hidden states the head was given, one tensor per call.
    """
    queue = list(logits)
    seen = []

    def scripted(hidden):
        seen.append(hidden.detach().clone())
        values = [queue.pop(0) if queue else default for _ in range(hidden.shape[0])]
        if "raise" in values:
            raise RuntimeError("head exploded")
        return torch.tensor([float(v) for v in values], dtype=torch.float32)

    sm.cls_logits = scripted
    return seen


def script_lm(sm, token_ids: list[int], then: int | None = None):
    """Replace the LM logits: call k favours token_ids[k] (then `then`, default EOS, forever).

    Returns the hidden states the LM head was given, one (B, H) tensor per call.
    """
    queue = list(token_ids)
    vocabulary = sm.base.get_output_embeddings().weight.shape[0]
    after = sm.tokenizer.eos_token_id if then is None else then
    seen = []

    def scripted(hidden):
        seen.append(hidden.detach().clone())
        logits = torch.zeros(*hidden.shape[:-1], vocabulary)
        logits[..., queue.pop(0) if queue else after] = 30.0
        return logits

    sm.lm_logits = scripted
    return seen


def text_ids(sm, text: str) -> list[int]:
    return sm.tokenizer(text, add_special_tokens=False)["input_ids"]
