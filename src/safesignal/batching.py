"""Collate encoded examples into left-padded batches with `[CLS]` slots and mask descriptors.

The batch carries compact per-row descriptors (slot indices, query and window masks); the
(B, L, L) attention mask is built from them on the model's device by `masks.py`, so nothing
quadratic crosses the data loader.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .formatting import EncodedExample
from .masks import NO_SLOT, causal_allowed, position_ids_for, pretrain_allowed, sft_allowed

IGNORE_INDEX = -100


@dataclass
class WindowSampler:
    """Samples slot B's response window per example (DESIGN.md §SFT mask).

    With probability `dead_fraction` there is no window (B is dead). Otherwise the length is
    uniform in 1..max_length and the window ends at a response token chosen uniformly among
    those with at least one later response row (so some row reads B).
    """

    max_length: int = 21  # r2 + r3 + 1 with r2 = r3 = 10
    dead_fraction: float = 0.5

    def sample(self, response_start: int, response_end: int, rng: random.Random) -> tuple[int, int] | None:
        if response_end - response_start < 2 or rng.random() < self.dead_fraction:
            return None
        end = rng.randrange(response_start, response_end - 1)
        length = rng.randint(1, self.max_length)
        return max(response_start, end - length + 1), end


def window_label(example: EncodedExample, window: tuple[int, int] | None) -> int:
    """Slot B's label for a window `(first, last)` of response tokens (DESIGN.md §SFT mask): 1
    if a window token lies in a harmful span, else 0 if every window token lies in a span
    labelled 0, else the query label (unlabelled text carries the query's label)."""
    query = example.label if example.label is not None else 0
    if window is None or example.token_labels is None:
        return query
    first, last = window
    return max(y if y >= 0 else query for y in example.token_labels[first:last + 1])


def collate(
    examples: list[EncodedExample],
    *,
    cls_token_id: int | None,
    pad_token_id: int,
    mask_mode: str = "sft",
    window_sampler: WindowSampler | None = None,
    rng: random.Random | Sequence[random.Random] | None = None,
    with_labels: bool = True,
) -> dict[str, torch.Tensor]:
    """Left-pad `examples` into one batch.

    cls_token_id=None gives a plain causal batch (the SFT baseline). Otherwise slot A is the
    first real token of each row; with a `window_sampler` every row also ends in slot B
    (live or dead). Position ids: slots 0, ordinary tokens 1, 2, ...

    `rng` draws the windows: one generator for the whole batch, or one per example (training
    does that, so an example's window never depends on which batch or rank it lands in).
    """
    with_cls = cls_token_id is not None
    with_slot_b = with_cls and window_sampler is not None and mask_mode == "sft"
    rngs = list(rng) if isinstance(rng, Sequence) else [rng or random.Random()] * len(examples)
    if len(rngs) != len(examples):
        raise ValueError(f"rng: {len(rngs)} generators for {len(examples)} examples")
    lead = 1 if with_cls else 0
    tail = 1 if with_slot_b else 0
    length = max(len(e.input_ids) for e in examples) + lead + tail
    batch = len(examples)

    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    query_mask = torch.zeros((batch, length), dtype=torch.bool)
    window_mask = torch.zeros((batch, length), dtype=torch.bool)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    slot_a = torch.full((batch,), NO_SLOT, dtype=torch.long)
    slot_b = torch.full((batch,), NO_SLOT, dtype=torch.long)
    reader_start = torch.zeros((batch,), dtype=torch.long)
    window_end = torch.full((batch,), length, dtype=torch.long)
    slot_b_labels = [e.label if e.label is not None else 0 for e in examples]

    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        start = length - tail - n  # first ordinary token
        input_ids[row, start : start + n] = torch.tensor(ex.input_ids)
        attention_mask[row, start - lead :] = 1
        query_mask[row, start : start + n] = torch.tensor(ex.query_mask, dtype=torch.bool)
        sup = ex.supervised_from
        if with_labels and sup < n:
            labels[row, start + sup : start + n] = torch.tensor(ex.input_ids[sup:])
        reader_start[row] = start + ex.prompt_length - 1
        if with_cls:
            slot_a[row] = start - 1
            input_ids[row, start - 1] = cls_token_id
        if with_slot_b:
            slot_b[row] = length - 1
            input_ids[row, length - 1] = cls_token_id
            window = window_sampler.sample(ex.prompt_length, n, rngs[row])
            if window is not None:
                w0, w1 = window
                window_mask[row, start + w0 : start + w1 + 1] = True
                window_end[row] = start + w1
                slot_b_labels[row] = window_label(ex, window)

    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "query_mask": query_mask,
        "reader_start": reader_start,
        "slot_a": slot_a,
        "slot_b": slot_b,
        "window_mask": window_mask,
        "window_end": window_end,
    }
    if with_labels:
        out["labels"] = labels
        out["cls_labels"] = torch.tensor([float(e.label if e.label is not None else 0) for e in examples])
        out["cls_labels_b"] = torch.tensor([float(y) for y in slot_b_labels])  # slot A reads the query: its label
    out["mask_mode"] = mask_mode if with_cls else "causal"
    return out


def live_slot_b(batch: dict) -> torch.Tensor:
    """(B,) bool: rows whose slot B reads a window (a dead slot B gets no loss)."""
    return (batch["slot_b"] >= 0) & batch["window_mask"].any(dim=1)


def loss_item_counts(batch: dict) -> torch.Tensor:
    """(2,) long: supervised LM targets and live `[CLS]` slots, the denominators of the joint loss."""
    tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    if batch["mask_mode"] == "causal":
        return torch.stack([tokens, torch.zeros_like(tokens)])
    slots = (batch["slot_a"] >= 0).sum() + live_slot_b(batch).sum()
    return torch.stack([tokens, slots.to(tokens.device)])


def allowed_for(batch: dict) -> torch.Tensor:
    """The (B, L, L) boolean attention rule for a collated batch."""
    mode = batch["mask_mode"]
    if mode == "causal":
        return causal_allowed(batch["attention_mask"])
    if mode == "pretrain":
        return pretrain_allowed(batch["attention_mask"], batch["slot_a"])
    if mode == "sft":
        return sft_allowed(
            batch["attention_mask"],
            batch["query_mask"],
            batch["slot_a"],
            batch["reader_start"],
            batch["slot_b"],
            batch["window_mask"],
            batch["window_end"],
        )
    raise ValueError(f"mask_mode: unknown value {mode!r} (expected 'sft', 'pretrain' or 'causal')")


def positions_for(batch: dict) -> torch.Tensor:
    if batch["mask_mode"] == "causal":
        return position_ids_for(batch["attention_mask"])
    length = batch["attention_mask"].shape[1]
    positions = torch.arange(length, device=batch["attention_mask"].device)[None]
    slots = (positions == batch["slot_a"][:, None]) | (positions == batch["slot_b"][:, None])
    return position_ids_for(batch["attention_mask"], slots)
