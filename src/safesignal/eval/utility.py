"""Utility as answer likelihood: mean per-token NLL of reference answers (an offline proxy,
no judge model needed), read the way the model decodes.

A strategically decoded model is scored under its own attention rules with the [CLS] slot in
the sequence (response tokens read it as they do in generation); a plainly decoded model on
the LM alone. Answers are cut to `max_answer_tokens` tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batching import IGNORE_INDEX, collate


@torch.inference_mode()
def answer_nll(sm, pairs: list[dict], *, with_cls: bool, max_answer_tokens: int = 512, batch_size: int = 8) -> dict:
    """{"nll": mean NLL per answer token, "tokens": answer tokens scored, "n": answers}."""
    examples = []
    for pair in pairs:
        ids = sm.tokenizer(pair["response"], add_special_tokens=False).input_ids[:max_answer_tokens]
        answer = sm.tokenizer.decode(ids)
        examples.append(sm.formatter.encode([{"role": "user", "content": pair["prompt"]}], answer,
                                            supervise_from=0, add_eos=False))
    total, tokens = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        batch = collate(chunk, cls_token_id=sm.cls_token_id if with_cls else None,
                        pad_token_id=sm.tokenizer.pad_token_id, mask_mode=sm.config.mask_mode if with_cls else "sft")
        batch = {k: (v.to(sm.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        labels = batch.pop("labels")
        batch.pop("cls_labels", None)
        logits = sm(**batch).lm_logits[:, :-1].float()
        targets = labels[:, 1:]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum"))
        tokens += int((targets != IGNORE_INDEX).sum())
    return {"nll": total / tokens if tokens else float("nan"), "tokens": tokens, "n": len(pairs)}
