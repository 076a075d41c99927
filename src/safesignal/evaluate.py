"""Evaluation building blocks shared by the demo and the eval grid: Wilson intervals, batched
classification and the classifier report. Generation and judging live in `safesignal.eval`.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from .metrics import classifier_metrics


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial rate (well behaved at 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(a: int, n_a: int, b: int, n_b: int, z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation 95% interval of rate(a) − rate(b)."""
    pa, pb = a / n_a, b / n_b
    half = z * math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    return (pa - pb - half, pa - pb + half)


def length_sorted_batches(prompts: list[str], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar prompt length (less padding); callers restore order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def classify_prompts(sm, prompts: list[str], *, batch_size: int = 32, desc: str = "classify") -> list[float]:
    probabilities: list[float] = [0.0] * len(prompts)
    for batch in tqdm(length_sorted_batches(prompts, batch_size), desc=desc, unit="batch", leave=False):
        for i, p in zip(batch, sm.classify_batch([[{"role": "user", "content": prompts[i]}] for i in batch])):
            probabilities[i] = p
    return probabilities


def classifier_report(probabilities: list[float], labels: list[int], edgy_probabilities: list[float],
                      threshold: float = 0.5) -> dict:
    metrics = classifier_metrics(probabilities, labels, threshold)
    flagged = sum(p > threshold for p in edgy_probabilities)
    return {"f1": metrics["f1"], "precision": metrics["precision"], "recall": metrics["recall"],
            "accuracy": metrics["accuracy"], "n": len(labels), "edgy_fpr": flagged / len(edgy_probabilities) if edgy_probabilities else None,
            "edgy_n": len(edgy_probabilities), "threshold": threshold}
