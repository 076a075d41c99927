"""Tokenised training datasets over an encoded store, class-balanced by oversampling the minority label.

The examples live in a memory-mapped `EncodedStore` (encoded_store.py, built once per data
file by encoded_files.py); the dataset adds only its index sequence (8 bytes per example
served), so a million-row file costs the same few megabytes on every rank.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from ..formatting import EncodedExample, PromptFormatter
from .encoded_store import NO_LABEL, EncodedStore
from .schema import DataError, Record


def encode_record(record: Record, formatter: PromptFormatter) -> EncodedExample:
    """Tokenise one record; a record that cannot be encoded is a DataError naming its file and line."""
    response, supervise_from = record.training_text()
    try:
        return formatter.encode(record.messages, response, supervise_from=supervise_from, label=record.label,
                                response_spans=record.training_spans())
    except ValueError as err:
        raise DataError([f"{record.where}: messages: {err}"]) from None


def encode_records(records: list[Record], formatter: PromptFormatter) -> list[EncodedExample]:
    """Tokenise a few records held in memory; every record that cannot be encoded is reported."""
    examples, problems = [], []
    for record in records:
        try:
            examples.append(encode_record(record, formatter))
        except DataError as err:
            problems += err.problems
    if problems:
        raise DataError(problems)
    return examples


def balanced_indices(labels: Sequence[int] | np.ndarray, seed: int) -> np.ndarray:
    """All indices plus minority-label indices drawn with replacement up to the majority count.

    The draws are `random.Random(seed).choice(minority positions)`, one at a time: a fixed
    sequence for a seed, whatever the dataset's size."""
    labels = np.asarray(labels)
    values, first_seen, counts = np.unique(labels, return_index=True, return_counts=True)
    indices = np.arange(len(labels), dtype=np.int64)
    if len(values) < 2:
        return indices
    # Most common first; a tie goes to the label seen first (collections.Counter.most_common's order).
    order = sorted(range(len(values)), key=lambda k: (-counts[k], first_seen[k]))
    (major, minor) = order[:2]
    pool = np.flatnonzero(labels == values[minor])
    draws = counts[major] - counts[minor]
    rng, positions = random.Random(seed), range(len(pool))
    picked = np.fromiter((rng.choice(positions) for _ in range(draws)), dtype=np.int64, count=draws)
    return np.concatenate([indices, pool[picked]])


class EncodedDataset(torch.utils.data.Dataset):
    """The examples of a store, optionally class-balanced; item i carries sample_key i."""

    def __init__(self, store: EncodedStore, *, balance: bool = False, seed: int = 0):
        self.store = store
        labels = np.asarray(store.labels)
        # An example without a label counts as benign when balancing.
        labels = np.where(labels == NO_LABEL, 0, labels)
        self.indices = balanced_indices(labels, seed) if balance else np.arange(len(store), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> EncodedExample:
        return self.store.example(int(self.indices[i]), sample_key=i)

    def label_counts(self) -> dict[int | None, int]:
        """Examples served per label (None: no label), labels in the order they first appear."""
        served = np.asarray(self.store.labels)[self.indices]
        values, first_seen, counts = np.unique(served, return_index=True, return_counts=True)
        return {(None if values[k] == NO_LABEL else int(values[k])): int(counts[k]) for k in np.argsort(first_seen)}
