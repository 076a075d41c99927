"""`SafetyCollator`: encoded examples -> a collated batch, slot-B windows drawn per example."""

from __future__ import annotations

import random

from transformers import TrainerCallback

from ..batching import WindowSampler, collate


class SafetyCollator:
    """Collates encoded examples.

    Each example's slot-B window comes from its own RNG, seeded by (seed, epoch, the example's
    dataset position), never from a running stream or from its batch: a resumed run draws the
    windows the uninterrupted run would have however many batches the loader prefetched or
    skipped, and a batch split across ranks draws the windows of the whole batch.
    """

    def __init__(self, cls_token_id: int | None, pad_token_id: int, mask_mode: str = "sft",
                 window_sampler: WindowSampler | None = None, seed: int = 0):
        self.cls_token_id, self.pad_token_id = cls_token_id, pad_token_id
        self.mask_mode, self.window_sampler = mask_mode, window_sampler
        self.seed, self.epoch = seed, 0

    def __call__(self, examples):
        return collate(
            examples,
            cls_token_id=self.cls_token_id,
            pad_token_id=self.pad_token_id,
            mask_mode=self.mask_mode,
            window_sampler=self.window_sampler,
            rng=[random.Random(f"{self.seed}/{self.epoch}/{e.sample_key}") for e in examples],
        )

    def without_windows(self) -> SafetyCollator:
        """The same collator with slot A only (evaluation: deterministic, the query alone)."""
        return SafetyCollator(self.cls_token_id, self.pad_token_id, self.mask_mode, None, self.seed)


class EpochToCollator(TrainerCallback):
    """Tells the collator which epoch it is collating for (new windows every epoch)."""

    def __init__(self, collator: SafetyCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)
