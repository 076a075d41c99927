"""The release frontier: how much of a row's response may be shown, and the text deltas.

A token is releasable once its step's verdict is known, except from a pending confirmation's
transition token S on (a rollback may drop those). Every rollback lands at or after the
frontier (a confirmation's at S, fail closed at the frontier itself), so released text is
never retracted, and the deltas of a row add up to its final text whether or not anyone
reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .fsm import SafetyEvent


def release_frontier(response_length: int, holds_from: int | None) -> int:
    """Response tokens releasable now: all fed ones, minus a pending confirmation's from S on."""
    return response_length if holds_from is None else min(response_length, holds_from - 1)


class TextRelease:
    """Turns a row's releasable tokens into text deltas that only ever append."""

    def __init__(self, decode):
        self.decode = decode  # token ids -> text
        self.sent = ""

    def delta(self, tokens: list[int], final: bool) -> str:
        text = self.decode(tokens)
        if not final and text.endswith("\ufffd"):
            text = text[:-1]  # an incomplete UTF-8 sequence: wait for its next token
        if not text.startswith(self.sent):  # a decoder bug: every rollback lands at or after the frontier
            raise RuntimeError(f"released text would be retracted: {self.sent!r} -> {text!r}")
        delta, self.sent = text[len(self.sent):], text
        return delta


@dataclass
class StreamChunk:
    """What one step released, per row: text delta, new safety events, whether the row is done."""

    deltas: list[str]
    events: list[list[SafetyEvent]]
    done: list[bool]
    results: list | None = None  # GenerationResults, on the last chunk


@dataclass
class StreamDelta:
    """One streamed piece for a single conversation (`SafetyModel.stream`)."""

    text: str
    events: list[SafetyEvent] = field(default_factory=list)
    done: bool = False
    result: object | None = None
