"""The joint objective: LM cross-entropy on supervised response tokens + λ·BCE on every live
`[CLS]` slot (slot A always, slot B when its window is live), and what `SafetyModel.forward`
returns.

Normalisation (so a batch split across ranks or accumulation steps gives the gradient of the
whole): each loss is a *sum* over this micro-batch divided by a count over the whole optimiser
step, `num_items_in_batch = (supervised LM tokens, live [CLS] slots)`, which the trainer counts
over every micro-batch of the step on every rank. Summed over micro-batches and ranks, the
losses are then exactly the token-mean LM loss and the slot-mean BCE of the global batch. With
no counts given, the counts of this batch are used (the plain per-batch means).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .batching import IGNORE_INDEX, live_slot_b, loss_item_counts


@dataclass
class SafetyOutput(ModelOutput):
    """What `SafetyModel.forward` returns.

    loss, lm_loss, cls_loss: given labels only (cls_loss: only for batches with `[CLS]`).
    lm_logits: without labels, (B, L, V) for every row; with labels, only the supervised rows,
        (N, V) in the order of `labels[:, 1:][labels[:, 1:] != -100]` (projecting the prompt
        rows onto the vocabulary would be most of the cost of a step, for no loss).
    cls_logits: (B,) slot-A safety logits (None for plain causal batches).
    """

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    cls_loss: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None
    cls_logits: torch.Tensor | None = None


def slot_logits(model, hidden: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Safety logits of the hidden states at one slot index per row."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return model.cls_logits(hidden[rows, slots])


def joint_objective(model, hidden: torch.Tensor, batch: dict, cls_loss_weight: float | None,
                    num_items_in_batch: torch.Tensor | None = None) -> SafetyOutput:
    """The losses of a labelled collated batch (see `batching.collate`) from its hidden states."""
    counts = loss_item_counts(batch) if num_items_in_batch is None else num_items_in_batch
    counts = counts.to(hidden.device).clamp(min=1)
    targets = batch["labels"][:, 1:]
    supervised = targets != IGNORE_INDEX
    # With no supervised row the projection is empty but still in the graph, so every rank's
    # backward touches the same parameters (DDP needs that) and the loss is an exact 0.
    lm_logits = model.lm_logits(hidden[:, :-1][supervised])
    lm_loss = F.cross_entropy(lm_logits.float(), targets[supervised], reduction="sum") / counts[0]
    if batch["mask_mode"] == "causal":
        return SafetyOutput(loss=lm_loss, lm_loss=lm_loss, lm_logits=lm_logits)
    if cls_loss_weight is None:
        raise ValueError("cls_loss_weight: required to compute the joint loss of a batch with [CLS] slots")

    logits_a = slot_logits(model, hidden, batch["slot_a"])
    live_b = live_slot_b(batch)
    logits = torch.cat([logits_a, slot_logits(model, hidden[live_b], batch["slot_b"][live_b])])
    labels = batch["cls_labels"].to(hidden.device).float()
    labels_b = batch.get("cls_labels_b", batch["cls_labels"]).to(hidden.device).float()
    targets_cls = torch.cat([labels, labels_b[live_b]])
    cls_loss = F.binary_cross_entropy_with_logits(logits.float(), targets_cls, reduction="sum") / counts[1]
    return SafetyOutput(
        loss=lm_loss + cls_loss_weight * cls_loss,
        lm_loss=lm_loss,
        cls_loss=cls_loss,
        lm_logits=lm_logits,
        cls_logits=logits_a,
    )
