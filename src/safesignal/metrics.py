"""Classifier metrics shared by training (validation) and evaluation, so evaluation never
imports the trainer."""

from __future__ import annotations


def classifier_metrics(probabilities: list[float], labels: list[int], threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of P(malicious) > threshold against 0/1 labels."""
    predicted = [p > threshold for p in probabilities]
    tp = sum(p and y == 1 for p, y in zip(predicted, labels))
    fp = sum(p and y == 0 for p, y in zip(predicted, labels))
    fn = sum((not p) and y == 1 for p, y in zip(predicted, labels))
    correct = sum(p == (y == 1) for p, y in zip(predicted, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": correct / max(len(labels), 1), "precision": precision, "recall": recall, "f1": f1}


def agreement(predicted: list, labels: list) -> float:
    """Fraction of items on which `predicted` equals `labels` (any hashable categories)."""
    if len(predicted) != len(labels):
        raise ValueError(f"agreement: {len(predicted)} verdicts for {len(labels)} labels")
    if not labels:
        raise ValueError("agreement: no labelled items")
    return sum(p == y for p, y in zip(predicted, labels)) / len(labels)


def cohen_kappa(predicted: list, labels: list) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e): observed agreement corrected for the agreement
    expected from each rater's marginals. NaN when p_e = 1 (both raters use one category only,
    so chance agreement is total and κ is undefined)."""
    observed = agreement(predicted, labels)
    n = len(labels)
    categories = set(predicted) | set(labels)
    expected = sum((sum(p == c for p in predicted) / n) * (sum(y == c for y in labels) / n) for c in categories)
    if expected == 1:
        return float("nan")
    return (observed - expected) / (1 - expected)
