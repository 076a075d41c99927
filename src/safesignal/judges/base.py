"""One judge interface for every model, and the registry that finds judges by name.

A judge reads what the user saw (DESIGN.md §Evaluation protocol: one judge protocol for every
model). `JudgeInput.response` is the whole visible response: the model's text, an injected
refusal and the continuation after it alike, never the user's prefill (that is not the
model's words). The metadata is optional and the same for every model: a baseline may supply
`tokens_before_refusal` as well as this method's decoder does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from ..plugins import Registry


@dataclass(frozen=True)
class JudgeInput:
    prompt: str
    response: str  # everything the user saw after their own text (no prefill)
    # Tokens the model emitted before the first refusal: the decoder's intervention index,
    # or a baseline's count before its first refusal marker. None: the judge counts itself.
    tokens_before_refusal: int | None = None
    intervened: bool = False  # the decoder injected a refusal
    injected_prefix: str | None = None  # the injected refusal text, when it intervened


@dataclass(frozen=True)
class Judgement:
    harmful: bool
    refused: bool
    reason: str
    score: float | None = None  # a judge's probability or count behind the verdict, when it has one


class Judge(ABC):
    """A plugin: `name` finds it, `config_class` (a dataclass) holds every knob."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()

    @abstractmethod
    def judge(self, item: JudgeInput) -> Judgement: ...

    def judge_batch(self, items: list[JudgeInput]) -> list[Judgement]:
        return [self.judge(item) for item in items]


_JUDGES = Registry("judge")
register = _JUDGES.register
judge_names = _JUDGES.names


def get_judge(name: str, **config) -> Judge:
    """The judge `name` with its config dataclass built from `config` (unknown keys refused)."""
    cls, built = _JUDGES.build(name, config)
    return cls(built)
