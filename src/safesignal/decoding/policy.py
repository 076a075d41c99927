"""SafetyPolicy: every knob of strategic decoding (DESIGN.md §Decoding), as a dataclass + YAML."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from ..refusal_strings import (INJECTION_SEPARATOR, PAPER_INJECTION_SEPARATOR, PAPER_REFUSAL_PREFIX,
                               REFUSAL_MARKERS, REFUSAL_PREFIX)

SCHEDULES = ("first", "periodic", "each", "annealing")


@dataclass
class SafetyPolicy:
    """How generation re-reads the safety head and what it does on a malicious verdict.

    Windows (response-token indices, 1-based; prefill text counts as response):
    Rule 1 (initially malicious, injection off): query + first r1 response tokens.
    Rule 2 (benign): query + last r2 response tokens.
    Rule 3 (suspected transition at S): query + [S - r2, min(now, S + r3)].

    `refusal_markers`: how the model's own refusal opens (case-insensitive). A confirmation
    whose tokens from the transition S to the newest all lie in such a refusal is a
    self-refusal: nothing is injected, the result reports it, and checks go on. A refusal runs
    from a marker that opens the model's text or a sentence to the end of that sentence (at the
    end of the text, from the first `refusal_marker_partial` characters of a marker), for at
    most `self_refusal_max_tokens` tokens, so "I can't help but …" followed by a long answer
    is caught after that many tokens at the latest.

    `max_prompt_tokens`: longest prompt (+ prefill) accepted, in tokens. Decoding builds
    boolean and additive masks of B x Q x K entries (B rows, Q rows fed, K cache slots): the
    prefill pass costs about B * L^2 * (1 + dtype bytes) bytes for prompts of L tokens, e.g.
    8 rows of 4096 tokens in fp32 take 8 * 4096^2 * 5 B = 640 MiB; each decode step then costs
    B * 2 * K * (1 + dtype bytes).
    """

    threshold: float = 0.5
    tau: int = 3
    r1: int = 10
    r2: int = 10
    r3: int = 10
    schedule: str = "annealing"
    period: int = 10  # for schedule="periodic"
    annealing_dense_steps: int = 8  # check every step up to here ...
    annealing_first_gap: int = 2  # ... then at gaps 2, 4, 8, ... (steps 10, 14, 22, 38, 70, 134)
    annealing_stop: int = 256  # ... and never after this step
    # then every this many steps after annealing's last check (0: none): without it harm that starts
    # after step 134 is never read (issue "adaptive attacks": spliced answers after a 300-400 token
    # preamble went from 0% to 15-25% detected at 32, for ~3 more checks per 256 tokens)
    annealing_tail_period: int = 32
    window_includes_query: bool = True
    strategic_attention: bool = True  # generated tokens read the refreshed [CLS] state
    strategic_decoding: bool = True  # inject the refusal on a malicious verdict
    refusal_prefix: str = REFUSAL_PREFIX
    injection_separator: str = INJECTION_SEPARATOR
    refusal_max_new_tokens: int | None = None  # budget after an injection (default: max_new_tokens)
    refusal_markers: list[str] = field(default_factory=lambda: list(REFUSAL_MARKERS))
    refusal_marker_partial: int = 4  # a marker still being written counts from this many characters
    self_refusal_max_tokens: int = 32  # the longest stretch from a marker still taken for the model's refusal
    max_prompt_tokens: int = 4096

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: {self.schedule!r} is not one of {SCHEDULES}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold: must be in (0, 1), got {self.threshold}")
        for name in ("tau", "r1", "r2", "period", "annealing_first_gap", "max_prompt_tokens",
                     "refusal_marker_partial", "self_refusal_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.r3 < 0:
            raise ValueError(f"r3: must be ≥ 0, got {self.r3}")
        if self.annealing_tail_period < 0:
            raise ValueError(f"annealing_tail_period: must be ≥ 0 (0: no tail), got {self.annealing_tail_period}")

    def checks_at(self, step: int) -> bool:
        """Whether the schedule re-checks at generation step `step` (1-based) in the benign state."""
        if self.schedule == "each":
            return True
        if self.schedule == "first":
            return False  # the only check is the one after the prefill pass
        if self.schedule == "periodic":
            return step % self.period == 0
        steps = self.annealing_steps()
        if step in steps:
            return True
        last, tail = max(steps), self.annealing_tail_period
        return bool(tail) and step > last and (step - last) % tail == 0

    def within(self, span: int) -> "SafetyPolicy":
        """This policy with a tail that has no check in steps 1..`span` set to 0 (no tail): the same
        checks over the span. A search keyed by it (GCG's, over a target of `span` tokens) is then
        reused across a change of the tail, which only moves checks past what it reads."""
        if (self.schedule == "annealing" and self.annealing_tail_period
                and max(self.annealing_steps()) + self.annealing_tail_period > span):
            return replace(self, annealing_tail_period=0)
        return self

    def annealing_steps(self) -> frozenset[int]:
        steps = set(range(1, min(self.annealing_dense_steps, self.annealing_stop) + 1))
        at, gap = self.annealing_dense_steps, self.annealing_first_gap
        while at + gap <= self.annealing_stop:
            at += gap
            steps.add(at)
            gap *= 2
        return frozenset(steps)

    @classmethod
    def paper(cls, **overrides) -> "SafetyPolicy":
        """The official code's evaluation settings: r = (5, 15, 10), its refusal string (typo kept)."""
        settings = dict(r1=5, r2=15, r3=10, refusal_prefix=PAPER_REFUSAL_PREFIX,
                        injection_separator=PAPER_INJECTION_SEPARATOR)
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "SafetyPolicy":
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of policy fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown SafetyPolicy field(s) {unknown}")
        data.update(overrides)
        return cls(**data)
