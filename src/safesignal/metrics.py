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


def auroc(probabilities: list[float], labels: list[int]) -> float:
    """Area under the ROC curve: the probability that a random malicious item scores above a
    random benign one (ties count half), the Mann-Whitney form. NaN without both classes."""
    positives = [p for p, y in zip(probabilities, labels) if y == 1]
    negatives = [p for p, y in zip(probabilities, labels) if y == 0]
    if not positives or not negatives:
        return float("nan")
    # Rank-sum with mid-ranks for ties: O(n log n) instead of comparing every pair.
    order = sorted(range(len(probabilities)), key=lambda i: probabilities[i])
    ranks = [0.0] * len(order)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and probabilities[order[j + 1]] == probabilities[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y == 1)
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def reliability_curve(probabilities: list[float], labels: list[int], bins: int = 10) -> list[dict]:
    """Calibration: per equal-width probability bin, the mean predicted probability and the
    observed fraction of malicious items (empty bins are left out)."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [(p, y) for p, y in zip(probabilities, labels) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if members:
            out.append({"lo": lo, "hi": hi, "n": len(members), "mean_p": sum(p for p, _ in members) / len(members),
                        "frac_malicious": sum(y for _, y in members) / len(members)})
    return out
