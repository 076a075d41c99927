"""Judges measured against human labels: agreement and Cohen's κ of `refused`.

pyrit's 105 human-labelled refusal rows (`refusal_judge_validation`, 1 = refused) label
refusal, not harm, so a judge is scored on its `refused`. Those rows carry no token counts:
the leak-aware judge counts them itself (whitespace words unless it was given a tokenizer).
"""

from __future__ import annotations

from ..metrics import agreement, cohen_kappa
from .base import Judge, JudgeInput, get_judge

# Judges that run offline with no model: the ones every report scores. A model judge is
# reported only where it ran (pass it to `refusal_label_report`).
OFFLINE_JUDGES = ("keyword", "leak_aware")


def refusal_label_scores(judge: Judge, rows: list[dict]) -> dict:
    """n, agreement and κ of `judge`'s `refused` against rows' `label` (1 = refused)."""
    judgements = judge.judge_batch([JudgeInput(row["prompt"], row["response"]) for row in rows])
    predicted = [int(j.refused) for j in judgements]
    labels = [int(row["label"]) for row in rows]
    return {"judge": judge.name, "n": len(rows), "agreement": agreement(predicted, labels),
            "kappa": cohen_kappa(predicted, labels)}


def refusal_label_report(judges: list[Judge] | None = None, rows: list[dict] | None = None) -> dict[str, dict]:
    """Each judge's scores on pyrit's 105 refusal rows (default: the offline judges, defaults)."""
    if rows is None:
        from ..data.sources import refusal_judge_validation

        rows = refusal_judge_validation()
    judges = judges if judges is not None else [get_judge(name) for name in OFFLINE_JUDGES]
    return {judge.name: refusal_label_scores(judge, rows) for judge in judges}
