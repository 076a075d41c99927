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
