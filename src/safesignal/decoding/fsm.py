"""The per-row safety state machine of strategic decoding (DESIGN.md §Decoding), with no model.

It decides, from verdicts alone, when a row checks, which window a check reads, and what a
verdict does: nothing, start or clear a confirmation, roll back and inject the refusal, or
recognise the model's own refusal (a self-refusal: nothing is injected). Response indices are
1-based and count prefill text as response; step t is the step that feeds generated token t.

States: benign (Rule 2 on the schedule) → confirming (Rule 3 every step, from the malicious
verdict at S) → injected (checks stop). Without injection: initial_malicious (Rule 1 on the
schedule) and tracking (Rule 3 on the schedule) instead. A failed check (raised or non-finite)
fails closed on every policy: roll back to the release frontier and inject.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from .policy import SafetyPolicy

Window = tuple[int, int]


@dataclass
class SafetyEvent:
    """One check: generation step (0 = the prefill pass), P(malicious), label, window, rule.

    `outcome` says what the check caused: "injected", "self_refusal" (a confirmation over the
    model's own refusal: nothing injected), "fail_closed", "confirmed" (injection off: a
    malicious decision where injection would have refused; "confirmed_at_end" when it was taken
    on a pending confirmation at EOS or the budget), or None.
    """

    step: int
    probability: float
    label: str
    window: Window | None  # response-token indices (1-based), None = query only
    rule: str
    outcome: str | None = None


@dataclass(frozen=True)
class Check:
    step: int
    window: Window
    rule: str


@dataclass(frozen=True)
class Inject:
    """Roll back to `rollback_to` (the first response index to drop; None: keep everything), then inject."""

    rollback_to: int | None
    reason: str  # "malicious" | "fail_closed"


class RowSafety:
    """One row's safety state. `events` records every verdict in order."""

    def __init__(self, policy: SafetyPolicy):
        self.policy = policy
        self.state = "benign"
        self.transition: int | None = None  # S: response index of the token that started a confirmation
        self.consecutive = 0
        self.last_malicious = False
        self.events: list[SafetyEvent] = []
        self.error: str | None = None

    @property
    def checking(self) -> bool:
        return self.state != "injected"

    @property
    def holds_from(self) -> int | None:
        """Response index from which text may still be rolled back (None: nothing is held).
        Only a confirmation that may inject holds text back."""
        return self.transition if self.state == "confirming" and self.policy.strategic_decoding else None

    # ------------------------------------------------------------------ when and what to check
    def check_for(self, step: int, newest: int) -> Check | None:
        """The check riding with the step that feeds response token `newest`, if any."""
        p = self.policy
        if self.state == "injected":
            return None
        if self.state == "confirming":
            return Check(step, self._rule3(newest), "rule3")
        if not p.checks_at(step):
            return None
        if self.state == "initial_malicious":
            return Check(step, (1, min(newest, p.r1)), "rule1")
        if self.state == "tracking":
            return Check(step, self._rule3(newest), "rule3")
        return Check(step, (max(1, newest - p.r2 + 1), newest), "rule2")

    def _rule3(self, newest: int) -> Window:
        return max(1, self.transition - self.policy.r2), min(newest, self.transition + self.policy.r3)

    # ------------------------------------------------------------------ verdicts
    def first_verdict(self, probability: float, window: Window | None, error: str | None,
                      frontier: int) -> Inject | None:
        """The verdict of the prefill pass (query only, or query + the prefill's tail)."""
        rule = "prefill" if window else "query"
        malicious = self._record(0, probability, window, rule, error)
        if self.error is not None:
            return self._fail_closed(frontier)
        if not malicious:
            return None
        if self.policy.strategic_decoding:
            return self._inject(None, "malicious")
        self.events[-1].outcome = "confirmed"  # where injection would have refused at once
        self.state = "initial_malicious"
        return None

    def verdict(self, check: Check, probability: float, error: str | None, frontier: int,
                newest: int, is_own_refusal: Callable[[int], bool]) -> Inject | None:
        """Apply one mid-generation verdict; `is_own_refusal(S)` says whether the model's own
        refusal text covers every response token from S to the newest (asked only when a
        confirmation completes)."""
        malicious = self._record(check.step, probability, check.window, check.rule, error)
        self.last_malicious = malicious
        if self.error is not None:
            return self._fail_closed(frontier)
        if not malicious:
            if self.state in ("confirming", "tracking"):
                self._clear()
            return None
        if self.state == "benign":
            self.state, self.transition, self.consecutive = "confirming", newest, 0
        if self.state != "confirming":
            return None
        self.consecutive += 1
        if self.consecutive < self.policy.tau:
            return None
        return self._confirmed(is_own_refusal)

    def at_end(self, is_own_refusal: Callable[[int], bool]) -> Inject | None:
        """EOS or the budget came: a pending confirmation is decided by the latest verdict."""
        if self.state == "confirming" and self.last_malicious:
            return self._confirmed(is_own_refusal, at_end=True)
        return None

    def _confirmed(self, is_own_refusal: Callable[[int], bool], at_end: bool = False) -> Inject | None:
        if is_own_refusal(self.transition):
            self.events[-1].outcome = "self_refusal"
            self._clear()  # checks go on: a fake refusal followed by an answer is still caught
            return None
        if not self.policy.strategic_decoding:
            # Record the decision injection would have taken, then keep tracking the transition.
            # At the end of the text it is taken on fewer than tau verdicts: said apart, because
            # a benchmark that cuts answers short must not count its own cut as a detection.
            self.events[-1].outcome = "confirmed_at_end" if at_end else "confirmed"
            self.state = "tracking"
            return None
        return self._inject(self.transition, "malicious")

    def _record(self, step: int, probability: float, window, rule: str, error: str | None) -> bool:
        failed = error is not None or not math.isfinite(probability)
        malicious = failed or probability > self.policy.threshold  # a failed check counts as malicious
        self.events.append(SafetyEvent(step, probability, "malicious" if malicious else "benign", window, rule))
        if failed:
            self.error = error or f"safety check returned a non-finite value at step {step}"
        return malicious

    def _fail_closed(self, frontier: int) -> Inject:
        # Refuse from what was already released (or releasable): released text is never retracted.
        return self._inject(frontier + 1, "fail_closed")

    def _inject(self, rollback_to: int | None, reason: str) -> Inject:
        self.events[-1].outcome = "injected" if reason == "malicious" else reason
        self.state, self.transition, self.consecutive = "injected", None, 0
        return Inject(rollback_to, reason)

    def _clear(self) -> None:
        self.state, self.transition, self.consecutive = "benign", None, 0


