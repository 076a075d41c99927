"""Tokenised training datasets with class balancing by oversampling the minority label."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import torch

from ..formatting import EncodedExample, PromptFormatter
from .schema import DataError, Record


def encode_records(records: list[Record], formatter: PromptFormatter) -> list[EncodedExample]:
    """Tokenise records; a record that cannot be encoded is reported with its file and line."""
    examples, problems = [], []
    for record in records:
        response, supervise_from = record.training_text()
        try:
            examples.append(formatter.encode(record.messages, response, supervise_from=supervise_from, label=record.label,
                                             response_spans=record.training_spans()))
        except ValueError as err:
            problems.append(f"{record.where}: messages: {err}")
    if problems:
        raise DataError(problems)
    return examples


def balanced_indices(labels: list[int], seed: int) -> list[int]:
    """All indices plus minority-label indices drawn with replacement up to the majority count."""
    counts = Counter(labels)
    indices = list(range(len(labels)))
    if len(counts) < 2:
        return indices
    (majority, n_major), (minority, n_minor) = counts.most_common(2)
    pool = [i for i, y in enumerate(labels) if y == minority]
    rng = random.Random(seed)
    return indices + [rng.choice(pool) for _ in range(n_major - n_minor)]


class EncodedDataset(torch.utils.data.Dataset):
    """A list of encoded examples, optionally class-balanced."""

    def __init__(self, examples: list[EncodedExample], *, balance: bool = False, seed: int = 0):
        self.examples = examples
        labels = [e.label if e.label is not None else 0 for e in examples]
        self.indices = balanced_indices(labels, seed) if balance else list(range(len(examples)))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> EncodedExample:
        return replace(self.examples[self.indices[i]], sample_key=i)

    def label_counts(self) -> dict[int, int]:
        return dict(Counter(self.examples[i].label for i in self.indices))
