"""Validation-split calibration rules (safesignal.eval.calibration), on hand-computed cases."""

import pytest

from safesignal.eval.calibration import TauRow, choose_tau, choose_threshold, threshold_curve


def test_curve_counts_by_hand():
    probs = [0.9, 0.7, 0.4, 0.2, 0.6, 0.1]
    labels = [1, 1, 1, 0, 0, 0]
    curve = {r["threshold"]: r for r in threshold_curve(probs, labels, grid=(0.3, 0.5, 0.65))}
    # t=0.3: positives 3/3 flagged, negatives {0.6} 1/3; t=0.5: 2/3 and 1/3; t=0.65: 2/3 and 0/3.
    assert (curve[0.3]["tpr"], curve[0.3]["fpr"]) == (1.0, pytest.approx(1 / 3))
    assert (curve[0.5]["tpr"], curve[0.5]["fpr"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert (curve[0.65]["tpr"], curve[0.65]["fpr"]) == (pytest.approx(2 / 3), 0.0)
    # J: 0.667, 0.333, 0.667 -> tie between 0.3 and 0.65; 0.65 is nearer 0.5.
    assert choose_threshold(list(curve.values())) == 0.65


def test_threshold_tie_prefers_nearest_half_then_higher():
    rows = [{"threshold": t, "youden_j": 0.5} for t in (0.4, 0.6, 0.9)]
    assert choose_threshold(rows) == 0.6


def test_curve_needs_both_labels():
    with pytest.raises(ValueError, match="both"):
        threshold_curve([0.3, 0.4], [1, 1])


def test_tau_rule():
    rows = [TauRow(1, 0.95, 0.20), TauRow(2, 0.90, 0.05), TauRow(3, 0.90, 0.02), TauRow(4, 0.70, 0.0)]
    assert choose_tau(rows) == 2  # highest on-time among FA <= 5%; tie 2 vs 3 -> smaller
    assert choose_tau(rows, max_false_alarm_rate=0.01) == 4
    none_ok = [TauRow(1, 0.9, 0.3), TauRow(2, 0.8, 0.1), TauRow(3, 0.7, 0.1)]
    assert choose_tau(none_ok) == 3  # fewest false alarms, ties to the larger τ