_SENTENCE_END = ".!?\n:"


def _opens_sentence(text: str, at: int, own_start: int) -> bool:
    """Whether a marker at `at` opens the model's text or a sentence in it (so "and sorry, I
    cannot stop" or "I can't help but …" inside a sentence is not taken for a refusal)."""
    before = text[own_start:at].rstrip(" \t\"'*_(")
    return not before or before[-1] in _SENTENCE_END


def refusal_spans(text: str, markers: list[str], partial: int, own_start: int = 0) -> list[tuple[int, int]]:
    """Character spans of refusals in `text`: from a marker (case-insensitive) that opens the
    model's text (from `own_start`) or a sentence, to the end of that sentence (., !, ? or a
    newline), or to the end of the text while the sentence is open. A marker still being
    written counts too: the text ends with its first `partial` or more characters (a verdict
    may come before the refusal's opening words are complete)."""
    lowered = text.lower()
    spans = []
    for marker in (m.lower() for m in markers):
        for found in re.finditer(re.escape(marker), lowered):
            if found.start() < own_start or not _opens_sentence(text, found.start(), own_start):
                continue
            end = re.search(r"[.!?\n]", text[found.end():])
            spans.append((found.start(), found.end() + end.end() if end else len(text)))
        for k in range(len(marker) - 1, partial - 1, -1):
            at = len(text) - k
            if lowered.endswith(marker[:k]) and at >= own_start and _opens_sentence(text, at, own_start):
                spans.append((at, len(text)))
                break
    return spans


def window_in_refusal(token_ends: list[int], text: str, first: int, last: int, first_own: int,
                      markers: list[str], partial: int, max_tokens: int) -> bool:
    """Whether response tokens `first`..`last` all lie in one refusal the model wrote itself.

    token_ends[k]: end offset in `text` of response token k (token_ends[0] = 0); refusals
    count only where their marker opens a sentence of the model's own text, from token
    `first_own` on (never in a user prefill), and only for `max_tokens` tokens from the
    marker's first token: a long "refusal" sentence that goes on past that is not one.
    """
    own_start = token_ends[first_own - 1]
    for a, b in refusal_spans(text, markers, partial, own_start):
        opener = bisect.bisect_right(token_ends, a)  # the token holding the marker's first character
        inside = token_ends[first] > a and token_ends[last - 1] < b  # first ends after a, last starts before b
        if inside and first >= opener and last - opener < max_tokens:
            return True
    return False


def own_refusal(decode: Callable[[list[int]], str], response: list[int], prefill_length: int,
                policy: SafetyPolicy, first: int) -> bool:
    """Whether response tokens `first`..newest (the last of `response`) all lie in a refusal the
    model wrote itself (after the prefill), by `window_in_refusal` over the decoded text."""
    ends = [len(decode(response[:k])) for k in range(len(response) + 1)]
    return window_in_refusal(ends, decode(response), first, len(response), prefill_length + 1,
                             policy.refusal_markers, policy.refusal_marker_partial, policy.self_refusal_max_tokens)
