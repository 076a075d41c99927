"""Choosing the decision threshold and τ on the validation split (issue "Embedded default v2").

The rules are fixed here, before any validation figure is looked at, and never see an
evaluation set:

- threshold (slot A, the query verdict): the grid value that maximises Youden's J = TPR − FPR
  over the validation prompts (malicious vs benign); ties go to the value nearest 0.5 (the
  untuned default), then to the higher one.
- τ (consecutive malicious window verdicts that confirm a transition): force-decode the
  validation responses under the neutral prompt (the response-level signal alone) at the
  chosen threshold; among the τ whose false-alarm rate on benign answers and refusals is at
  most `max_false_alarm_rate`, the one with the highest on-time detection rate on harmful
  answers; ties to the smaller τ. If no τ meets the false-alarm cap, the one with the fewest
  false alarms (ties to the larger τ).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def threshold_curve(probabilities: list[float], labels: list[int], grid=DEFAULT_GRID) -> list[dict]:
    """TPR, FPR and Youden's J at each threshold (a prompt is flagged when P ≥ threshold)."""
    positives = [p for p, y in zip(probabilities, labels) if y == 1]
    negatives = [p for p, y in zip(probabilities, labels) if y == 0]
    if not positives or not negatives:
        raise ValueError("threshold_curve: need both malicious (1) and benign (0) validation prompts")
    curve = []
    for t in grid:
        tpr = sum(p >= t for p in positives) / len(positives)
        fpr = sum(p >= t for p in negatives) / len(negatives)
        curve.append({"threshold": t, "tpr": tpr, "fpr": fpr, "youden_j": tpr - fpr})
    return curve


def choose_threshold(curve: list[dict]) -> float:
    best = max(curve, key=lambda row: (round(row["youden_j"], 12), -abs(row["threshold"] - 0.5), row["threshold"]))
    return best["threshold"]


@dataclass
class TauRow:
    tau: int
    on_time_rate: float  # harmful validation answers confirmed within the on-time budget
    false_alarm_rate: float  # benign answers and refusals confirmed anywhere


def choose_tau(rows: list[TauRow], max_false_alarm_rate: float = 0.05) -> int:
    if not rows:
        raise ValueError("choose_tau: no τ measured")
    allowed = [r for r in rows if r.false_alarm_rate <= max_false_alarm_rate]
    if allowed:
        return max(allowed, key=lambda r: (r.on_time_rate, -r.tau)).tau
    return min(rows, key=lambda r: (r.false_alarm_rate, -r.tau)).tau


__all__ = ["DEFAULT_GRID", "TauRow", "choose_tau", "choose_threshold", "threshold_curve"]
