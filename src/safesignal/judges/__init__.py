"""Judges: decide whether a model output refuses (or complies with) a request."""

from .keyword import KeywordJudge, Verdict

__all__ = ["KeywordJudge", "Verdict"]
