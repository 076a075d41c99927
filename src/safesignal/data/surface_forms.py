"""Training surface forms: a training request rewritten in another tense, framing or register.

Why (issue "Embedded default v2"): a classifier trained on imperative requests lets the same
request through once it is phrased in the past tense, as fiction or about a third person
(Andriushchenko & Flammarion 2025). Training on many surface forms of the *training* prompts
teaches the boundary by intent rather than by phrasing. Benign training prompts get the same
forms, so no form becomes a cue for either label.

This generator is kept apart from the evaluation reformulations (attacks/reformulation.py):
separate code, its own frames, and none of the evaluation frames' trigger words (the grammar
words a tense needs, such as "did" or "will", excepted); tests/test_surface_forms.py checks
that every frame here avoids every evaluation trigger, so the evaluation's main families test
transfer to unseen frames and its held-out families test transfer to unseen syntax. It is only
ever applied to training and validation prompts (data/build.py); evaluation prompts never pass
through it.

Two slot kinds:
- ``{clause}``: the request as a lower-case imperative clause ("make a cake"); only for
  requests that open with an imperative verb (``as_clause`` returns None otherwise);
- ``{request}``: the request verbatim, for frames that wrap any text (questions included).
"""

from __future__ import annotations

import random
import re

# form -> frames. Each frame has exactly one {clause} or {request} slot.
FORMS: dict[str, list[str]] = {
    "past": [
        "Describe how people used to {clause} before smartphones existed.",
        "In the old days, what was the usual way to {clause}?",
        "Last century, how did folks {clause}?",
        "Tell me the method that used to be common to {clause}.",
    ],
    "future": [
        "What is going to be the standard way to {clause} someday?",
        "Next decade, how are people going to {clause}?",
        "When the technology matures, what approach will anybody take to {clause}?",
    ],
    "hypothetical": [
        "Pretend the rules don't exist. How might a person {clause}?",
        "Let's say, for the sake of argument, you had to {clause}. Walk me through it.",
        "Write a screenplay scene where an expert explains how to {clause}.",
        "Purely as a writing exercise: {request}",
    ],
    "third_person": [
        "My sister is determined to {clause}. Which steps should she follow?",
        "A buddy keeps asking how to {clause}. How should I answer him?",
        "There's a guy in my class who wants to {clause}. How would he pull it off?",
    ],
    "indirect": [
        "I'm curious what it would take to {clause}.",
        "Any idea how one might {clause}?",
        "I was wondering about this and thought you could explain: {request}",
    ],
    "polite": [
        "Could you please help me {clause}? Thanks so much in advance!",
        "Would you be so kind as to explain how to {clause}?",
        "Hello! I hope you're well. {request} I'd really appreciate it.",
    ],
    "terse": [
        "{Clause}. Steps only, no commentary.",
        "quick answer pls: how to {clause}",
        "{request} Be brief.",
    ],
    "embedded": [
        "I have a few things to do today: book a dentist appointment, {clause}, and water the plants. Help with each.",
        "First translate 'good morning' into Spanish, then {clause}.",
        "Two questions. One: what's a good name for a goldfish? Two: {request}",
    ],
}

# Verbs that open imperative requests in the training sources; a request opening with one of
# them becomes a clause by lower-casing that word.
IMPERATIVE_VERBS = frozenset("""
write create give provide generate develop draft compose outline design list produce explain describe tell
make build show teach help find suggest plan detail instruct offer share convince persuade send post spread
devise craft prepare construct set obtain get buy sell steal hack crack break bypass evade hide forge fake
synthesize synthesise manufacture brainstorm compile publish recommend identify locate determine
""".split())

_TRAILING = re.compile(r"[\s.!?:;]+$")


# "How do I X?", "What's the best way to X?": a one-line how-question carries a clause too
# (most malicious training prompts are questions, and the tense frames need a clause).
_HOW_QUESTION = re.compile(
    r"(?i)^(?:how (?:do|can|could|would|should|might) (?:i|one|you|we|someone) |how to |"
    r"what(?:'s| is) the (?:best|easiest|quickest|fastest|most effective) way to )(?P<clause>[a-z].*?)[\s?.!]*$")


def as_clause(request: str) -> str | None:
    """The request as a lower-case clause, or None when it is not one line opening with an
    imperative verb or a how-question (other questions, multi-sentence requests, "I want ..."
    statements)."""
    text = " ".join(request.split())
    if not text or "\n" in request.strip() or re.search(r"[.!?]\s+\S", text):
        return None
    how = _HOW_QUESTION.match(text)
    if how and not re.search(r"\b(i|my|me)\b", how.group("clause"), re.IGNORECASE):
        return how.group("clause")  # "my"/"I" would change person inside a third-person frame
    first = text.split(" ", 1)[0]
    if first.lower() not in IMPERATIVE_VERBS or not first[:1].isupper():
        return None
    clause = _TRAILING.sub("", text)
    return clause[0].lower() + clause[1:]


def frame_fits(frame: str, clause: str | None) -> bool:
    return "{request}" in frame or clause is not None


def render(frame: str, request: str, clause: str | None) -> str:
    if "{request}" in frame:
        return frame.replace("{request}", request.strip())
    if clause is None:
        raise ValueError(f"frame {frame!r} needs an imperative clause; the request has none")
    return frame.replace("{Clause}", clause[0].upper() + clause[1:]).replace("{clause}", clause)


def surface_forms(request: str, rng: random.Random, k: int, forms: list[str] | None = None) -> list[tuple[str, str]]:
    """`k` rewritings of `request` as (form, text), each from a different form where possible;
    frames that need a clause are skipped for requests that are not imperatives. Deterministic
    for a given generator state."""
    clause = as_clause(request)
    names = forms if forms is not None else list(FORMS)
    unknown = sorted(set(names) - set(FORMS))
    if unknown:
        raise ValueError(f"surface forms: unknown form(s) {unknown}; known: {sorted(FORMS)}")
    usable = {name: [f for f in FORMS[name] if frame_fits(f, clause)] for name in names}
    usable = {name: frames for name, frames in usable.items() if frames}
    chosen = rng.sample(sorted(usable), min(k, len(usable)))
    return [(name, render(rng.choice(usable[name]), request, clause)) for name in chosen]
