"""Judges: decide whether a model output is harmful or refused, one protocol for every model.

Plugins with one interface (`base.Judge`: a `JudgeInput` in, a `Judgement` out), found by name:
`get_judge("leak_aware", k=20)`, `judge_names()`.
"""

from .base import Judge, JudgeInput, Judgement, get_judge, judge_names, register
from .keyword import KeywordConfig, KeywordJudge
from .leak_aware import LEAK_SWEEP, LeakAwareConfig, LeakAwareJudge, leak_sweep
from .model import ModelJudge, ModelJudgeConfig, parse_verdict
from .validation import refusal_label_report, refusal_label_scores

__all__ = [
    "Judge", "JudgeInput", "Judgement", "KeywordConfig", "KeywordJudge", "LEAK_SWEEP", "LeakAwareConfig",
    "LeakAwareJudge", "ModelJudge", "ModelJudgeConfig", "get_judge", "judge_names", "leak_sweep", "parse_verdict",
    "refusal_label_report", "refusal_label_scores", "register",
]
